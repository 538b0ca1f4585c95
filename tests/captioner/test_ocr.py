"""OCR engine on text rendered onto real COCO photos; font discovery; the text renderer."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageChops, ImageFont

from captioner.ocr import OcrError, OcrLine, OcrResult, RapidOcrEngine, mark_spaces, reading_order
from curation.text_render import render_text
from infra import fonts
from infra.fonts import FontNotFound, find_font, has_cjk_glyphs

WHITE, BLACK, YELLOW = (255, 255, 255), (0, 0, 0), (250, 220, 0)
# photo index -> [(text, script, size, position, colour, background box or None)]; positions
# without a box were picked on calm, contrasting parts of those photos (floor, shadow, grass)
CASES = {
    "english": (
        3,
        [
            ("OPEN DAILY 9AM", "latin", 40, (24, 24), BLACK, WHITE),
            ("Fresh Coffee", "latin", 36, (40, 520), BLACK, None),
        ],
    ),
    "chinese": (
        5,
        [
            ("欢迎光临", "cjk", 44, (24, 24), BLACK, WHITE),
            ("新鲜咖啡", "cjk", 40, (440, 200), WHITE, None),
        ],
    ),
    "mixed": (
        11,
        [
            ("Fresh Coffee 咖啡", "cjk", 36, (24, 24), BLACK, YELLOW),
            ("Best Pizza in Town", "cjk", 32, (330, 360), WHITE, None),
        ],
    ),
}


@pytest.fixture(scope="module")
def engine() -> RapidOcrEngine:
    return RapidOcrEngine(threads=2)


@pytest.fixture(scope="module")
def photos(coco_dir: Path) -> list[Path]:
    found = sorted((coco_dir / "images").glob("*.jpg"))
    if len(found) < 12:
        pytest.skip(f"need 12 photos in {coco_dir / 'images'}, found {len(found)}")
    return found


@pytest.fixture
def fresh_font_cache():
    fonts._search.cache_clear()
    yield
    fonts._search.cache_clear()


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def render_case(photo: Path, items: list) -> tuple[Image.Image, list[tuple[str, tuple]]]:
    image, drawn = Image.open(photo).convert("RGB"), []
    for text, script, size, position, colour, background in items:
        font = find_font(script)
        image, box = render_text(
            image,
            text,
            font=font,
            size=size,
            position=position,
            colour=colour,
            background=background,
        )
        drawn.append((text, box))
    return image, drawn


def overlap(a: tuple, b: tuple) -> float:
    """Intersection over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return max(w, 0) * max(h, 0) / smaller


# ---------------------------------------------------------------------------- OCR engine


@pytest.mark.parametrize("case", sorted(CASES))
def test_reads_rendered_text_exactly(engine, photos, case):
    index, items = CASES[case]
    image, drawn = render_case(photos[index], items)
    result = engine.read(jpeg(image))
    for text, box in drawn:
        assert text in result.text, (text, result.text)  # spaces recovered, none between CJK
        line = next(ln for ln in result.lines if text in ln.text)
        assert 0.5 <= line.score <= 1.0
        assert overlap(line.box, box) > 0.6, (line.box, box)


def test_photo_without_rendered_text(engine, photos):
    result = engine.read(photos[3].read_bytes())  # the English case's photo (it has real signs)
    rendered = [item[0] for _, items in CASES.values() for item in items]
    assert not any(text in line.text for line in result.lines for text in rendered)


def test_blank_image_gives_empty_result(engine):
    assert engine.read(Image.new("RGB", (320, 240), (128, 128, 128))) == OcrResult("", ())


def test_thin_strips_are_read_in_bounded_memory(engine, monkeypatch):
    """rapidocr scales the short side up to 736 px: a 4000x2 strip (examples' edge case) took
    over 24 GB before the engine padded strips to an aspect ratio of at most 8."""
    from captioner import ocr as ocr_module

    banner = Image.new("RGB", (1200, 56), (250, 250, 250))  # aspect 21: padded to 1200x150
    banner, box = render_text(banner, "OPEN DAILY", font=find_font("latin"), size=40,
                              position=(40, 6), colour=(20, 20, 20), background=None)  # fmt: skip
    seen = []
    bounded = ocr_module._bounded_aspect
    monkeypatch.setattr(
        ocr_module, "_bounded_aspect", lambda a: seen.append(bounded(a)) or seen[-1]
    )
    result = engine.read(jpeg(banner))
    assert "OPEN DAILY" in result.text and overlap(result.lines[0].box, box) > 0.6
    assert engine.read(Image.new("RGB", (4000, 2), "white")) == OcrResult("", ())
    assert [a.shape for a in seen] == [(150, 1200, 3), (500, 4000, 3)]
    assert np.array_equal(seen[0][:56], np.asarray(Image.open(io.BytesIO(jpeg(banner))))[..., ::-1])


def test_undecodable_bytes(engine, photos):
    good = jpeg(Image.new("RGB", (64, 64), WHITE))
    for bad in (b"not an image", photos[1].read_bytes()[:200]):
        with pytest.raises(OcrError, match="cannot decode image"):
            engine.read(bad)
    results = engine.read_many([good, b"not an image"])
    assert results[0] == OcrResult("", ())
    assert isinstance(results[1], OcrError) and "cannot decode" in str(results[1])


def test_engine_name_and_config_errors():
    name = RapidOcrEngine().name
    assert name.startswith("rapidocr-onnxruntime-1.4") and name.endswith("/PP-OCRv4")
    for kwargs, field in [({"text_score": 1.5}, "text_score"), ({"threads": 0}, "threads")]:
        with pytest.raises(ValueError, match=field):
            RapidOcrEngine(**kwargs)


