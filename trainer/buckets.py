"""Training resolutions: arbitrary aspect ratios -> a (W, H) with a bounded token count, the
nearest fixed bucket, and the resize + centre crop that produces it.

An image of W x H pixels (multiples of 16) becomes (W / 16) * (H / 16) S3-DiT image tokens: the
VAE downsamples 8x and the transformer's patch size is 2 (``tokens_for``).

``resolution_for`` is the rule for stages that train on arbitrary resolutions (the Z-Image
report trains up to 1024^2, i.e. 64 to 4096 image tokens):

1. The aspect ratio ``a = width / height`` is clamped to ``[1 / max_aspect, max_aspect]``
   (default 4:1). A more extreme image (a 10:1 panorama) gets a ``max_aspect`` resolution and
   ``resize_crop`` cuts the excess off its long side, centred; a stage that must not crop
   filters such images out beforehand (``aspect`` is in the profiles table).
2. The pixel area is clamped so that the token count lies in ``[min_tokens, max_tokens]``:
   large images are downscaled to at most ``max_tokens``, small ones upscaled to at least
   ``min_tokens``, the ones in between keep their area. This gives the ideal (real-valued)
   ``W* = sqrt(area * a)``, ``H* = sqrt(area / a)``.
3. W and H are ``W*`` and ``H*`` rounded down or up to a multiple of ``multiple`` (four
   choices, sides of at least ``multiple``); among the choices whose token count lies in
   ``[min_tokens, max_tokens]`` the one with the smallest aspect error ``|log(W/H) - log a|``
   wins, ties going to the area nearer ``area`` and then to the larger area. So each side is
   within one ``multiple`` of the ideal and the aspect error is at most about
   ``multiple / min(W, H)`` (1.6% for a 1024-pixel side). Only when the token range is so
   narrow that none of the four fits (e.g. ``min_tokens == max_tokens``) are all sizes in the
   range within the aspect clamp are considered, with the same order of preference; when
   there is none (a prime token count, say) it raises.

Everything is deterministic and pure; invalid arguments raise ``ValueError`` naming the
argument and its value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
from PIL import Image

from infra.config import require

PIXELS_PER_TOKEN = 16  # VAE downsampling 8 x patch size 2


def tokens_for(size: tuple[int, int], *, pixels_per_token: int = PIXELS_PER_TOKEN) -> int:
    """Image tokens of a (W, H) resolution: ``(W / 16) * (H / 16)``."""
    _check_size("size", size, pixels_per_token)
    return (size[0] // pixels_per_token) * (size[1] // pixels_per_token)


def resolution_for(
    width: int,
    height: int,
    *,
    min_tokens: int,
    max_tokens: int,
    multiple: int = 16,
    pixels_per_token: int = PIXELS_PER_TOKEN,
    max_aspect: float = 4.0,
) -> tuple[int, int]:
    """The training (W, H) of a ``width`` x ``height`` image (the rule in the module docstring).

    ``multiple`` must be a multiple of ``pixels_per_token``, so every size has whole tokens.
    """
    require(_positive_int(width), "width", width, "must be a positive int")
    require(_positive_int(height), "height", height, "must be a positive int")
    require(_positive_int(pixels_per_token), "pixels_per_token", pixels_per_token, "must be >= 1")
    ok = _positive_int(multiple) and multiple % pixels_per_token == 0
    require(ok, "multiple", multiple, f"must be a positive multiple of {pixels_per_token}")
    require(_positive_int(min_tokens), "min_tokens", min_tokens, "must be a positive int")
    ok = _positive_int(max_tokens) and max_tokens >= min_tokens
    require(ok, "max_tokens", max_tokens, f"must be an int >= min_tokens = {min_tokens}")
    require(max_aspect >= 1, "max_aspect", max_aspect, "must be >= 1")

    aspect = min(max(width / height, 1 / max_aspect), max_aspect)
    token_area = pixels_per_token**2
    area = min(max(width * height, min_tokens * token_area), max_tokens * token_area)
    # sizes in units of `multiple`: tokens = k2 * wu * hu
    k2 = (multiple // pixels_per_token) ** 2
    lo, hi = -(-min_tokens // k2), max_tokens // k2  # bounds on wu * hu
    require(lo <= hi, "max_tokens", max_tokens, f"leaves no size with {k2} * w * h tokens")
    ideal_w, ideal_h = math.sqrt(area * aspect) / multiple, math.sqrt(area / aspect) / multiple
    wu = np.array([math.floor(ideal_w), math.ceil(ideal_w)] * 2)
    hu = np.repeat([math.floor(ideal_h), math.ceil(ideal_h)], 2)
    keep = _feasible(wu, hu, lo, hi, max_aspect)
    if not keep.any():  # a narrow token range: every size in it
        hu = np.arange(1, hi + 1)
        hu = hu[-(-lo // hu) <= hi // hu]  # heights that admit a width
        w_lo, w_hi, near = -(-lo // hu), hi // hu, aspect * hu
        wu = np.concatenate(
            [np.clip(np.floor(near), w_lo, w_hi), np.clip(np.ceil(near), w_lo, w_hi)]
        )
        hu = np.concatenate([hu, hu])
        keep = _feasible(wu, hu, lo, hi, max_aspect)
    if not keep.any():
        raise ValueError(
            f"min_tokens, max_tokens: no size with tokens in [{min_tokens}, {max_tokens}] "
            f"(steps of {k2}) and aspect within {max_aspect}:1, got {min_tokens}, {max_tokens}"
        )
    wu, hu = wu[keep].astype(np.int64), hu[keep].astype(np.int64)
    units = wu * hu
    aspect_err = np.abs(np.log(wu / hu) - math.log(aspect))
    area_err = np.abs(np.log(units * multiple**2 / area))
    best = np.lexsort((-units, area_err, aspect_err))[0]  # last key is the primary one
    return int(wu[best]) * multiple, int(hu[best]) * multiple


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket (w, h) whose aspect ratio is nearest ``width / height`` in log space.

    Ties (equal aspect ratios, or e.g. 2:1 and 1:2 for a square) go to the larger area, then to
    the earlier bucket in the list. Distances are compared exactly (as fractions), so ties are
    real ties, not float accidents.
    """
    require(_positive_int(width), "width", width, "must be a positive int")
    require(_positive_int(height), "height", height, "must be a positive int")
    require(len(buckets) > 0, "buckets", buckets, "must not be empty")
    for bucket in buckets:
        ok = len(bucket) == 2 and all(_positive_int(v) for v in bucket)
        require(ok, "buckets", buckets, "must be (width, height) pairs of positive ints")

    def key(item: tuple[int, tuple[int, int]]) -> tuple[Fraction, int, int]:
        index, (w, h) = item
        ratio = Fraction(width * h, height * w)  # |log ratio| is monotone in max(r, 1/r)
        return max(ratio, 1 / ratio), -w * h, index

    return tuple(min(enumerate(buckets), key=key)[1])


