"""Profiling metrics: pure functions of one decoded image (formulas in docs/profiles.md).

All take the displayed image at full resolution as 8-bit RGB (``decode.to_rgb8``) or its
luminance, except pHash, which defines its own 32x32 downscale. Costs are kept near the
decode floor: channel statistics come from one Pillow C histogram, and the two 3x3 filters
run as one fused numba pass (compiled once per process, cached on disk).
"""

from __future__ import annotations

import io
import math

import numba
import numpy as np
import scipy.fftpack
from PIL import Image

# BT.601 chroma rows (JPEG's YCbCr): Cb, Cr as linear functions of R, G, B.
_CB = np.array([-0.168736, -0.331264, 0.5])
_CR = np.array([0.5, -0.418688, -0.081312])


def phash(luma: Image.Image) -> int:
    """imagehash's 64-bit DCT pHash as an unsigned int, in the bit order of its hex string,
    so ``imagehash.hex_to_hash(f"{v:016x}")`` recovers the same ImageHash.

    Same steps as ``imagehash.phash`` (32x32 Lanczos downscale of the luma, 2-D DCT-II,
    top-left 8x8 above its median) without its extra full-size copy; a test checks the two
    agree bit for bit.
    """
    if luma.mode != "L":
        luma = luma.convert("L")
    pixels = np.asarray(luma.resize((32, 32), Image.Resampling.LANCZOS))
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)[:8, :8]
    bits = (dct > np.median(dct)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def compression_ratio(width: int, height: int, channels: int, bit_depth: int, n: int) -> float:
    """Ideal uncompressed size (w x h x channels x bits / 8) over the file size ``n``."""
    return width * height * channels * bit_depth / 8.0 / max(n, 1)


JPEG_MAX_SIDE = 65_500  # the format's limit


def jpeg_bpp(rgb: Image.Image, quality: int) -> float:
    """Bytes per pixel of a transient in-memory JPEG re-encode at ``quality`` (4:2:0).

    Images longer than JPEG's 65,500 px limit are encoded in tiles whose sizes are summed
    (each tile adds its own few hundred header bytes).
    """
    w, h = rgb.size
    total = 0
    for top in range(0, h, JPEG_MAX_SIDE):
        for left in range(0, w, JPEG_MAX_SIDE):
            box = (left, top, min(left + JPEG_MAX_SIDE, w), min(top + JPEG_MAX_SIDE, h))
            tile = rgb if box == (0, 0, w, h) else rgb.crop(box)
            buf = io.BytesIO()
            tile.save(buf, "JPEG", quality=quality)
            total += buf.tell()
    return total / (w * h)


def border_variance(rgb: Image.Image, border: int) -> float:
    """Mean over R, G, B of the variance of pixels within ``border`` px of the edge.

    Low values mean a flat frame (padding, letterboxing, scanner borders). When the
    border covers the whole image, this is the whole image's variance.
    """
    w, h = rgb.size
    b = min(border, (w + 1) // 2, (h + 1) // 2)
    if 2 * b >= w or 2 * b >= h:
        boxes = [(0, 0, w, h)]
    else:  # top, bottom, then left and right without the corners
        boxes = [(0, 0, w, b), (0, h - b, w, h), (0, b, b, h - b), (w - b, b, w, h - b)]
    hist = sum(np.asarray(rgb.crop(box).histogram(), dtype=np.float64) for box in boxes)
    hist = hist.reshape(3, 256)  # per channel: variance = E[x^2] - E[x]^2 over the counts
    n = hist.sum(axis=1)
    levels = np.arange(256.0)
    mean = hist @ levels / n
    var = hist @ (levels * levels) / n - mean * mean
    return float(np.maximum(var, 0.0).mean())


def _histogram(rgb: Image.Image | list[int]) -> list[int]:
    """R, G, B histograms (3 x 256 counts); pass one in to share it between metrics."""
    return rgb.histogram() if isinstance(rgb, Image.Image) else rgb


def color_cast(rgb: Image.Image | list[int]) -> float:
    """Length of the mean (Cb, Cr) chroma offset, in 8-bit chroma levels (0 = neutral)."""
    hist = np.asarray(_histogram(rgb), dtype=np.float64).reshape(3, 256)
    mean = hist @ np.arange(256.0) / hist.sum(axis=1)
    return float(math.hypot(_CB @ mean, _CR @ mean))


def saturated_fraction(rgb: Image.Image | list[int]) -> float:
    """Fraction of R, G, B samples clipped at 0 or 255 (crushed shadows, blown highlights)."""
    hist = _histogram(rgb)
    clipped = sum(hist[c * 256] + hist[c * 256 + 255] for c in range(3))
    return clipped / sum(hist)


@numba.njit(cache=True, nogil=True)
def _laplacian_noise_sums(a: np.ndarray) -> tuple[float, float, float]:
    """One pass over interior pixels: sum and sum of squares of the 4-neighbour Laplacian,
    and sum of |I * N| for Immerkaer's mask. Integer terms, exact float64 sums."""
    h, w = a.shape
    s = s2 = na = 0.0
    for y in range(1, h - 1):
        up, mid, dn = a[y - 1], a[y], a[y + 1]
        for x in range(1, w - 1):
            c = np.int32(mid[x])
            dxx_mid = np.int32(mid[x - 1]) + np.int32(mid[x + 1]) - 2 * c
            dxx_up = np.int32(up[x - 1]) + np.int32(up[x + 1]) - 2 * np.int32(up[x])
            dxx_dn = np.int32(dn[x - 1]) + np.int32(dn[x + 1]) - 2 * np.int32(dn[x])
            lap = dxx_mid + np.int32(up[x]) + np.int32(dn[x]) - 2 * c
            s += lap
            s2 += lap * lap
            na += abs(dxx_up + dxx_dn - 2 * dxx_mid)  # N is separable: d2/dy2 of d2/dx2
    return s, s2, na


def laplacian_and_noise(luma: np.ndarray) -> tuple[float, float]:
    """``(sharpness, noise_sigma)`` of an 8-bit luminance array.

    sharpness: variance of the 4-neighbour Laplacian (low = blurry).
    noise_sigma: Immerkaer's fast estimate (1996), sqrt(pi/2) / (6 (W-2)(H-2)) * sum |I * N|
    with N = [[1,-2,1],[-2,4,-2],[1,-2,1]], in 8-bit grey levels.
    Both are 0.0 for images narrower or shorter than 3 px. One fused pass (numba), no
    temporaries, so memory stays flat on very large images.
    """
    h, w = luma.shape
    if h < 3 or w < 3:
        return 0.0, 0.0
    s, s2, na = _laplacian_noise_sums(np.ascontiguousarray(luma, dtype=np.uint8))
    n = (h - 2) * (w - 2)
    mean = s / n
    sharpness = max(s2 / n - mean * mean, 0.0)
    noise_sigma = math.sqrt(math.pi / 2.0) * na / (6.0 * n)
    return sharpness, noise_sigma


def luminance(rgb: Image.Image) -> Image.Image:
    """BT.601 luma as an 8-bit ``L`` image (Pillow's C conversion)."""
    return rgb.convert("L")
