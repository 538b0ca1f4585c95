"""Draw one line of text onto an image: the seam for OCR tests and rendered text-editing pairs.

``render_text`` never mutates its input; it returns a new RGB image and the box the text
(plus its background box, when one is drawn) covers. It refuses text that would not fit
entirely inside the image at the requested position rather than clipping it silently, so
every caller gets a complete, readable line (a background box may run off the edge; it is
clipped). Fonts come from ``infra.fonts.find_font``.
"""

from __future__ import annotations

import functools

from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]


def render_text(
    image: Image.Image,
    text: str,
    *,
    font: str,
    size: int,
    colour: RGB = (0, 0, 0),
    position: tuple[int, int],
    background: RGB | None = None,
    padding: int = 8,
) -> tuple[Image.Image, Box]:
    """Draw ``text`` with its ink's top-left at ``position``; return (new image, box).

    ``background`` fills a rectangle ``padding`` pixels larger than the ink on every side
    first; the returned box (x0, y0, x1, y1), exclusive at x1/y1 and clipped to the image,
    covers the ink and, when drawn, that rectangle: the region the call changed.
    """
    if not text.strip():
        raise ValueError(f"text must be non-empty, got {text!r}")
    if size <= 0:
        raise ValueError(f"size must be > 0, got {size}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    face = _font(font, size)
    out = image.convert("RGB")  # always a copy
    draw = ImageDraw.Draw(out)
    x, y = position
    ink = face.getbbox(text)
    origin = (x - ink[0], y - ink[1])  # so that the ink starts exactly at ``position``
    x0, y0, x1, y1 = x, y, x + ink[2] - ink[0], y + ink[3] - ink[1]
    w, h = out.size
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise ValueError(
            f"position {position} with size {size}: text {text!r} needs ink box "
            f"{(x0, y0, x1, y1)}, which does not fit in the {w}x{h} image"
        )
    if background is not None:
        x0, y0 = max(x0 - padding, 0), max(y0 - padding, 0)
        x1, y1 = min(x1 + padding, w), min(y1 + padding, h)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=background)
    draw.text(origin, text, font=face, fill=colour)
    return out, (x0, y0, x1, y1)


def measure_text(text: str, *, font: str, size: int) -> tuple[int, int]:
    """(width, height) of ``text``'s ink at ``size``: the box ``render_text`` draws."""
    x0, y0, x1, y1 = _font(font, size).getbbox(text)
    return x1 - x0, y1 - y0


@functools.lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(path, size)
    except OSError as e:
        raise ValueError(f"font {path!r} cannot be loaded by PIL: {e}") from e
