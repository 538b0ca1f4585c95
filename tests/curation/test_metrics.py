"""Property tests of the profiling metrics on real COCO photos (examples/data/coco25).

Each test re-encodes a real photo in memory (Pillow) into controlled variants and checks an
ordering or a value that the metric's definition implies (docs/profiles.md).
"""

import hashlib
import io
import math
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from curation.profiling import metrics
from curation.stages.profile import ProfileStage

COCO = Path(__file__).resolve().parents[2] / "examples" / "data" / "coco25"
ALL_PHOTOS = sorted(COCO.glob("*.jpg"))
PHOTOS = ALL_PHOTOS[::5]  # 5 of the 25, deterministic
assert len(PHOTOS) == 5, f"expected 25 COCO photos in {COCO}"
IDS = [p.stem for p in PHOTOS]
photo_param = pytest.mark.parametrize("path", PHOTOS, ids=IDS)


def load(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def profile(data: bytes, **cfg) -> dict:
    row = ProfileStage(**cfg).profile_one("s", "mem://s", data)
    assert row.get("error") is None, row
    return row


def sharp_noise(im: Image.Image) -> tuple[float, float]:
    return metrics.laplacian_and_noise(np.asarray(metrics.luminance(im)))


def flat(size: tuple[int, int], colour=(128, 128, 128)) -> Image.Image:
    return Image.new("RGB", size, colour)


def grey_noise(sigma: float, seed: int, size: int = 512) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.rint(128 + rng.normal(0, sigma, (size, size))), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "L").convert("RGB")


# 1. compression_ratio
@photo_param
def test_compression_ratio_lower_quality_compresses_more(path):
    im = load(path)
    lo, hi = profile(encode(im, quality=10)), profile(encode(im, quality=95))
    assert lo["file_bytes"] < hi["file_bytes"]
    assert lo["compression_ratio"] > hi["compression_ratio"]


# 2. jpeg_bpp
@photo_param
def test_jpeg_bpp_orderings(path):
    im = load(path)
    bpp = metrics.jpeg_bpp(im, 75)
    assert metrics.jpeg_bpp(im.filter(ImageFilter.GaussianBlur(3)), 75) < bpp
    assert metrics.jpeg_bpp(flat(im.size, (90, 140, 60)), 75) < 0.2 * bpp
    by_q = [metrics.jpeg_bpp(im, q) for q in (10, 50, 75, 95)]
    assert by_q == sorted(by_q) and len(set(by_q)) == 4, by_q
    data = encode(im, quality=95)
    assert profile(data, jpeg_quality=30)["jpeg_bpp"] < profile(data, jpeg_quality=90)["jpeg_bpp"]


# 3. sharpness
@photo_param
def test_sharpness_blur_lowers_and_flat_is_zero(path):
    im = load(path)
    assert sharp_noise(im.filter(ImageFilter.GaussianBlur(2)))[0] < sharp_noise(im)[0]
    assert sharp_noise(flat(im.size)) == (0.0, 0.0)


# 4. noise_sigma
@photo_param
def test_noise_sigma_added_noise_raises_estimate(path):
    im = load(path)
    arr = np.asarray(im).astype(np.float64)
    noisy = arr + np.random.default_rng(0).normal(0, 10, arr.shape)
    noisy_im = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")
    clean, dirty = profile(encode(im, "PNG")), profile(encode(noisy_im, "PNG"))
    assert dirty["noise_sigma"] > clean["noise_sigma"] + 3.0


@pytest.mark.parametrize("sigma", [5.0, 15.0])
def test_immerkaer_recovers_known_sigma_on_flat_grey(sigma):
    data = encode(grey_noise(sigma, seed=int(sigma)), "PNG")
    got = profile(data)["noise_sigma"]
    assert got == pytest.approx(sigma, rel=0.15)


# 5. color_cast
def test_color_cast_neutral_and_pure_colour():
    assert metrics.color_cast(flat((64, 48))) < 0.5
    r, g, b = 200, 100, 100
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    got = metrics.color_cast(flat((37, 23), (r, g, b)))
    assert got == pytest.approx(math.hypot(cb, cr), rel=1e-9)
    assert got == pytest.approx(52.7704, abs=1e-3)


@photo_param
def test_color_cast_blue_reduction_vs_greyscale(path):
    im = load(path)
    grey = im.convert("L").convert("RGB")
    r, g, b = im.split()
    yellowish = Image.merge("RGB", (r, g, b.point(lambda v: int(v * 0.6))))
    grey_cast = profile(encode(grey, "PNG"))["color_cast"]
    assert grey_cast < 0.5
    assert profile(encode(yellowish, "PNG"))["color_cast"] > grey_cast + 5.0


