"""Deterministic corpus of bad-input / edge-case image files.

Used by the demo (the generated files are shipped) and by the image profiler's tests: each
:class:`EdgeCase` names one file, says which error code the profiler should report for it
(``None`` = it must decode) and, for decodable files, the profile values Pillow yields.
:func:`write_edge_cases` writes byte-identical files on every call (seeded numpy generator,
no timestamps, fixed animation durations). Only Pillow, numpy, zlib and struct are used.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
TOO_MANY_PIXELS = "too_many_pixels"
DECODE_FAILED = "decode_failed"


@dataclass(frozen=True, kw_only=True)
class EdgeCase:
    name: str  # file name written, e.g. "truncated.jpg"
    description: str  # one line, for docs/tables
    expected_error: str | None  # profiler error code; None = must decode fine
    # width/height (as displayed, after EXIF orientation), format, mode (as opened),
    # n_frames, bit_depth (bits per channel as stored), aspect_ratio (width / height)
    expected: dict


def _photo(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """Photo-like RGB image: colour gradients + seeded noise + a disc and a bar (integer maths)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    img = np.stack(
        [x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), 255 - (x + y) * 200 // (w + h)], -1
    )
    img = img + rng.integers(-12, 13, size=img.shape)
    cx, cy, r = w * 3 // 10, h // 2, max(min(w, h) // 5, 1)
    img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = (210, 50, 40)
    img[(x > w * 6 // 10) & (x < w * 8 // 10) & (y > h // 5) & (y < h * 4 // 5)] = (30, 90, 200)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _png_file(w: int, h: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _bomb(_rng: np.random.Generator) -> bytes:
    """40000 x 40000 1-bit greyscale, all zero: streams 200 MB of rows through zlib."""
    side, rows_per_block = 40_000, 1_000
    block = bytes((1 + side // 8) * rows_per_block)  # filter byte 0 + 5000 zero bytes per row
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(block) for _ in range(side // rows_per_block)) + comp.flush()
    return _png_file(side, side, 1, 0, idat)


def _rgb16(rng: np.random.Generator) -> bytes:
    w, h = 64, 48
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    arr = np.stack([x * 65535 // (w - 1), y * 65535 // (h - 1), (x + y) * 600], -1)
    arr = np.clip(arr + rng.integers(-300, 301, size=arr.shape), 0, 65535).astype(">u2")
    raw = b"".join(b"\x00" + arr[row].tobytes() for row in range(h))
    return _png_file(w, h, 16, 2, zlib.compress(raw, 9))


def _gray16(rng: np.random.Generator) -> bytes:
    w, h = 96, 64
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    arr = x * 65535 // (w - 1) + (y % 8) * 40 - 140 + rng.integers(-50, 51, size=(h, w))
    arr[:, 0], arr[:, -1] = 0, 65535  # span the full 16-bit range exactly
    return _encode(Image.fromarray(np.clip(arr, 0, 65535).astype(np.uint16)), "PNG")


def _palette_alpha(rng: np.random.Generator) -> bytes:
    y, x = np.mgrid[0:64, 0:64]
    idx = ((x // 4 + y // 4 * 16) % 255 + 1).astype(np.uint8)  # 16x16 tiles of colours 1..255
    idx[(x - 32) ** 2 + (y - 32) ** 2 < 12**2] = 0  # transparent hole in the middle
    im = Image.frombytes("P", (64, 64), idx.tobytes())
    im.putpalette(rng.integers(0, 256, size=768, dtype=np.uint8).tobytes())  # 256 colours: 8 bit
    return _encode(im, "PNG", transparency=0)


def _anim(fmt: str, n: int, **params) -> Callable[[np.random.Generator], bytes]:
    """n frames of 64x48: the photo with channels rotated (and inverted from frame 3 on)."""

    def build(rng: np.random.Generator) -> bytes:
        base = np.asarray(_photo(64, 48, rng))
        arrs = [np.roll(base, shift=k, axis=2) for k in range(n)]
        f = [Image.fromarray(a if k < 3 else 255 - a) for k, a in enumerate(arrs)]
        return _encode(f[0], fmt, save_all=True, append_images=f[1:], duration=100, **params)

    return build


def _exif_rotated(rng: np.random.Generator) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return _encode(_photo(160, 90, rng), "JPEG", quality=90, exif=exif)


def _jpeg(w: int, h: int, mode: str = "RGB") -> Callable[[np.random.Generator], bytes]:
    return lambda rng: _encode(_photo(w, h, rng).convert(mode), "JPEG", quality=90)


def _truncate(build: Callable[[np.random.Generator], bytes]) -> Callable:
    def cut(rng: np.random.Generator) -> bytes:
        data = build(rng)
        return data[: len(data) // 2]

    return cut


def _text(body: str) -> Callable[[np.random.Generator], bytes]:
    return lambda _rng: body.encode("ascii")


_TEXT = "Quarterly notes\nThis is plain ASCII text, not a JPEG.\nline three\n"
_HTML = (
    "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
    "<body><h1>Not Found</h1><p>The requested image was not found.</p></body></html>\n"
)


def _ok(w: int, h: int, fmt: str, mode: str, bit_depth: int | None = 8, n_frames: int = 1):
    exp = dict(width=w, height=h, format=fmt, mode=mode, n_frames=n_frames, aspect_ratio=w / h)
    return exp if bit_depth is None else {**exp, "bit_depth": bit_depth}


def _catalogue() -> list[tuple[EdgeCase, Callable[[np.random.Generator], bytes]]]:
    def case(name, description, error=None, expected=None):
        return EdgeCase(
            name=name, description=description, expected_error=error, expected=expected or {}
        )

    return [
        (case("zero_bytes.jpg", "0-byte file with a .jpg name", EMPTY_FILE), lambda _r: b""),
        (
            case(
                "truncated.jpg",
                "320x240 baseline JPEG (q90) cut to half its bytes, mid-scan",
                TRUNCATED,
            ),
            _truncate(_jpeg(320, 240)),
        ),
        (
            case("truncated.png", "320x240 RGB PNG cut to half its bytes, mid-IDAT", TRUNCATED),
            _truncate(lambda rng: _encode(_photo(320, 240, rng), "PNG")),
        ),
        (case("text.jpg", "ASCII text file with a .jpg extension", NOT_AN_IMAGE), _text(_TEXT)),
        (case("page.png", "HTML 404 page saved under a .png name", NOT_AN_IMAGE), _text(_HTML)),
        (
            case(
                "bomb.png",
                "valid 40000x40000 1-bit PNG (1.6e9 px), ~200 KB: decompression bomb",
                TOO_MANY_PIXELS,
            ),
            _bomb,
        ),
        (
            case(
                "one_pixel.png",
                "1x1 RGB PNG, smallest possible image",
                None,
                _ok(1, 1, "PNG", "RGB"),
            ),
            lambda rng: _encode(_photo(1, 1, rng), "PNG"),
        ),
        (
            case(
                "extreme_aspect.png",
                "4000x2 RGB PNG, aspect ratio 2000:1",
                None,
                _ok(4000, 2, "PNG", "RGB"),
            ),
            lambda rng: _encode(_photo(4000, 2, rng), "PNG"),
        ),
        (
            case(
                "cmyk.jpg",
                "128x96 CMYK JPEG (Adobe marker, inverted ink values)",
                None,
                _ok(128, 96, "JPEG", "CMYK"),
            ),
            _jpeg(128, 96, "CMYK"),
        ),
        (
            case(
                "gray16.png",
                "96x64 16-bit greyscale PNG spanning 0..65535",
                None,
                _ok(96, 64, "PNG", "I;16", 16),
            ),
            _gray16,
        ),
        (
            case(
                "rgb16.png",
                "64x48 16-bit-per-channel RGB PNG; Pillow opens it reduced to 8-bit RGB",
                None,
                _ok(64, 48, "PNG", "RGB", 16),
            ),
            _rgb16,
        ),
        (
            case(
                "palette_alpha.png",
                "64x64 8-bit palette PNG with tRNS transparent index 0",
                None,
                _ok(64, 64, "PNG", "P"),
            ),
            _palette_alpha,
        ),
        (
            case(
                "animated.gif",
                "animated GIF, 3 frames of 64x48, 100 ms each, looping",
                None,
                _ok(64, 48, "GIF", "P", None, 3),
            ),
            _anim("GIF", 3, loop=0),
        ),
        (
            case(
                "animated.webp",
                "animated lossless WebP, 4 frames of 64x48, 100 ms each",
                None,
                _ok(64, 48, "WEBP", "RGB", None, 4),
            ),
            _anim("WEBP", 4, loop=0, lossless=True),
        ),
        (
            case(
                "exif_rotated.jpg",
                "160x90 JPEG with EXIF Orientation=6: displays as 90x160",
                None,
                _ok(90, 160, "JPEG", "RGB"),
            ),
            _exif_rotated,
        ),
        (
            case(
                "jpeg_named.png",
                "200x150 JPEG bytes behind a .png extension",
                None,
                _ok(200, 150, "JPEG", "RGB"),
            ),
            _jpeg(200, 150),
        ),
        (
            case("grey.jpg", "120x80 8-bit greyscale (L) JPEG", None, _ok(120, 80, "JPEG", "L")),
            _jpeg(120, 80, "L"),
        ),
    ]


def edge_cases() -> list[EdgeCase]:
    """The catalogue, in a fixed order."""
    return [c for c, _ in _catalogue()]


def write_edge_cases(out_dir: Path) -> list[EdgeCase]:
    """Write every edge-case file into ``out_dir`` (created if missing); returns the catalogue."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for c, build in _catalogue():
        (out_dir / c.name).write_bytes(build(rng))
    return edge_cases()
