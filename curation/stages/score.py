"""The score stage: quality and safety heads on the stored CLIP embeddings -> ``scores``.

Every head reads the embedding computed once by ``embed``; nothing is decoded again.
``clip_score`` is the cosine of a sample's image and alt-caption embeddings (null without a
caption). A head that is not configured leaves its column null rather than inventing a
score; each configured head's version (a hash of its weights) is stored next to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from infra.config import Location, require
from infra.stage import Stage
from infra.tables import SCORES, embedding_matrix

HEAD_FIELDS = {"aesthetic": "aesthetic", "aigc": "aigc_prob", "nsfw": "nsfw_prob"}


@dataclass(kw_only=True)
class ScoreStage(Stage):
    """Heads over ``vectors`` (+ ``text_vectors`` for clip_score)."""

    name: ClassVar[str] = "score"
    input_table: ClassVar[str] = "vectors"
    output_table: ClassVar[str] = "scores"
    side_lookups: ClassVar[dict[str, tuple[str, ...]]] = {"text_vectors": ("embedding",)}

    aesthetic: Location | None = None
    """Aesthetic head: a zfoundry head file, or LAION's published state dict (.pth)."""
    aigc: Location | None = None
    """AI-generated-image head (UnivFD linear probe): zfoundry file or published ``fc`` weights."""
    nsfw: Location | None = None
    """NSFW head (MLP classifier): a zfoundry head file."""
    clip_model: str = ""
    """The run's CLIP model (filled from vectors/_settings.json by the score step)."""
    pretrained: str | None = None
    """The run's CLIP weights (filled from vectors/_settings.json by the score step)."""
    batch_rows: int = 4096
    """Rows per batch."""
    _heads: dict[str, tuple[Any, Any, str]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        require(self.batch_rows >= 1, "batch_rows", self.batch_rows, "must be >= 1")
        for name in HEAD_FIELDS:  # a missing head fails when the config loads, not mid-run
            path = getattr(self, name)
            if path is not None and "://" not in path:
                require(os.path.isfile(path), name, str(path), "must be an existing head file")

    def setup(self) -> None:
        for name in HEAD_FIELDS:
            path = getattr(self, name)
            if path is not None:
                self._heads[name] = _load(name, path)

    def process_batch(self, table: pa.Table) -> pa.Table:
        import torch

        from curation.heads import check_contract

        images = embedding_matrix(table.column("embedding"))
        model, weights = run_contract(self.clip_model, self.pretrained)
        out: dict[str, Any] = {"sample_id": table.column("sample_id")}
        for name, column in HEAD_FIELDS.items():
            version = None
            values = pa.nulls(table.num_rows, pa.float64())
            if name in self._heads and len(images):
                head, contract, version = self._heads[name]
                check_contract(contract, model, weights, images.shape[1], normalized=True)
                with torch.inference_mode():
                    scores = head.predict(torch.from_numpy(images)).float().numpy()
                values = pa.array(scores.reshape(-1).astype(np.float64))
            out[column] = values
            out[f"{name}_version"] = pa.array([version] * table.num_rows, pa.string())
        out["clip_score"] = _cosines(images, table.column("text_vectors.embedding"))
        return pa.table(out).select(SCORES.names)


def run_contract(clip_model: str, pretrained: str | None) -> tuple[str, str]:
    """(model, weights) naming a run's embeddings in head contracts, as vectors.model does."""
    from curation.clip import model_id

    model, _, weights = model_id(clip_model, pretrained).partition(":")
    return model, weights


def _load(name: str, path: str):
    """A zfoundry head file, or the published checkpoint layout with its published contract."""
    from curation.heads import LAION_AESTHETIC_CONTRACT, UNIVFD_CONTRACT, load_head

    published = {"aesthetic": LAION_AESTHETIC_CONTRACT, "aigc": UNIVFD_CONTRACT}
    try:
        head, contract, meta = load_head(path, name=name)
    except ValueError as err:
        if "not a zfoundry head file" not in str(err) or name not in published:
            raise
        head, contract, meta = load_head(path, name=name, contract=published[name])
    return head, contract, meta["version"]


def _cosines(images: np.ndarray, captions: pa.ChunkedArray) -> pa.Array:
    arr = captions.combine_chunks()
    valid = np.asarray(arr.is_valid())
    sims = np.full(len(images), np.nan)
    if valid.any():
        text = embedding_matrix(arr.filter(arr.is_valid()))
        sims[valid] = np.sum(images[valid] * text, axis=1)
    return pa.array(sims, pa.float64(), mask=~valid)
