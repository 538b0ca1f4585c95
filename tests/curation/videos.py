"""Real test videos made with PyAV from photos: shots that stay still, pan or zoom, joined by
hard cuts, and the same content as a folder of numbered JPEG frames.

Every frame is a crop of a photo resized to ``size``: ``static`` keeps the largest centred
crop with the output's aspect ratio, ``pan`` slides a window 70% that size from the left edge
to the right edge (or top to bottom for a portrait photo), ``zoom`` shrinks the crop toward
the centre to half its size. Consecutive segments with different photos are hard cuts.
Frames are rendered deterministically and encoded single-threaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image

MOTIONS = ("static", "pan", "zoom")


@dataclass(frozen=True)
class Segment:
    photo: Image.Image
    motion: str  # "static" | "pan" | "zoom"
    frames: int


def _box(photo: Image.Image, size: tuple[int, int], motion: str, t: float) -> tuple[float, ...]:
    """The crop box at ``t`` in [0, 1] through the segment."""
    pw, ph = photo.size
    aspect = size[0] / size[1]
    w, h = (pw, pw / aspect) if pw / ph <= aspect else (ph * aspect, ph)  # largest crop
    if motion == "static":
        return ((pw - w) / 2, (ph - h) / 2, (pw + w) / 2, (ph + h) / 2)
    if motion == "zoom":
        s = 1.0 - 0.5 * t
        return ((pw - w * s) / 2, (ph - h * s) / 2, (pw + w * s) / 2, (ph + h * s) / 2)
    if motion == "pan":
        w, h = 0.7 * w, 0.7 * h
        if pw - w >= ph - h:  # slide along the longer free direction
            x, y = t * (pw - w), (ph - h) / 2
        else:
            x, y = (pw - w) / 2, t * (ph - h)
        return (x, y, x + w, y + h)
    raise ValueError(f"motion: must be one of {MOTIONS}, got {motion!r}")


def render(segments: list[Segment], size: tuple[int, int]) -> list[Image.Image]:
    """Every frame of ``segments`` as RGB images of ``size``."""
    frames = []
    for seg in segments:
        photo = seg.photo.convert("RGB")
        for k in range(seg.frames):
            t = k / (seg.frames - 1) if seg.frames > 1 else 0.0
            box = _box(photo, size, seg.motion, t)
            frames.append(photo.resize(size, Image.Resampling.BILINEAR, box=box))
    return frames


def write_video(
    path: str | Path,
    segments: list[Segment],
    *,
    size: tuple[int, int] = (160, 120),
    fps: int = 8,
    codec: str = "mpeg4",
    rotation: int | None = None,
) -> Path:
    """Encode ``segments`` to ``path`` (container from the extension), yuv420p at ``fps``.

    ``codec``: ``mpeg4`` (with B-frames, so decode order differs from stream order) gives the
    same bytes every time; ``libx264`` does too on its own, but not always in a process where
    torch has run a model (its float rate control). ``libvpx`` for WebM.
    ``rotation``: a display-matrix rotation in degrees counterclockwise (as phones write)."""
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"size: yuv420p needs even sides, got {size}")
    path = Path(path)
    with av.open(str(path), mode="w") as out:
        options = {"bf": "2"} if codec == "mpeg4" else {}
        stream = out.add_stream(codec, rate=Fraction(fps), options=options)
        if codec == "mpeg4":
            stream.bit_rate = 1_000_000  # the default (200 kb/s) blurs small frames
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.thread_count = 1
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for image in render(segments, size):
            # converted here: the encoder's own conversion is not always the same bytes
            frame = av.VideoFrame.from_image(image).reformat(format="yuv420p")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_frames(
    folder: str | Path, segments: list[Segment], *, size: tuple[int, int] = (160, 120)
) -> list[Path]:
    """The same frames as numbered JPEG files ``frame_00000.jpg``... in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(render(segments, size)):
        paths.append(folder / f"frame_{i:05d}.jpg")
        image.save(paths[-1], quality=90)
    return paths
