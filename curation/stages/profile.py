"""The profile stage: ``samples`` -> ``profiles`` (+ rejects), one decode per image."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curation.profiling import metrics
from curation.profiling.decode import PILLOW_HARD_LIMIT, DecodeError, decode, to_rgb8
from infra.config import require
from infra.stage import Stage
from infra.storage import read_bytes
from infra.tables import ERROR_DETAIL, PROFILES

_OUTPUT = pa.schema([*PROFILES, pa.field(ERROR_DETAIL, pa.string())])


@dataclass(kw_only=True)
class ProfileStage(Stage):
    """Metadata, pHash, compression ratio, JPEG bytes-per-pixel, border variance and
    model-free degradations for every sample; undecodable samples get an ``error`` code."""

    name: ClassVar[str] = "profile"
    input_table: ClassVar[str] = "samples"
    output_table: ClassVar[str] = "profiles"
    input_columns: ClassVar[tuple[str, ...]] = ("sample_id", "uri", "image", "content_sha256")

    jpeg_quality: int = 75
    """Quality of the transient JPEG re-encode behind ``jpeg_bpp`` (1-95)."""
    border_width: int = 8
    """Width in pixels of the frame whose variance is ``border_variance``."""
    max_pixels: int = 100_000_000
    """Images with more pixels are rejected as ``too_many_pixels`` before decoding."""
    batch_rows: int = 64
    """Rows per batch handed to ``process_batch`` (bounds memory with inline image bytes)."""

    def __post_init__(self) -> None:
        require(1 <= self.jpeg_quality <= 95, "jpeg_quality", self.jpeg_quality, "must be 1-95")
        require(self.border_width >= 1, "border_width", self.border_width, "must be >= 1")
        require(
            1 <= self.max_pixels <= PILLOW_HARD_LIMIT,
            "max_pixels",
            self.max_pixels,
            f"must be 1-{PILLOW_HARD_LIMIT} (Pillow refuses larger images regardless)",
        )
        require(self.batch_rows >= 1, "batch_rows", self.batch_rows, "must be >= 1")

    def process_batch(self, table: pa.Table) -> pa.Table:
        rows = [
            self.profile_one(sid, uri, data)
            for sid, uri, data in zip(
                table.column("sample_id").to_pylist(),
                table.column("uri").to_pylist(),
                table.column("image").to_pylist(),
                strict=True,
            )
        ]
        return pa.Table.from_pylist(rows, schema=_OUTPUT)

    def profile_one(self, sample_id: str, uri: str, data: bytes | None) -> dict[str, Any]:
        row: dict[str, Any] = {"sample_id": sample_id, "error": None}
        if data is None:
            try:
                data = read_bytes(uri)
            except Exception as err:
                return row | {"error": "read_failed", ERROR_DETAIL: f"{uri}: {err}"}
        row["file_bytes"] = len(data)
        row["content_sha256"] = hashlib.sha256(data).hexdigest()
        try:
            return row | self.measure(data)
        except DecodeError as err:
            return row | {"error": err.code, ERROR_DETAIL: err.detail}
        except Exception as err:  # a corrupt image must never kill the job
            detail = f"{type(err).__name__}: {err}"
            return row | {"error": "decode_failed", ERROR_DETAIL: detail}

    def measure(self, data: bytes) -> dict[str, Any]:
        d = decode(data, max_pixels=self.max_pixels)
        width, height = d.image.size
        rgb = to_rgb8(d.image)
        luma = metrics.luminance(rgb)  # shared by pHash and the 3x3 filters
        hist = rgb.histogram()  # shared by colour cast and clipping
        sharpness, noise_sigma = metrics.laplacian_and_noise(np.asarray(luma))
        return {
            "width": width,
            "height": height,
            "format": d.format,
            "mode": d.mode,
            "n_frames": d.n_frames,
            "bit_depth": d.bit_depth,
            "aspect_ratio": width / height,
            "phash": metrics.phash(luma),
            "compression_ratio": metrics.compression_ratio(
                width, height, d.channels, d.bit_depth, len(data)
            ),
            "jpeg_bpp": metrics.jpeg_bpp(rgb, self.jpeg_quality),
            "border_variance": metrics.border_variance(rgb, self.border_width),
            "sharpness": sharpness,
            "noise_sigma": noise_sigma,
            "color_cast": metrics.color_cast(hist),
            "saturated_fraction": metrics.saturated_fraction(hist),
        }