def test_mark_spaces_rule():
    # vocabulary: 0 blank, 1 "A", 2 "B", 3 "中", 4 "文", 5 " "
    cjk = np.array([False, False, False, True, True, False])

    def preds(a: int, b: int, p_space: float) -> np.ndarray:
        p = np.zeros((1, 5, 6))
        p[0, :, 0] = 1.0
        p[0, 0], p[0, 4] = np.eye(6)[a], np.eye(6)[b]
        p[0, 1:4, 0], p[0, 1:4, 5] = 1 - p_space / 3, p_space / 3  # spread over 3 blanks
        return p

    def decoded(p: np.ndarray) -> list[int]:
        return [int(k) for k in p[0].argmax(axis=1) if k]

    assert decoded(mark_spaces(preds(1, 2, 0.009), 5, cjk, 0.008)) == [1, 5, 2]  # A B
    assert decoded(mark_spaces(preds(1, 2, 0.006), 5, cjk, 0.008)) == [1, 2]  # AB
    assert decoded(mark_spaces(preds(2, 3, 0.009), 5, cjk, 0.008)) == [2, 5, 3]  # B 中
    assert decoded(mark_spaces(preds(3, 4, 0.5), 5, cjk, 0.008)) == [3, 4]  # 中文: never
    p = preds(1, 2, 0.009)
    assert np.array_equal(mark_spaces(p, 5, cjk, 0.008)[0].sum(axis=1), p[0].sum(axis=1))


def test_reading_order_rows():
    def line(text: str, x0: float, y0: float, h: float = 20) -> OcrLine:
        return OcrLine(text, 0.9, (x0, y0, x0 + 50, y0 + h))

    result = reading_order([line("c", 0, 60), line("b", 100, 4), line("a", 0, 0, 24)])
    assert result.text == "a b\nc"
    assert [ln.text for ln in result.lines] == ["a", "b", "c"]
    assert reading_order([]) == OcrResult("", ())


# ---------------------------------------------------------------------------- fonts


def test_find_font_cjk_has_cjk_glyphs(fresh_font_cache):
    path = find_font("cjk")
    assert has_cjk_glyphs(ImageFont.truetype(path, 32))
    assert find_font("cjk") == path  # cached search
    assert Path(find_font("latin")).is_file()


def test_find_font_explicit_path_errors():
    with pytest.raises(FontNotFound, match=re.escape("/nonexistent.ttf")):
        find_font("cjk", path="/nonexistent.ttf")
    latin = find_font("latin")
    if not has_cjk_glyphs(ImageFont.truetype(latin, 32)):
        with pytest.raises(FontNotFound, match="no CJK glyphs"):
            find_font("cjk", path=latin)
    with pytest.raises(ValueError, match="script"):
        find_font("greek")


def test_find_font_env_var(monkeypatch, fresh_font_cache):
    cjk = find_font("cjk")
    fonts._search.cache_clear()
    monkeypatch.setenv("ZFOUNDRY_CJK_FONT", cjk)
    assert find_font("cjk") == cjk
    fonts._search.cache_clear()
    monkeypatch.setenv("ZFOUNDRY_CJK_FONT", "/nowhere/font.otf")
    with pytest.raises(FontNotFound, match=r"ZFOUNDRY_CJK_FONT='/nowhere/font.otf'"):
        find_font("cjk")


def test_font_not_found_says_how_to_fix(monkeypatch, fresh_font_cache):
    monkeypatch.delenv("ZFOUNDRY_CJK_FONT", raising=False)
    monkeypatch.setattr(fonts, "SYSTEM_PATHS", {"latin": (), "cjk": ("/nowhere/wqy.ttc",)})
    monkeypatch.setattr(fonts, "_fc_list_cjk", list)
    monkeypatch.setattr(fonts, "_mplfonts_path", lambda: None)
    with pytest.raises(FontNotFound) as err:
        find_font("cjk")
    assert isinstance(err.value, FileNotFoundError)
    for hint in ("/nowhere/wqy.ttc", "fonts-wqy-zenhei", "mplfonts", "ZFOUNDRY_CJK_FONT"):
        assert hint in str(err.value)


# ---------------------------------------------------------------------------- text renderer


def test_render_text_changes_only_its_box(photos):
    photo = Image.open(photos[2]).convert("RGB")
    out, box = render_text(
        photo, "Hello 你好", font=find_font("cjk"), size=32, position=(10, 20), background=WHITE
    )
    assert out is not photo and out.size == photo.size and out.mode == "RGB"
    changed = ImageChops.difference(out, photo).getbbox()
    assert changed is not None
    assert box[0] <= changed[0] and box[1] <= changed[1]
    assert changed[2] <= box[2] and changed[3] <= box[3]
    assert box[:2] == (10 - 8, 20 - 8)  # padding around the ink


def test_render_text_errors_name_the_field(photos):
    photo, font = Image.open(photos[2]), find_font("latin")
    for kwargs, field in [
        ({"text": ""}, "text"),
        ({"size": 0}, "size"),
        ({"position": (photo.width - 5, 10)}, "position"),
        ({"size": 400}, "size 400"),
    ]:
        args = {"text": "Fresh Coffee", "size": 24, "position": (10, 10)} | kwargs
        with pytest.raises(ValueError, match=field):
            render_text(photo, args.pop("text"), font=font, **args)
