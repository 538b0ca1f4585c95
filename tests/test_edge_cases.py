"""Tests of the edge-case image corpus generator (curation.edge_cases), checked with Pillow."""

from pathlib import Path

import pytest
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from curation.edge_cases import EdgeCase, edge_cases, write_edge_cases

CASES = {c.name: c for c in edge_cases()}
DECODABLE = [c.name for c in edge_cases() if c.expected_error is None]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("edge") / "nested"  # also checks out_dir gets created
    returned = write_edge_cases(out)
    assert returned == edge_cases()
    return out


def test_catalogue_shape():
    names = [c.name for c in edge_cases()]
    assert len(names) == 17 and len(set(names)) == 17
    codes = {"empty_file", "not_an_image", "truncated", "too_many_pixels", "decode_failed", None}
    for c in edge_cases():
        assert isinstance(c, EdgeCase) and c.description and c.expected_error in codes
        assert bool(c.expected) == (c.expected_error is None)


def test_byte_identical_on_every_call(corpus, tmp_path):
    write_edge_cases(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CASES)
    for name in CASES:
        assert (tmp_path / name).read_bytes() == (corpus / name).read_bytes(), name


@pytest.mark.parametrize("name", DECODABLE)
def test_decodable_matches_expected(corpus, name):
    exp = CASES[name].expected
    with Image.open(corpus / name) as im:
        got = {"format": im.format, "mode": im.mode, "n_frames": getattr(im, "n_frames", 1)}
        im.load()
        shown = ImageOps.exif_transpose(im)
        got.update(width=shown.width, height=shown.height)
        got["aspect_ratio"] = shown.width / shown.height
    for key, value in got.items():
        if key in exp:
            assert value == pytest.approx(exp[key]) if key == "aspect_ratio" else value == exp[key]
    assert {"width", "height", "format", "mode"} <= exp.keys()


def test_png_bit_depths_as_stored(corpus):
    for name, c in CASES.items():
        data = (corpus / name).read_bytes()
        if c.expected_error is None and data.startswith(b"\x89PNG\r\n\x1a\n"):
            assert data[24] == c.expected["bit_depth"], name  # IHDR bit depth byte
    assert (corpus / "rgb16.png").read_bytes()[25] == 2  # colour type RGB


def test_empty_file(corpus):
    assert (corpus / "zero_bytes.jpg").stat().st_size == 0
    with pytest.raises(UnidentifiedImageError):
        Image.open(corpus / "zero_bytes.jpg")


@pytest.mark.parametrize("name", ["text.jpg", "page.png"])
def test_not_an_image(corpus, name):
    with pytest.raises(UnidentifiedImageError):
        Image.open(corpus / name)


@pytest.mark.parametrize("name", ["truncated.jpg", "truncated.png"])
def test_truncated_raises_on_load(corpus, name):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with Image.open(corpus / name) as im:
        assert im.size == (320, 240)
        with pytest.raises(OSError, match="truncated"):
            im.load()


def test_bomb_refused_on_open_and_small(corpus):
    path = corpus / "bomb.png"
    assert path.stat().st_size < 1_000_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)  # never decoded: 1.6e9 pixels


def test_expected_errors_catalogue():
    errors = {c.name: c.expected_error for c in edge_cases() if c.expected_error}
    assert errors == {
        "zero_bytes.jpg": "empty_file",
        "truncated.jpg": "truncated",
        "truncated.png": "truncated",
        "text.jpg": "not_an_image",
        "page.png": "not_an_image",
        "bomb.png": "too_many_pixels",
    }
