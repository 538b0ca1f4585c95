"""One safe decode per image: header facts, the displayed first frame, or an error code.

Error codes (the ``error`` column and ``rejects.reason``):

- ``empty_file``       zero bytes
- ``read_failed``      (set by the profile stage) the bytes could not be read from ``uri``
- ``not_an_image``     no image format recognised (text, HTML, ...)
- ``too_many_pixels``  width x height above the limit, refused before decoding
- ``truncated``        the data ends early (never decoded with filler)
- ``decode_failed``    anything else the decoder rejects
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Pillow's hard refusal is at 2 x MAX_IMAGE_PIXELS (DecompressionBombError).
PILLOW_HARD_LIMIT = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)

ORIENTATION = 0x0112  # EXIF tag
# Bands and bits per band for modes as Pillow stores them in memory.
_MODE_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}
# PNG colour type -> channels (IHDR tells the true bit depth; Pillow reduces RGB16 to 8 bits).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class DecodeError(Exception):
    """A per-row failure: ``code`` is the error column value, ``detail`` the explanation."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # displayed first frame: EXIF orientation applied, mode as stored
    format: str
    mode: str  # mode as stored, before any conversion
    n_frames: int
    channels: int  # as stored
    bit_depth: int  # bits per channel as stored


def _stored_depth(data: bytes, fmt: str, im: Image.Image) -> tuple[int, int]:
    """(channels, bits per channel) of the stored image."""
    if fmt == "PNG" and data[12:16] == b"IHDR":
        depth, colour_type = struct.unpack(">BB", data[24:26])
        return _PNG_CHANNELS.get(colour_type, len(im.getbands())), depth
    return len(im.getbands()), _MODE_BITS.get(im.mode, 8)


_ENDED_EARLY = ("truncated", "end of file", "unexpected end")


def _classify(err: Exception) -> DecodeError:
    """``truncated`` when the decoder says the data ended early, else ``decode_failed``."""
    message = f"{type(err).__name__}: {err}"
    ended = isinstance(err, OSError) and any(m in str(err).lower() for m in _ENDED_EARLY)
    return DecodeError("truncated" if ended else "decode_failed", message)


def decode(data: bytes, *, max_pixels: int) -> Decoded:
    """Decode the first frame of ``data`` or raise :class:`DecodeError`."""
    if not data:
        raise DecodeError("empty_file", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        head = data[:16].decode("latin-1").encode("unicode_escape").decode()
        raise DecodeError("not_an_image", f"unrecognised format, starts with {head!r}") from None
    except Image.DecompressionBombError as err:
        raise DecodeError("too_many_pixels", str(err)) from None
    except Exception as err:  # a malformed or cut-off header
        raise _classify(err) from None

    width, height = im.size
    if width * height > max_pixels:
        raise DecodeError("too_many_pixels", f"{width}x{height} > max_pixels={max_pixels}")
    fmt, mode = im.format or "UNKNOWN", im.mode
    try:
        n_frames = int(getattr(im, "n_frames", 1))
        if n_frames > 1:
            im.seek(0)
        if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone enabled filler decoding process-wide
            raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to decode")
        im.load()
    except Exception as err:
        raise _classify(err) from None
    channels, bit_depth = _stored_depth(data, fmt, im)
    try:  # exif_transpose copies even unrotated images: call it only when needed
        rotated = im.getexif().get(ORIENTATION, 1) not in (1, None)
        shown = ImageOps.exif_transpose(im) if rotated else im
    except Exception:  # unreadable EXIF: show the image as stored
        shown = im
    return Decoded(shown, fmt, mode, n_frames, channels, bit_depth)


def fit(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` scaled down (never up) so its longer side is at most ``max_side``."""
    w, h = image.size
    if max(w, h) <= max_side:
        return image
    s = max_side / max(w, h)
    return image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)


def to_rgb8(im: Image.Image) -> Image.Image:
    """8-bit RGB for the metrics. Transparency (alpha or a tRNS colour key) is composited
    over white; 16-bit greyscale is scaled by 1/257 (``I`` too when it exceeds 255); ``F``
    is clipped to 0..255."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        arr = np.asarray(im)
        scale = 257.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 1.0
        grey = np.clip(arr / scale + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if im.mode == "F":
        grey = np.clip(np.asarray(im), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = im.mode in {"RGBA", "LA", "PA", "La", "RGBa"} or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")