def resize_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale ``image`` to cover ``size`` = (W, H), keeping its aspect ratio, then crop the
    centre; RGB output of exactly ``size``.

    Resampling: LANCZOS when shrinking (antialiased), BICUBIC when enlarging (less ringing than
    LANCZOS on upscales). The image is converted to RGB first (an alpha channel is dropped,
    palette images expanded); EXIF orientation is the caller's business (``ImageOps.
    exif_transpose``).
    """
    require(
        len(size) == 2 and all(_positive_int(v) for v in size), "size", size, "must be (W, H) > 0"
    )
    width, height = size
    image = image if image.mode == "RGB" else image.convert("RGB")
    w, h = image.size
    scale = max(width / w, height / h)
    new = (max(width, round(w * scale)), max(height, round(h * scale)))
    if new != (w, h):
        resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
        image = image.resize(new, resample)
    left, top = (new[0] - width) // 2, (new[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


def _positive_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value > 0


def _feasible(wu: np.ndarray, hu: np.ndarray, lo: int, hi: int, max_aspect: float) -> np.ndarray:
    units = wu * hu
    in_aspect = (wu <= max_aspect * hu) & (hu <= max_aspect * wu)
    return (wu >= 1) & (hu >= 1) & (units >= lo) & (units <= hi) & in_aspect


def _check_size(name: str, size: tuple[int, int], multiple: int) -> None:
    ok = len(size) == 2 and all(_positive_int(v) and v % multiple == 0 for v in size)
    require(ok, name, size, f"must be (W, H), positive multiples of {multiple}")