# 6. border_variance
@photo_param
def test_border_variance_padding_and_whole_image_fallback(path):
    im = load(path)
    padded = ImageOps.expand(im, border=32, fill=(0, 0, 0))
    assert profile(encode(padded, "PNG"), border_width=8)["border_variance"] < 1.0
    assert profile(encode(im, "PNG"), border_width=8)["border_variance"] > 50.0
    arr = np.asarray(im).astype(np.float64)
    whole = float(arr.reshape(-1, 3).var(axis=0).mean())
    for border in (max(im.size) // 2 + 1, 10_000):
        assert metrics.border_variance(im, border) == pytest.approx(whole, rel=1e-6)
    mask = np.ones(arr.shape[:2], bool)
    mask[8:-8, 8:-8] = False  # reference frame of width 8
    frame = float(arr[mask].var(axis=0).mean())
    assert metrics.border_variance(im, 8) == pytest.approx(frame, rel=1e-6)


# 7. saturated_fraction
@photo_param
def test_saturated_fraction(path):
    im = load(path)
    bright = ImageEnhance.Brightness(im).enhance(3.0)
    assert metrics.saturated_fraction(bright) > metrics.saturated_fraction(im)
    assert metrics.saturated_fraction(flat(im.size, (255, 255, 255))) == 1.0
    mid = Image.fromarray(np.clip(np.asarray(im), 1, 254), "RGB")
    assert metrics.saturated_fraction(mid) == 0.0
    arr = np.asarray(im)
    assert metrics.saturated_fraction(im) == pytest.approx(((arr == 0) | (arr == 255)).mean())


# 8. phash
@photo_param
def test_phash_matches_imagehash_and_is_robust(path):
    data = path.read_bytes()
    with Image.open(path) as im:
        v = profile(data)["phash"]
        assert 0 <= v < 2**64
        assert imagehash.hex_to_hash(f"{v:016x}") == imagehash.phash(im)
        q50 = profile(encode(im.convert("RGB"), quality=50))["phash"]
    assert (v ^ q50).bit_count() <= 10


def test_phash_separates_different_photos():
    a, b = (profile(p.read_bytes())["phash"] for p in PHOTOS[:2])
    assert (a ^ b).bit_count() > 10


# 9. full-resolution metadata
@photo_param
def test_metadata_matches_pillow(path):
    data = path.read_bytes()
    row = profile(data)
    with Image.open(path) as im:
        w, h = im.size
        expected = {"width": w, "height": h, "format": im.format, "mode": im.mode}
        expected |= {"n_frames": getattr(im, "n_frames", 1), "bit_depth": 8}
        rgb = im.convert("RGB")
    assert {k: row[k] for k in expected} == expected
    assert row["aspect_ratio"] == pytest.approx(w / h, rel=1e-12)
    assert row["file_bytes"] == len(data)
    assert row["content_sha256"] == hashlib.sha256(data).hexdigest()
    assert row["compression_ratio"] == pytest.approx(w * h * 3 / len(data), rel=1e-9)

    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    rotated = profile(encode(rgb, quality=90, exif=exif.tobytes()))
    assert (rotated["width"], rotated["height"]) == (h, w)
    assert rotated["aspect_ratio"] == pytest.approx(h / w)

    png = encode(rgb, "PNG")
    prow = profile(png)
    assert (prow["format"], prow["mode"], prow["bit_depth"]) == ("PNG", "RGB", 8)
    assert abs(prow["compression_ratio"] - w * h * 3 / len(png)) <= 1e-9
    assert prow["content_sha256"] == hashlib.sha256(png).hexdigest()
    assert prow["file_bytes"] == len(png)


def test_profile_invariants_on_all_photos():
    for path in ALL_PHOTOS:
        row = profile(path.read_bytes())
        assert 0.0 <= row["saturated_fraction"] <= 1.0
        assert row["sharpness"] > 0 and row["noise_sigma"] > 0 and row["border_variance"] > 0
        assert 1.0 < row["compression_ratio"] < 100.0
        assert 0.0 < row["jpeg_bpp"] < 3.0
        assert 0.0 <= row["color_cast"] < 128.0 * math.sqrt(2)


# 10. the fused 3x3 filter kernel equals full-array references
def ref_laplacian_and_noise(luma: np.ndarray) -> tuple[float, float]:
    i = luma.astype(np.float64)
    c = i[1:-1, 1:-1]
    lap = i[:-2, 1:-1] + i[2:, 1:-1] + i[1:-1, :-2] + i[1:-1, 2:] - 4.0 * c
    kernel = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]
    h, w = i.shape
    conv = sum(
        kernel[dy][dx] * i[dy : h - 2 + dy, dx : w - 2 + dx] for dy in range(3) for dx in range(3)
    )
    noise = math.sqrt(math.pi / 2.0) * np.abs(conv).sum() / (6.0 * (h - 2) * (w - 2))
    return float(lap.var()), float(noise)


@pytest.mark.parametrize("shape", [(1300, 301), (3, 3), (3, 517), (801, 4), (64, 64)])
def test_fused_kernel_matches_full_array_reference(shape):
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    luma = rng.integers(0, 256, shape, dtype=np.uint8)
    luma[: shape[0] // 2] //= 4  # uneven content
    assert metrics.laplacian_and_noise(luma) == pytest.approx(
        ref_laplacian_and_noise(luma), rel=1e-9
    )


def test_fused_kernel_on_real_photo_and_non_contiguous_input():
    luma = np.asarray(metrics.luminance(load(PHOTOS[0]).resize((700, 1300))))
    ref = ref_laplacian_and_noise(luma)
    assert metrics.laplacian_and_noise(luma) == pytest.approx(ref, rel=1e-9)
    view = luma[::2, ::3]  # strided view
    assert metrics.laplacian_and_noise(view) == pytest.approx(
        ref_laplacian_and_noise(view), rel=1e-9
    )
