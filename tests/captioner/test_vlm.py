"""Vision-language backends: a tiny random Qwen2.5-VL (``tiny_vlm``) through transformers on
real COCO photos, and the same model served over the OpenAI API (``openai_server``) to
``HttpBackend`` with injected failures."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from captioner.backends import (
    BackendConfig,
    BackendError,
    HttpBackend,
    TextGenBackend,
    TransformersBackend,
    backend_from_config,
)
from captioner.vlm import VisionTransformersBackend, load_rgb
from tests.captioner.openai_server import serve
from tests.captioner.test_backends import TEMPLATE, _save_tiny_lm
from tests.captioner.tiny_vlm import VISUAL_TOKENS_640x480, save_tiny_vlm

NEW = 6  # new tokens per answer: enough to tell answers apart, cheap on CPU


@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory) -> Path:
    return save_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))


@pytest.fixture(scope="module")
def vlm(vlm_folder) -> VisionTransformersBackend:
    return VisionTransformersBackend(str(vlm_folder), device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def photos(coco_dir) -> list[bytes]:
    """Four COCO val2017 photos as their JPEG bytes."""
    return [p.read_bytes() for p in sorted((coco_dir / "images").glob("*.jpg"))[:4]]


def _png(size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def test_loads_directly_and_through_the_config(vlm_folder, vlm, tmp_path):
    assert isinstance(vlm, TextGenBackend) and vlm.name == str(vlm_folder)
    cfg = BackendConfig(model=str(vlm_folder), device="cpu", batch_size=2, max_pixels=50_000)
    b = backend_from_config(cfg)
    assert isinstance(b, VisionTransformersBackend)
    assert (b.batch_size, b.max_pixels) == (2, 50_000)
    unlimited = backend_from_config(BackendConfig(model=str(vlm_folder), max_pixels=0))
    assert unlimited.max_pixels is None
    lm = _save_tiny_lm(tmp_path / "lm", chat_template=TEMPLATE)
    text_only = backend_from_config(BackendConfig(model=str(lm), device="cpu"))
    assert type(text_only) is TransformersBackend
    with pytest.raises(FileNotFoundError, match="VisionTransformersBackend"):
        VisionTransformersBackend(str(tmp_path / "no" / "such"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match=r"cannot load .* as a local folder"):
        VisionTransformersBackend(str(tmp_path / "empty"))
    for kwargs in [
        {"model": "m", "max_pixels": -1},
        {"kind": "http", "model": "m", "url": "http://h", "max_pixels": 10},
    ]:
        with pytest.raises(ValueError, match=r"^max_pixels: "):
            BackendConfig(**kwargs)


def test_the_tiny_vlm_is_seeded_and_its_token_ids_match(vlm_folder, vlm, tmp_path):
    again = save_tiny_vlm(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (vlm_folder / name).read_bytes()
    config, tok = vlm.model.config, vlm.tokenizer
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert sum(p.numel() for p in vlm.model.parameters()) < 200_000


def test_a_coco_photo_is_a_few_dozen_visual_tokens(vlm, photos):
    image = load_rgb(photos[0], vlm.max_pixels)
    enc = vlm.processor(text=[vlm.render("describe", 1)], images=[[image]], return_tensors="pt")
    n_visual = int((enc["input_ids"] == vlm.model.config.image_token_id).sum())
    assert image.size in {(640, 426), (640, 480), (480, 640), (426, 640)}
    assert 20 <= n_visual <= VISUAL_TOKENS_640x480
    vga = load_rgb(_png((640, 480)), vlm.max_pixels)
    enc = vlm.processor(text=[vlm.render("describe", 1)], images=[[vga]], return_tensors="pt")
    assert int((enc["input_ids"] == vlm.model.config.image_token_id).sum()) == VISUAL_TOKENS_640x480
    small = load_rgb(photos[0], 10_000)  # downscaled, aspect kept
    assert small.mode == "RGB" and small.width * small.height <= 10_000
    assert abs(small.width / small.height - image.width / image.height) < 0.02


def test_batches_equal_single_prompts_and_repeat(vlm, photos):
    prompts = ["describe the image", "a photo of", "what changed between the images?", "hi"]
    images = [photos[0], photos[1], [photos[2], photos[3]], None]
    out = vlm.generate(prompts, images=images, max_new_tokens=NEW)
    assert all(isinstance(o, str) and o == o.strip() for o in out) and len(set(out)) == 4
    assert vlm.generate(prompts, images=images, max_new_tokens=NEW) == out
    alone = [
        vlm.generate([p], images=[im], max_new_tokens=NEW)[0]
        for p, im in zip(prompts, images, strict=True)
    ]
    assert alone == out  # left padding done right: batching changes nothing
    assert vlm.generate(prompts[:3], images=images[:3], max_new_tokens=NEW) == out[:3]


def test_images_are_seen_in_order_and_text_only_prompts_work(vlm, photos):
    a, b = photos[0], photos[1]
    pair = vlm.generate(["what changed?"] * 2, images=[[a, b], (b, a)], max_new_tokens=NEW)
    assert pair[0] != pair[1]
    one = vlm.generate(["describe"] * 2, images=[a, b], max_new_tokens=NEW)
    assert one[0] != one[1]  # the image, not only the text, drives the answer
    text = vlm.generate(["describe the image", "a cat"], max_new_tokens=NEW)
    assert text == vlm.generate(
        ["describe the image", "a cat"], images=[None, []], max_new_tokens=NEW
    )
    assert all(isinstance(t, str) for t in text)
    with pytest.raises(ValueError, match=r"images\[1\]: must be None"):
        vlm.generate(["a", "b"], images=[None, "photo.jpg"])


def test_a_bad_image_is_its_rows_error_only(vlm, photos):
    prompts = ["describe", "describe", "what changed?", "describe"]
    good = [photos[0], None, [photos[1], photos[2]], photos[3]]
    ref = vlm.generate(prompts, images=good, max_new_tokens=NEW)
    cut = photos[1][:3000]  # a JPEG that ends early
    images = [photos[0], cut, [photos[1], photos[2]], b"not an image"]
    out = vlm.generate(prompts, images=images, max_new_tokens=NEW, return_errors=True)
    assert out[0] == ref[0] and out[2] == ref[2]
    for i in (1, 3):
        assert isinstance(out[i], BackendError) and out[i].index == i and out[i].status is None
    assert "truncated" in str(out[1]) and "not_an_image" in str(out[3])
    with pytest.raises(BackendError, match=r"images\[1\]\[0\]: truncated") as err:
        vlm.generate(prompts, images=images, max_new_tokens=NEW)
    assert err.value.index == 1
    # decodes, but the processor refuses it (aspect ratio over 200): found row by row
    sliver = _png((1, 300))
    out = vlm.generate(
        prompts[:3], images=[photos[0], sliver, good[2]], max_new_tokens=NEW, return_errors=True
    )
    assert out[0] == ref[0] and out[2] == ref[2]
    assert isinstance(out[1], BackendError) and out[1].index == 1 and "processor" in str(out[1])


# ---- the same model over HTTP ---------------------------------------------------------------


def test_http_payload_sends_every_image_in_order():
    png, jpeg = _png((4, 4)), _png((5, 5))
    body = HttpBackend("http://h", "m").payload("p", [png, jpeg], 0, 5)
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert parts[2]["text"] == "p"
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in parts[:2])
    assert parts[0] != parts[1]
    assert HttpBackend("http://h", "m").payload("p", None, 0, 5)["messages"][0]["content"] == "p"


def test_http_retries_injected_failures_and_matches_the_direct_answers(vlm, photos):
    prompts = ["describe the image", "what changed?", "a photo of", "hi"]
    images = [photos[0], [photos[1], photos[2]], photos[3], None]
    direct = vlm.generate(prompts, images=images, max_new_tokens=NEW)
    with serve(vlm, fail_first=2) as url:
        http = HttpBackend(url, model=vlm.name, max_retries=3, backoff=0.01, concurrency=2)
        assert http.generate(prompts, images=images, max_new_tokens=NEW) == direct
        stats = url.stats
        assert stats.statuses.count(503) == 2 and stats.ok == len(prompts)
        assert stats.posts == 2 + len(prompts)
        with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as resp:
            assert json.load(resp)["data"][0]["id"] == vlm.name


def test_http_failed_rows_become_errors_and_the_job_goes_on(vlm, photos):
    prompts = ["describe", "describe", "describe"]
    images = [photos[0], photos[1], photos[2]]
    direct = vlm.generate(prompts, images=images, max_new_tokens=NEW)
    with serve(vlm, fail_first=5) as url:
        http = HttpBackend(url, model=vlm.name, max_retries=1, backoff=0.01, concurrency=2)
        out = http.generate(prompts, images=images, max_new_tokens=NEW, return_errors=True)
        assert url.stats.statuses.count(503) == 5 and url.stats.ok == 1
    # 3 rows x 2 attempts, the first 5 fail: two rows fail twice, one is answered
    errors = [(i, o) for i, o in enumerate(out) if isinstance(o, BackendError)]
    assert len(errors) == 2 and all(e.status == 503 and e.index == i for i, e in errors)
    (i_ok,) = [i for i, o in enumerate(out) if isinstance(o, str)]
    assert out[i_ok] == direct[i_ok]
    with serve(vlm, fail_first=1) as url:  # without return_errors the job raises
        with pytest.raises(BackendError, match="HTTP 503") as err:
            HttpBackend(url, model=vlm.name, max_retries=0).generate(prompts[:1], images=images[:1])
        assert err.value.status == 503 and err.value.index == 0


def test_http_bad_requests_get_400_and_are_not_retried(vlm, photos):
    cut = photos[1][:3000]  # JPEG magic bytes, but the data ends early: the server rejects it
    with serve(vlm) as url:
        http = HttpBackend(url, model=vlm.name, max_retries=3, backoff=0.01)
        with pytest.raises(BackendError, match=r"HTTP 400.*truncated") as err:
            http.generate(["describe"], images=[cut], max_new_tokens=NEW)
        assert err.value.status == 400 and url.stats.statuses == [400]
        out = http.generate(
            ["describe", "describe"],
            images=[cut, photos[0]],
            max_new_tokens=NEW,
            return_errors=True,
        )
        assert isinstance(out[0], BackendError) and out[0].status == 400 and out[0].index == 0
        assert out[1] == vlm.generate(["describe"], images=[photos[0]], max_new_tokens=NEW)[0]
        # not an image format at all: refused before any request, or kept as the row's error
        n = url.stats.posts
        out = http.generate(
            ["a", "b"], images=[b"text", None], max_new_tokens=2, return_errors=True
        )
        assert isinstance(out[0], BackendError) and out[0].index == 0 and isinstance(out[1], str)
        assert url.stats.posts == n + 1
        for body, message in [
            (b"{not json", "not JSON"),
            (json.dumps({"model": "m"}).encode(), "'messages'"),
            (
                json.dumps(
                    {
                        "messages": [
                            {
                                "role": "user",
                                "content": [
                                    {"type": "image_url", "image_url": {"url": "http://x/a.jpg"}}
                                ],
                            }
                        ]
                    }
                ).encode(),
                "data: URL",
            ),
        ]:
            req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, method="POST")
            with pytest.raises(urllib.error.HTTPError) as bad:
                urllib.request.urlopen(req, timeout=5)
            assert bad.value.code == 400
            assert message in json.loads(bad.value.read())["error"]["message"]
