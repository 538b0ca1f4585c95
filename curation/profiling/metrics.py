"""Profiling metrics: pure functions of one decoded image (formulas in docs/profiles.md).

All take the displayed image at full resolution as 8-bit RGB (``decode.to_rgb8``) or its
luminance, except pHash, which defines its own 32x32 downscale. Costs are kept near the
decode floor: channel statistics come from Pillow's C histograms, and the two 3x3 filters
run over row strips so memory stays bounded on very large images.
"""

from __future__ import annotations

import io
import math

import imagehash
import numpy as np
from PIL import Image, ImageStat

STRIP_ROWS = 512  # rows per strip for the 3x3 filters (bounded working memory)

# BT.601 chroma rows (JPEG's YCbCr): Cb, Cr as linear functions of R, G, B.
_CB = np.array([-0.168736, -0.331264, 0.5])
_CR = np.array([0.5, -0.418688, -0.081312])


def phash(im: Image.Image) -> int:
    """imagehash's 64-bit DCT pHash as an unsigned int, in the bit order of its hex string,
    so ``imagehash.hex_to_hash(f"{v:016x}")`` recovers the same ImageHash."""
    return int(str(imagehash.phash(im)), 16)


def compression_ratio(width: int, height: int, channels: int, bit_depth: int, n: int) -> float:
    """Ideal uncompressed size (w x h x channels x bits / 8) over the file size ``n``."""
    return width * height * channels * bit_depth / 8.0 / max(n, 1)


def jpeg_bpp(rgb: Image.Image, quality: int) -> float:
    """Bytes per pixel of a transient in-memory JPEG re-encode at ``quality`` (4:2:0)."""
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=quality)
    return buf.tell() / (rgb.width * rgb.height)


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
    n = np.zeros(3)
    s = np.zeros(3)
    s2 = np.zeros(3)
    for box in boxes:
        st = ImageStat.Stat(rgb.crop(box))
        n += np.asarray(st.count, dtype=np.float64)
        s += np.asarray(st.sum)
        s2 += np.asarray(st.sum2)
    var = s2 / n - (s / n) ** 2
    return float(np.maximum(var, 0.0).mean())


def color_cast(rgb: Image.Image) -> float:
    """Length of the mean (Cb, Cr) chroma offset, in 8-bit chroma levels (0 = neutral)."""
    mean = np.asarray(ImageStat.Stat(rgb).mean)
    return float(math.hypot(_CB @ mean, _CR @ mean))


def saturated_fraction(rgb: Image.Image) -> float:
    """Fraction of R, G, B samples clipped at 0 or 255 (crushed shadows, blown highlights)."""
    hist = rgb.histogram()  # 3 x 256 counts
    clipped = sum(hist[c * 256] + hist[c * 256 + 255] for c in range(3))
    return clipped / (3 * rgb.width * rgb.height)


def laplacian_and_noise(luma: np.ndarray) -> tuple[float, float]:
    """``(sharpness, noise_sigma)`` of an 8-bit luminance array.

    sharpness: variance of the 4-neighbour Laplacian (low = blurry).
    noise_sigma: Immerkaer's fast estimate (1996), sqrt(pi/2) / (6 (W-2)(H-2)) * sum |I * N|
    with N = [[1,-2,1],[-2,4,-2],[1,-2,1]], in 8-bit grey levels.
    Both are 0.0 for images narrower or shorter than 3 px.
    """
    h, w = luma.shape
    if h < 3 or w < 3:
        return 0.0, 0.0
    lap_sum = lap_sq = noise_abs = 0.0
    for top in range(0, h - 2, STRIP_ROWS):
        strip = luma[top : min(top + STRIP_ROWS + 2, h)].astype(np.float32)
        dxx = strip[:, :-2] - 2.0 * strip[:, 1:-1] + strip[:, 2:]  # (r, w-2)
        dyy = strip[:-2, 1:-1] - 2.0 * strip[1:-1, 1:-1] + strip[2:, 1:-1]  # (r-2, w-2)
        lap = dxx[1:-1] + dyy
        lap_sum += float(lap.sum(dtype=np.float64))
        lap_sq += float(np.einsum("ij,ij->", lap, lap, dtype=np.float64))
        noise = dxx[:-2] - 2.0 * dxx[1:-1] + dxx[2:]  # separable N = d2/dy2 of d2/dx2
        noise_abs += float(np.abs(noise).sum(dtype=np.float64))
    n = (h - 2) * (w - 2)
    mean = lap_sum / n
    sharpness = max(lap_sq / n - mean * mean, 0.0)
    noise_sigma = math.sqrt(math.pi / 2.0) * noise_abs / (6.0 * n)
    return sharpness, noise_sigma


def luminance(rgb: Image.Image) -> np.ndarray:
    """BT.601 luma as uint8 (Pillow's C conversion)."""
    return np.asarray(rgb.convert("L"))
