"""Resolution mapping: token bounds, aspect ratio kept (or clamped), nearest fixed bucket, resize +
centre crop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from trainer.buckets import nearest_bucket, resize_crop, resolution_for, tokens_for

BOUNDS = {"min_tokens": 64, "max_tokens": 4096}  # 128^2 .. 1024^2


def _random_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    sides = np.exp(rng.uniform(np.log(8), np.log(6000), size=(n, 2))).astype(int)
    return [(int(w), int(h)) for w, h in sides]


def test_tokens_for():
    assert tokens_for((1024, 1024)) == 4096
    assert tokens_for((384, 640)) == 24 * 40
    with pytest.raises(ValueError, match=r"size.*\(100, 64\)"):
        tokens_for((100, 64))


def test_resolution_is_in_range_on_the_grid_and_keeps_the_aspect_ratio():
    for w, h in _random_sizes(400):
        out = resolution_for(w, h, **BOUNDS)
        assert out == resolution_for(w, h, **BOUNDS)  # deterministic
        assert out[0] % 16 == 0 and out[1] % 16 == 0
        assert 64 <= tokens_for(out) <= 4096
        aspect = min(max(w / h, 1 / 4), 4)
        assert 1 / 4 <= out[0] / out[1] <= 4
        # each side within one 16-pixel step of the ideal: aspect error <= ~2 steps / short side
        error = abs(math.log(out[0] / out[1]) - math.log(aspect))
        assert error <= 2 * 16 / min(out) + 1e-9, (w, h, out)


def test_scale_rule_down_up_and_kept():
    for w, h in _random_sizes(400, seed=1):
        tokens = tokens_for(resolution_for(w, h, **BOUNDS))
        native = w * h / 256
        if native >= 4096:  # downscaled to at most max_tokens, and close to it
            assert 0.9 * 4096 <= tokens <= 4096
        elif native <= 64 and max(w / h, h / w) <= 4:  # upscaled to at least min_tokens
            assert 64 <= tokens <= 64 * 1.6
        elif max(w / h, h / w) <= 4 and min(w, h) >= 64:  # in range: area kept (one step)
            assert abs(math.log(tokens / native)) <= 2 * 16 / min(w, h) * 1.1 + 0.05
    assert resolution_for(4000, 3000, **BOUNDS) == resolution_for(8000, 6000, **BOUNDS)
    assert resolution_for(512, 512, **BOUNDS) == (512, 512)
    assert resolution_for(384, 640, **BOUNDS) == (384, 640)
    assert resolution_for(1, 1, **BOUNDS) == (128, 128)


def test_extreme_aspect_is_clamped_to_max_aspect():
    assert resolution_for(8000, 500, **BOUNDS) == (2048, 512)  # 16:1 -> 4:1 at max tokens
    assert resolution_for(500, 8000, **BOUNDS) == (512, 2048)
    assert resolution_for(1000, 10, **BOUNDS, max_aspect=2.0) == (192, 96)  # 39 tokens -> 72
    w, h = resolution_for(3000, 1000, **BOUNDS, max_aspect=2.0)
    assert w / h == 2.0


def test_narrow_ranges_other_multiples_and_errors():
    assert tokens_for(resolution_for(1000, 700, min_tokens=1000, max_tokens=1000)) == 1000
    w, h = resolution_for(1000, 700, min_tokens=256, max_tokens=1024, multiple=32)
    assert w % 32 == 0 and h % 32 == 0 and 256 <= tokens_for((w, h)) <= 1024
    with pytest.raises(ValueError, match="min_tokens, max_tokens"):
        resolution_for(1000, 700, min_tokens=997, max_tokens=997)  # prime: only 997:1 sizes
    for kwargs, name in [
        ({"width": 0}, "width"),
        ({"height": 1.5}, "height"),
        ({"min_tokens": 0}, "min_tokens"),
        ({"max_tokens": 32}, "max_tokens"),
        ({"multiple": 24}, "multiple"),
        ({"max_aspect": 0.5}, "max_aspect"),
    ]:
        args = {"width": 100, "height": 100, **BOUNDS, **kwargs}
        with pytest.raises(ValueError, match=rf"^{name}: .*got {kwargs[name]!r}"):
            resolution_for(**args)


def test_nearest_bucket_log_space_and_ties():
    buckets = [(256, 256), (512, 256), (256, 512), (384, 640), (512, 512)]
    assert nearest_bucket(100, 100, buckets) == (512, 512)  # equal aspect: larger area
    assert nearest_bucket(300, 500, buckets) == (384, 640)
    assert nearest_bucket(1000, 450, buckets) == (512, 256)
    # 1:1 between 2:1 and 1:2 -- equal in log space: equal area, so list order decides
    assert nearest_bucket(64, 64, [(512, 256), (256, 512)]) == (512, 256)
    assert nearest_bucket(64, 64, [(256, 512), (512, 256)]) == (256, 512)
    # log space, not linear: 1.5 is nearer 2 (log 1.33) than 1 (log 1.5) ... and 1.45 is not
    assert nearest_bucket(150, 100, [(256, 256), (512, 256)]) == (512, 256)
    assert nearest_bucket(140, 100, [(256, 256), (512, 256)]) == (256, 256)
    rng = np.random.default_rng(0)
    for w, h in _random_sizes(200):
        order = rng.permutation(len(buckets))
        out = nearest_bucket(w, h, [buckets[i] for i in order])
        dist = [abs(math.log(w / h) - math.log(bw / bh)) for bw, bh in buckets]
        assert abs(math.log(w / h) - math.log(out[0] / out[1])) <= min(dist) + 1e-12
    with pytest.raises(ValueError, match="buckets"):
        nearest_bucket(10, 10, [])
    with pytest.raises(ValueError, match="buckets"):
        nearest_bucket(10, 10, [(0, 16)])


def test_resize_crop_covers_then_crops_the_centre():
    columns = np.tile(np.arange(400, dtype=np.uint8)[None, :200], (100, 1))  # value = x
    image = Image.fromarray(np.stack([columns] * 3, -1))  # 200 x 100, wider than square
    out = resize_crop(image, (64, 64))
    assert out.size == (64, 64) and out.mode == "RGB"
    arr = np.asarray(out)[..., 0].astype(float)
    # scale 0.64 -> 128 x 64, crop x in [32, 96): original columns 50 .. 150
    assert abs(arr[:, 32].mean() - 100) < 2 and arr[:, 0].mean() < arr[:, -1].mean()
    expected = image.resize((128, 64), Image.Resampling.LANCZOS).crop((32, 0, 96, 64))
    assert np.array_equal(np.asarray(out), np.asarray(expected))  # LANCZOS when shrinking
    small = image.resize((50, 25))
    expected = small.resize((256, 128), Image.Resampling.BICUBIC).crop((64, 0, 192, 128))
    assert np.array_equal(np.asarray(resize_crop(small, (128, 128))), np.asarray(expected))


def test_resize_crop_modes_and_exact_sizes():
    for mode in ("RGBA", "L", "P", "RGB"):
        image = Image.new(mode, (300, 170))
        out = resize_crop(image, (128, 96))
        assert out.mode == "RGB" and out.size == (128, 96)
    same = Image.new("RGB", (64, 48), (1, 2, 3))
    assert np.array_equal(np.asarray(resize_crop(same, (64, 48))), np.asarray(same))
    with pytest.raises(ValueError, match="size"):
        resize_crop(same, (0, 16))
