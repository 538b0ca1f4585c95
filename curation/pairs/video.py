"""Video-frame editing pairs (the report's section 2.5): two frames of one clip are an edit
pair -- the earlier frame the source, the later one the target -- when they show the same
scene changed a little (the camera moved, a person turned, the light changed).

The pure building blocks; the stage that calls them embeds the frames with CLIP:

- :func:`list_clips` finds the clips under a folder, local or in object storage (``s3://``,
  ``gs://``; see below): every video file, and every folder that directly holds two or more
  frame images (one clip per folder).
- :func:`sample_frames` takes ``n`` frames evenly spaced over a clip, first and last included,
  downscaled, with a specific :class:`ClipError` for a clip that cannot give them.
- :func:`band_pairs` keeps the frame pairs whose CLIP cosine lies in a band ``[lo, hi]``.
  Above the band the two frames are (nearly) the same picture: there is no edit to learn.
  Below it they are different shots -- a cut, or the camera now looking at something else --
  and no instruction could turn one into the other. Frames are in time order, so a pair
  ``(i, j)`` with ``i < j`` has the earlier frame first.

Videos are decoded with PyAV in one sequential pass that keeps only the chosen frames. The
span to sample is the video stream's declared duration (the stream's own, else Matroska's
``DURATION`` tag, else the container's); with none declared, one demux pass (no decoding)
finds the last frame's time. Display rotation (phone videos) is applied.

**A video that ends early** (truncated download, or a decode error midway) is a
``decode_error`` when the decoded frames stop more than ``max(2 frames, 5% of the span)``
short of the declared end: the frames would not span the clip. Within that tolerance (a
damaged last frame or two) the frames decoded are used and the missing targets fall on the
last good frame. A truncated MP4 whose index (``moov``) is at the end cannot be opened at
all: ``unreadable``. Frames the decoder flags as corrupt are skipped.

**Object storage.** A clip's ``uri`` (and its frames) is then a URI with the root's filesystem
options but without its credentials (:func:`infra.storage.public_uri`, as ingest stores sample
URIs); a reader given the root attaches them again (:func:`infra.storage.with_credentials`).
Videos are read through pyarrow's random-access file, so an MP4 with its index at the end
needs no download of the whole file first.

In a frame folder an undecodable frame file is skipped, not replaced: the clip keeps its
other sampled frames (so a broken first or last file leaves the span a step shorter). Frame
files are in natural name order (``f2`` before ``f10``), the same as plain name order for
zero-padded numbers. Decoding runs in the calling process with FFmpeg's default threading.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pyarrow.fs as pafs
from PIL import Image

from curation.profiling.decode import PILLOW_HARD_LIMIT, DecodeError, decode, fit, to_rgb8
from infra.config import require
from infra.storage import public_uri, read_bytes, redact, resolve_uri

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
ERROR_CODES = ("unreadable", "no_video_stream", "too_short", "decode_error")
# what av may raise on bad data (its own errors, I/O, and ValueError for invalid states)
_AV_ERRORS = (av.FFmpegError, OSError, ValueError)
_ROTATE = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
           -180: Image.Transpose.ROTATE_180, -90: Image.Transpose.ROTATE_270,
           270: Image.Transpose.ROTATE_270}  # fmt: skip


@dataclass(frozen=True)
class Clip:
    clip_id: str  # sha256 hex[:24] of the path relative to the listed root (posix)
    uri: str  # absolute path (or URI) of the video file or of the frame folder
    kind: str  # "video" | "frames"
    frames: tuple[str, ...] = ()  # frame paths (URIs) in name order ("frames"), () for videos


class ClipError(DecodeError):
    """A per-clip failure: ``code`` (one of :data:`ERROR_CODES`) and ``detail``."""


@dataclass(frozen=True)
class Frame:
    index: int  # frame number in the clip (decoder output order / position in the folder)
    time_s: float | None  # presentation time in seconds (None for frame folders)
    image: Image.Image  # RGB, longer side <= max_side (never upscaled)


def _clip_id(rel: str) -> str:
    return hashlib.sha256(rel.encode()).hexdigest()[:24]


def _natural(name: str) -> tuple:
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def list_clips(root: str | Path) -> list[Clip]:
    """Every video file and every frame folder (>= 2 frame images) under ``root`` -- a local
    path or a URI -- sorted by path relative to ``root``; hidden files and folders (``.name``)
    are ignored."""
    fs, base = resolve_uri(root)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"clip root not found: {redact(str(root))}")
    where = lambda path: public_uri(fs, path, str(root))  # noqa: E731
    if info.type == pafs.FileType.File:
        if posixpath.splitext(base)[1].lower() not in VIDEO_EXTENSIONS:
            raise ValueError(
                f"root: a folder or a video file {VIDEO_EXTENSIONS}, got {redact(str(root))}"
            )
        return [Clip(_clip_id(info.base_name), where(base), "video")]
    prefix = base.rstrip("/") + "/"
    folders: dict[str, list[str]] = {}  # relative folder -> visible file names
    for f in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        rel = f.path[len(prefix) :]
        if f.type != pafs.FileType.File or any(p.startswith(".") for p in rel.split("/")):
            continue
        folder, name = posixpath.split(rel)
        folders.setdefault(folder, []).append(name)
    clips: list[tuple[str, Clip]] = []
    for folder, names in folders.items():
        full = posixpath.join(prefix, folder) if folder else base
        for name in names:
            if posixpath.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                rel = posixpath.join(folder, name)
                clips.append((rel, Clip(_clip_id(rel), where(posixpath.join(full, name)), "video")))
        frames = [n for n in names if posixpath.splitext(n)[1].lower() in FRAME_EXTENSIONS]
        if len(frames) >= 2:
            paths = tuple(where(posixpath.join(full, n)) for n in sorted(frames, key=_natural))
            rel = folder or "."
            clips.append((rel, Clip(_clip_id(rel), where(full), "frames", paths)))
    return [clip for _, clip in sorted(clips, key=lambda c: c[0])]


def sample_frames(clip: Clip, n: int, *, max_side: int = 512) -> list[Frame]:
    """``n`` frames evenly spaced over ``clip`` (first and last included), in time order with
    distinct indices; fewer when the clip has fewer than ``n`` frames. Raises
    :class:`ClipError` when the clip cannot give 2 frames spanning it (see module doc)."""
    require(isinstance(n, int) and n >= 2, "n", n, "must be an int >= 2")
    require(isinstance(max_side, int) and max_side >= 1, "max_side", max_side, "must be >= 1")
    if clip.kind == "video":
        return _sample_video(clip.uri, n, max_side)
    if clip.kind == "frames":
        return _sample_folder(clip.frames, n, max_side)
    raise ValueError(f"clip.kind: must be 'video' or 'frames', got {clip.kind!r}")


def _sample_folder(paths: tuple[str, ...], n: int, max_side: int) -> list[Frame]:
    picks = sorted({round(k * (len(paths) - 1) / (n - 1)) for k in range(n)})
    out = []
    for i in picks:
        try:
            image = to_rgb8(decode(read_bytes(paths[i]), max_pixels=PILLOW_HARD_LIMIT).image)
        except (DecodeError, OSError):  # skipped: the clip keeps its other frames
            continue
        out.append(Frame(i, None, fit(image, max_side)))
    if len(out) < 2:
        raise ClipError("too_short", f"{len(out)} decodable of {len(picks)} sampled frames")
    return out


def _declared_end(container, stream) -> float | None:
    """End of the video stream in seconds as the file declares it, or None."""
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if stream.duration:
        return start + float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION", "")  # Matroska: "HH:MM:SS.nnnnnnnnn"
    if m := re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", tag):
        return start + int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    if container.duration:
        return (container.start_time or 0) / 1e6 + container.duration / 1e6
    return None


@contextlib.contextmanager
def _open(uri: str) -> Iterator[av.container.InputContainer]:
    """A local file by path (FFmpeg's own I/O); a URI through pyarrow's random-access file.
    Opening errors propagate (the caller names them)."""
    with contextlib.ExitStack() as stack:
        if "://" in uri and not uri.startswith("file://"):
            fs, path = resolve_uri(uri)
            source = stack.enter_context(fs.open_input_file(path))
        else:
            source = uri.removeprefix("file://")
        yield stack.enter_context(av.open(source))


def _last_packet_end(uri: str) -> float | None:
    """End of the last video packet, by demuxing the file (no decoding)."""
    end = None
    with _open(uri) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.pts is not None:
                t = float((packet.pts + (packet.duration or 0)) * stream.time_base)
                end = t if end is None else max(end, t)
    return end


def _image(frame: av.VideoFrame, max_side: int) -> Image.Image:
    w, h = frame.width, frame.height
    s = min(1.0, max_side / max(w, h))
    image = frame.to_image(width=max(1, round(w * s)), height=max(1, round(h * s)),
                           interpolation="AREA")  # fmt: skip
    rotation = frame.rotation
    if rotation in _ROTATE:
        return image.transpose(_ROTATE[rotation])
    return image.rotate(rotation, expand=True) if rotation else image


def _sample_video(uri: str, n: int, max_side: int) -> list[Frame]:
    with contextlib.ExitStack() as stack:
        try:
            container = stack.enter_context(_open(uri))
        except _AV_ERRORS as err:
            raise ClipError("unreadable", f"{type(err).__name__}: {err}") from None
        if not container.streams.video:
            raise ClipError("no_video_stream", f"streams: {[s.type for s in container.streams]}")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        step = 1.0 / float(rate) if rate else 0.0  # one frame's duration
        try:
            end = _declared_end(container, stream) or _last_packet_end(uri)
        except _AV_ERRORS as err:
            raise ClipError("decode_error", f"demux: {type(err).__name__}: {err}") from None
        if end is None:
            raise ClipError("too_short", "no video packet with a timestamp")
        first = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        last = max(first, end - step)
        targets = [first + k * (last - first) / (n - 1) for k in range(n)]
        return _pick(container, stream, targets, step, max_side)


def _pick(container, stream, targets: list[float], step: float, max_side: int) -> list[Frame]:
    """One decode pass: for each target time the nearest decoded frame, distinct."""
    out: list[Frame] = []
    prev: tuple[int, float, av.VideoFrame] | None = None
    k, error = 0, None

    def take(cand: tuple[int, float, av.VideoFrame]) -> None:
        if not out or cand[0] > out[-1].index:
            out.append(Frame(cand[0], cand[1], _image(cand[2], max_side)))

    try:
        for i, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else targets[0] + i * step
            if frame.is_corrupt or (prev is not None and t <= prev[1]):
                continue
            cur = (i, t, frame)
            while k < len(targets) and t >= targets[k]:
                near = prev if prev and targets[k] - prev[1] <= t - targets[k] else cur
                taken = bool(out) and near[0] <= out[-1].index
                take(cur if taken else near)
                k += 1
            if k == len(targets):
                break
            prev = cur
    except _AV_ERRORS as err:
        error = f"{type(err).__name__}: {err}"
    if k < len(targets):  # the stream ended before the last target
        reached = prev[1] if prev else None
        span = targets[-1] - targets[0]
        if reached is None or targets[-1] - reached > max(2 * step, 0.05 * span):
            got = "no frame" if reached is None else f"frames up to {reached:.3f} s"
            why = f"; {error}" if error else ""
            raise ClipError("decode_error", f"{got} of {targets[-1]:.3f} s declared{why}")
        take(prev)
    if len(out) < 2:
        raise ClipError("too_short", f"{len(out)} decodable frame(s)")
    return out


def band_pairs(
    embeddings: np.ndarray, lo: float, hi: float, max_pairs: int, rng: random.Random
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, cosine)``, ``i < j``, of L2-normalised rows whose cosine is in
    ``[lo, hi]``; at most ``max_pairs`` of them, drawn with ``rng``; sorted by ``(i, j)``."""
    require(-1.0 <= lo <= 1.0, "lo", lo, "must be in [-1, 1]")
    require(-1.0 <= hi <= 1.0 and hi > lo, "hi", hi, f"must be in [-1, 1] and > lo={lo}")
    require(isinstance(max_pairs, int) and max_pairs >= 1, "max_pairs", max_pairs, "must be >= 1")
    m = np.asarray(embeddings, dtype=np.float32)
    require(m.ndim == 2, "embeddings", m.shape, "must be 2-D (n, d)")
    i, j = np.triu_indices(len(m), k=1)
    cos = np.einsum("pd,pd->p", m[i], m[j])
    keep = np.flatnonzero((cos >= lo) & (cos <= hi)).tolist()
    if len(keep) > max_pairs:
        keep = sorted(rng.sample(keep, max_pairs))
    return [(int(i[p]), int(j[p]), float(cos[p])) for p in keep]
