"""Embed stages: CLIP image embeddings -> ``vectors``, caption embeddings -> ``text_vectors``.

Embeddings are computed once and every head reads them. Samples whose profile has an
``error`` are skipped and counted (never decoded again); captionless samples are skipped by
the text stage. Vectors are L2-normalised and stored as ``fixed_size_list<float16>[D]``
(``dtype = "float32"`` to keep full precision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.clip import TINY, Clip, load_clip, model_id
from curation.profiling.decode import DecodeError, decode, to_rgb8
from infra.config import require
from infra.stage import Resources, Stage
from infra.storage import read_bytes
from infra.tables import ERROR_DETAIL, vectors_schema, vectors_table


@dataclass(kw_only=True)
class _ClipStage(Stage):
    one_to_one: ClassVar[bool] = False

    model: str = TINY
    """open_clip model name (``ViT-L-14``, ``ViT-H-14``, ``hf-hub:...``, or ``zf-tiny-clip``)."""
    pretrained: str | None = None
    """open_clip pretrained tag (``openai``, ``laion2b_s32b_b82k``...) or a local checkpoint path;
    None: random weights (seeded and cached for ``zf-tiny-clip``)."""
    dtype: Literal["float16", "float32"] = "float16"
    """Stored embedding precision."""
    batch_rows: int = 64
    """Rows per model batch."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``..."""
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """Model precision; ``auto``: bf16 on GPU, fp32 on CPU."""
    num_gpus: float = 0.0
    """GPU fraction per Ray actor (0 on CPU machines)."""
    threads: int = 1
    """torch CPU threads per worker (same on every executor, so outputs are identical)."""
    _clip: Clip | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        require(self.batch_rows >= 1, "batch_rows", self.batch_rows, "must be >= 1")
        require(self.num_gpus >= 0, "num_gpus", self.num_gpus, "must be >= 0")
        require(self.threads >= 1, "threads", self.threads, "must be >= 1")

    @property
    def resources(self) -> Resources:
        return Resources(cpus=self.threads, gpus=self.num_gpus, actors=True)

    @property
    def output_schema(self) -> pa.Schema:
        return vectors_schema(self.clip.dim, self.dtype)

    @property
    def clip(self) -> Clip:
        if self._clip is None:
            self.setup()
        assert self._clip is not None
        return self._clip

    def setup(self) -> None:
        import torch

        torch.set_num_threads(self.threads)
        self._clip = load_clip(
            self.model, self.pretrained, device=self.device, precision=self.precision
        )

    def _rows(self, ids: list[str], vectors: np.ndarray) -> pa.Table:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = (vectors / np.maximum(norms, 1e-12)).astype(self.dtype)
        return vectors_table(ids, model_id(self.model, self.pretrained), unit)

    @staticmethod
    def _profiled(table: pa.Table) -> pa.Table:
        return table.filter(pc.is_null(table.column("error")))


@dataclass(kw_only=True)
class EmbedImagesStage(_ClipStage):
    """The CLIP image tower over every decodable sample."""

    name: ClassVar[str] = "embed"
    input_table: ClassVar[str] = "samples"
    output_table: ClassVar[str] = "vectors"
    input_columns: ClassVar[tuple[str, ...]] = ("sample_id", "uri", "image")
    side_inputs: ClassVar[dict[str, tuple[str, ...]]] = {"profiles": ("error",)}

    def process_batch(self, table: pa.Table) -> pa.Table:
        import torch

        ok, tensors, failed = [], [], []
        for row in self._profiled(table).to_pylist():
            try:
                data = row["image"] if row["image"] is not None else read_bytes(row["uri"])
                image = to_rgb8(decode(data, max_pixels=10**9).image)
            except (DecodeError, OSError) as err:  # profiled fine, but unreadable now
                failure = {"sample_id": row["sample_id"], "error": "embed_failed"}
                failed.append(failure | {ERROR_DETAIL: str(err)})
                continue
            ok.append(row["sample_id"])
            tensors.append(self.clip.preprocess(image))
        out = self._rows([], np.zeros((0, self.clip.dim), np.float32))
        if ok:
            batch = torch.stack(tensors).to(self.clip.device)
            with torch.inference_mode():
                vectors = self.clip.model.encode_image(batch).float().cpu().numpy()
            out = self._rows(ok, vectors)
        return _with_failures(out, failed)


@dataclass(kw_only=True)
class EmbedTextStage(_ClipStage):
    """The CLIP text tower over every decodable sample's ``caption_alt``."""

    name: ClassVar[str] = "embed_text"
    input_table: ClassVar[str] = "samples"
    output_table: ClassVar[str] = "text_vectors"
    input_columns: ClassVar[tuple[str, ...]] = ("sample_id", "caption_alt")
    side_inputs: ClassVar[dict[str, tuple[str, ...]]] = {"profiles": ("error",)}

    def process_batch(self, table: pa.Table) -> pa.Table:
        import torch

        profiled = self._profiled(table)
        rows = profiled.filter(pc.is_valid(profiled.column("caption_alt")))
        ids = rows.column("sample_id").to_pylist()
        if not ids:
            return self._rows([], np.zeros((0, self.clip.dim), np.float32))
        tokens = self.clip.tokenizer(rows.column("caption_alt").to_pylist()).to(self.clip.device)
        with torch.inference_mode():
            vectors = self.clip.model.encode_text(tokens).float().cpu().numpy()
        return self._rows(ids, vectors)


def _with_failures(out: pa.Table, failed: list[dict[str, Any]]) -> pa.Table:
    """Append failed rows (null embedding) with ``error`` set; the framework moves them to
    ``rejects/`` and drops them from the output."""
    if failed:
        extra = pa.table(
            {
                "sample_id": pa.array([f["sample_id"] for f in failed], pa.string()),
                "model": pa.array([""] * len(failed), pa.string()),
                "embedding": pa.nulls(len(failed), out.schema.field("embedding").type),
            }
        )
        out = pa.concat_tables([out, extra.cast(out.schema)])
    errors = [None] * (out.num_rows - len(failed)) + [f["error"] for f in failed]
    details = [None] * (out.num_rows - len(failed)) + [f[ERROR_DETAIL] for f in failed]
    return out.append_column("error", pa.array(errors, pa.string())).append_column(
        ERROR_DETAIL, pa.array(details, pa.string())
    )
