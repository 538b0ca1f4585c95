"""Exploring a pool through its embedding index: distributional voids and failure neighbours.

Pure functions over numpy arrays and a faiss index built by ``curation.vectors.index`` (inner
product over L2-normalised CLIP embeddings, so similarities are cosines). Item positions are
the index's ids (row order of the vectors it was built from).

* ``voids``: for each concept (a text embedding), how many pool items sit within ``threshold``
  cosine among its k nearest — concepts the pool barely covers come first.
* ``nearest_to_failures`` + ``prune_list``: pool items nearest to known failure cases (e.g.
  embeddings of bad generations), as a deduplicated Arrow table of sample_ids to prune.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curation.vectors.index import as_matrix, check_unit, search
from infra.tables import PRUNE

if TYPE_CHECKING:
    import faiss

PRUNE_SCHEMA = PRUNE
"""One row per pool sample to prune (the ``prune`` table contract in infra.tables): its
closest failure case, cosine, and its rank among that failure's neighbours (0 = nearest)."""


def _queries(
    index: faiss.Index, vectors: np.ndarray, names: Sequence[str], what: str
) -> np.ndarray:
    if index.ntotal == 0:
        raise ValueError("index: holds no vectors (ntotal=0)")
    x = as_matrix(vectors, f"{what}_vectors", dim=index.d)
    check_unit(x, f"{what}_vectors")
    if len(names) != len(x):
        raise ValueError(f"{what}_names: need one per vector ({len(x)}), got {len(names)}")
    dup = sorted(n for n, c in Counter(names).items() if c > 1)
    if dup:
        raise ValueError(f"{what}_names: must be unique, got duplicates {dup[:5]}")
    return x


def _check_k(k: Any) -> None:
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k: must be an integer >= 1, got {k!r}")


def _check_threshold(threshold: Any) -> None:
    real = isinstance(threshold, int | float | np.floating) and not isinstance(threshold, bool)
    if not real or not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold: must be a cosine in [-1, 1], got {threshold!r}")


def voids(
    index: faiss.Index,
    concept_vectors: np.ndarray,
    concept_names: Sequence[str],
    *,
    threshold: float,
    k: int = 100,
) -> list[dict[str, Any]]:
    """Per concept: ``count`` of its k nearest pool items with cosine >= ``threshold``
    (``saturated`` = all k were, so count is a lower bound), ``max_sim`` and
    ``mean_top10_sim`` (mean of the best min(10, k)). Sorted by count then max_sim ascending,
    then name: the sparsest concepts ("distributional voids") first.
    """
    _check_k(k)
    _check_threshold(threshold)
    x = _queries(index, concept_vectors, concept_names, "concept")
    sims, ids = search(index, x, k)
    rows = []
    for name, s, i in zip(concept_names, sims, ids, strict=True):
        s = s[i >= 0].astype(np.float64)  # best first; -1 ids are missing neighbours
        count = int((s >= threshold).sum())
        rows.append(
            {
                "concept": name,
                "count": count,
                "saturated": count == k,
                "max_sim": float(s[0]) if s.size else float("-inf"),
                "mean_top10_sim": float(s[:10].mean()) if s.size else float("-inf"),
            }
        )
    return sorted(rows, key=lambda r: (r["count"], r["max_sim"], r["concept"]))


def nearest_to_failures(
    index: faiss.Index,
    failure_vectors: np.ndarray,
    failure_names: Sequence[str],
    *,
    k: int,
    threshold: float | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{failure, rank, item_index, sim}`` for each failure's k nearest pool items
    (rank 0 = nearest; only sim >= ``threshold`` when given), in failure then rank order."""
    _check_k(k)
    if threshold is not None:
        _check_threshold(threshold)
    x = _queries(index, failure_vectors, failure_names, "failure")
    sims, ids = search(index, x, k)
    rows = []
    for name, s, i in zip(failure_names, sims, ids, strict=True):
        keep = (i >= 0) & (s >= threshold if threshold is not None else True)
        for rank in np.flatnonzero(keep):
            rows.append(
                {
                    "failure": name,
                    "rank": int(rank),
                    "item_index": int(i[rank]),
                    "sim": float(s[rank]),
                }
            )
    return rows


def prune_list(rows: Sequence[dict[str, Any]], item_ids: Sequence[str]) -> pa.Table:
    """``nearest_to_failures`` rows -> a ``PRUNE_SCHEMA`` table: ``item_index`` mapped through
    ``item_ids`` (the pool's sample_ids in index order), one row per sample_id keeping its
    highest sim (ties: lower rank, then failure name), sorted by sim descending then sample_id.
    """
    best: dict[str, tuple[np.float32, int, str]] = {}
    for r in rows:
        i = r["item_index"]
        if not 0 <= i < len(item_ids):
            raise ValueError(f"rows: item_index must be in [0, {len(item_ids)}), got {i!r}")
        sid, cand = str(item_ids[i]), (np.float32(r["sim"]), int(r["rank"]), str(r["failure"]))
        old = best.get(sid)
        if old is None or (-cand[0], cand[1], cand[2]) < (-old[0], old[1], old[2]):
            best[sid] = cand
    order = sorted(best, key=lambda sid: (-best[sid][0], sid))
    return pa.table(
        {
            "sample_id": pa.array(order, pa.string()),
            "failure": pa.array([best[s][2] for s in order], pa.string()),
            "sim": pa.array([best[s][0] for s in order], pa.float32()),
            "rank": pa.array([best[s][1] for s in order], pa.int32()),
        },
        schema=PRUNE_SCHEMA,
    )
