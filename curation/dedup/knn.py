"""k-NN self-join for dedup: every item's K nearest neighbours among all items, in query shards.

``plan_knn`` prepares one read-only ``KnnPlan`` (the shared index); ``knn_shard`` answers a
contiguous range of queries against it and can run anywhere the plan is (in process, or in a
Ray task reading the plan from the object store); ``merge_edges`` turns the shards' directed
edges into the undirected edge list. Two engines:

* ``blocked`` (the CPU default): an IVF coarse quantizer trained by faiss k-means (seeded);
  items stored exact (float32), sorted by their nearest centroid ("cell"). Queries are items
  in that order, so a shard is a run of neighbouring cells. A shard groups its (query, probed
  cell) pairs by cell and scores each cell's members against all of its queries with one
  matrix product, keeping hits at or above the threshold. The candidates are exactly those of
  faiss ``IndexIVFFlat.search`` with the same quantizer and ``nprobe`` (a test checks it), but
  each cell's vectors are read once per shard instead of once per query: faiss's per-query
  scan is memory-bound at 1M x 512 (403 s for 100-NN on 2 cores), the blocked scan is BLAS.
  Below ``EXACT_MAX_N`` items there is one cell holding everything: an exact search.
* ``faiss``: any faiss index from ``curation.vectors.build_index`` (GPU, IVF-PQ + refine,
  HNSW, a factory string), serialised once into the plan and searched shard by shard.

Results: top-``k`` neighbours per query among those with cosine >= ``threshold`` (the same set
as top-``k`` first, threshold second), self excluded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from curation.vectors.index import as_matrix, build_index, check_unit, search

EXACT_MAX_N = 20_000
"""Below this many items the blocked engine is exact (one cell): n^2 d is then < 0.5 TFLOP."""
KMEANS_ITERATIONS = 10
KMEANS_POINTS_PER_LIST = 64
SHARD_QUERIES = 65_536
"""Queries per shard: big enough for large matrix products, small enough to spread out."""

Edges = tuple[np.ndarray, np.ndarray, np.ndarray]
TaskMap = Callable[[Callable[..., Any], Any, list[tuple]], Iterable[Any]]
"""``map(fn, shared, args)`` -> ``fn(shared, *a)`` for each ``a`` in ``args`` (any order of
execution, results in order). ``shared`` is sent once (e.g. ``ray.put``), not per call."""


def local_map(fn: Callable[..., Any], shared: Any, args: list[tuple]) -> Iterator[Any]:
    """The in-process ``TaskMap``."""
    return (fn(shared, *a) for a in args)


def blocked_nlist(n: int) -> int:
    """Cells for ``n`` items: 2*sqrt(n) as a power of two (balances the O(n * nlist)
    assignment, the O(n^2 * nprobe / nlist) scan and the O(nlist^2) k-means; 2048 at 1M)."""
    return int(2 ** round(math.log2(max(1.0, 2 * math.sqrt(n)))))


@dataclass(frozen=True)
class KnnPlan:
    """The shared index of one self-join. Row ``i`` of ``vectors`` is item ``order[i]``."""

    engine: str
    vectors: np.ndarray
    order: np.ndarray
    probes: np.ndarray | None = None
    """(n, nprobe) cells each row probes, nearest first (blocked; None = exact, one cell)."""
    bounds: np.ndarray | None = None
    """Rows of cell ``c`` are ``bounds[c]:bounds[c + 1]`` (blocked)."""
    centroids: np.ndarray | None = None
    """(nlist, d) unit cell centres (blocked, None = exact)."""
    index_bytes: np.ndarray | None = None
    """``faiss.serialize_index`` of the index (faiss engine); its ids are row numbers."""
    info: dict[str, Any] = field(default_factory=dict)

    def shards(self, size: int = SHARD_QUERIES) -> list[tuple[int, int]]:
        n = len(self.order)
        return [(s, min(s + size, n)) for s in range(0, n, size)]


def plan_knn(
    vectors: np.ndarray,
    *,
    index: str = "auto",
    nprobe: int = 16,
    seed: int = 0,
    use_gpu: bool | None = None,
    nlist: int | None = None,
) -> KnnPlan:
    """Prepare the shared index (``nlist``: cells of the blocked engine, None = by size).
    ``index``: ``auto`` (blocked on CPU, faiss on GPU),
    ``blocked``, ``exact`` (blocked, one cell), ``flat``, ``ivf``, ``ivfpq`` or a faiss
    factory string (the last four: faiss engine)."""
    import faiss

    from curation.vectors.index import _use_gpu

    x = as_matrix(vectors, "vectors")
    check_unit(x, "vectors")
    n, d = x.shape
    if index == "auto":
        index = "faiss-auto" if _use_gpu(use_gpu) else "blocked"
    if index in ("blocked", "exact"):
        if nlist is None:
            nlist = 1 if index == "exact" or n < EXACT_MAX_N else blocked_nlist(n)
        if index == "exact":
            nlist = 1
        if nlist == 1:
            order = np.arange(n, dtype=np.int64)
            info = {"engine": "blocked", "cells": 1, "nprobe": 1, "exact": True}
            return KnnPlan("blocked", x, order, None, np.array([0, n]), info=info)
        km = faiss.Kmeans(
            d,
            nlist,
            niter=KMEANS_ITERATIONS,
            seed=seed,
            max_points_per_centroid=KMEANS_POINTS_PER_LIST,
            spherical=True,
        )
        limit = KMEANS_POINTS_PER_LIST * nlist
        rows = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
        km.train(x[rows] if n > limit else x)
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(km.centroids)
        probe = min(nprobe, nlist)
        _, probes = quantizer.search(x, probe)
        order = np.argsort(probes[:, 0], kind="stable")
        xs = x[order]
        probes = probes[order].astype(np.int32)
        bounds = np.searchsorted(probes[:, 0], np.arange(nlist + 1)).astype(np.int64)
        sizes = np.diff(bounds)
        info = {
            "engine": "blocked",
            "cells": nlist,
            "nprobe": probe,
            "exact": False,
            "largest_cell": int(sizes.max()),
            "empty_cells": int((sizes == 0).sum()),
        }
        return KnnPlan("blocked", xs, order, probes, bounds, centroids=km.centroids, info=info)
    spec = None if index == "faiss-auto" else index
    built = build_index(x, spec=spec, seed=seed, nprobe=nprobe, use_gpu=use_gpu)
    from curation.vectors.index import is_gpu_index

    on_gpu = is_gpu_index(built)
    cpu = faiss.index_gpu_to_cpu(built) if on_gpu else built
    info = {"engine": "faiss", "index": type(cpu).__name__, "gpu": on_gpu, "nprobe": nprobe}
    return KnnPlan(
        "faiss", x, np.arange(n, dtype=np.int64), index_bytes=faiss.serialize_index(cpu), info=info
    )


def knn_shard(plan: KnnPlan, start: int, stop: int, k: int, threshold: float) -> Edges:
    """Directed edges (query item, neighbour item, cosine) for plan rows ``start:stop``."""
    if plan.engine == "faiss":
        rows, nbrs, sims = _faiss_shard(plan, start, stop, k)
    else:
        rows, nbrs, sims = _blocked_shard(plan, start, stop, k, threshold)
    keep = (nbrs >= 0) & (nbrs != rows) & (sims >= threshold)
    rows, nbrs, sims = rows[keep], nbrs[keep], sims[keep]
    rows, nbrs, sims = _top_k(rows, nbrs, sims, k)
    return plan.order[rows], plan.order[nbrs], sims.astype(np.float32)


_INDEXES: dict[int, Any] = {}  # per process: a Ray worker deserialises the index once


def _faiss_shard(plan: KnnPlan, start: int, stop: int, k: int) -> Edges:
    import faiss

    from curation.vectors.index import _to_gpu, _use_gpu

    key = id(plan.index_bytes)
    if key not in _INDEXES:
        _INDEXES.clear()
        index = faiss.deserialize_index(plan.index_bytes)
        _INDEXES[key] = _to_gpu(index) if _use_gpu(None) else index
    n = len(plan.order)
    sims, ids = search(_INDEXES[key], plan.vectors[start:stop], min(k + 1, n))
    rows = np.repeat(np.arange(start, stop), ids.shape[1])
    return rows, ids.ravel(), sims.ravel()


def _blocked_shard(plan: KnnPlan, start: int, stop: int, k: int, threshold: float) -> Edges:
    assert plan.bounds is not None
    q = plan.vectors[start:stop]
    probes = np.zeros((len(q), 1), np.int32) if plan.probes is None else plan.probes[start:stop]
    flat = probes.ravel()
    pair_order = np.argsort(flat, kind="stable")
    cells, first = np.unique(flat[pair_order], return_index=True)
    ends = np.append(first[1:], len(flat))
    rows_out, nbrs_out, sims_out = [], [], []
    for cell, a, b in zip(cells.tolist(), first.tolist(), ends.tolist(), strict=True):
        m0, m1 = int(plan.bounds[cell]), int(plan.bounds[cell + 1])
        if m1 == m0:
            continue
        qrows = pair_order[a:b] // probes.shape[1]
        sim = q[qrows] @ plan.vectors[m0:m1].T
        hit = sim >= threshold
        if m1 - m0 > k + 1 and hit.sum() > (k + 1) * len(qrows):
            # dense hits: the k + 1 best per query first (+1: the query itself may be one)
            best = np.argpartition(-sim, k + 1, axis=1)[:, : k + 1]
            hit = np.zeros_like(hit)
            np.put_along_axis(hit, best, True, axis=1)
            hit &= sim >= threshold
        r, c = np.nonzero(hit)
        rows_out.append(start + qrows[r])
        nbrs_out.append(m0 + c)
        sims_out.append(sim[r, c])
    if not rows_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(rows_out), np.concatenate(nbrs_out), np.concatenate(sims_out)


def _top_k(rows: np.ndarray, nbrs: np.ndarray, sims: np.ndarray, k: int) -> Edges:
    """At most ``k`` edges per row, highest similarity first (ties by neighbour)."""
    order = np.lexsort((nbrs, -sims, rows))
    rows, nbrs, sims = rows[order], nbrs[order], sims[order]
    if len(rows) == 0:
        return rows, nbrs, sims
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    keep = rank < k
    return rows[keep], nbrs[keep], sims[keep]


def merge_edges(parts: Iterable[Edges]) -> Edges:
    """Undirected edges (src < dst, each pair once, its highest similarity) from directed ones."""
    parts = list(parts)
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    a = np.concatenate([p[0] for p in parts]).astype(np.int64)
    b = np.concatenate([p[1] for p in parts]).astype(np.int64)
    sim = np.concatenate([p[2] for p in parts]).astype(np.float32)
    src, dst = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((-sim, dst, src))
    src, dst, sim = src[order], dst[order], sim[order]
    first = np.ones(len(src), bool)
    first[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    return src[first], dst[first], sim[first]


class ShardStore(Protocol):
    """Where k-NN shards put their edges (e.g. Parquet files in the run directory), so a
    task returns nothing big and an interrupted step resumes at the first missing shard."""

    def done(self, shard: int) -> bool: ...

    def write(self, shard: int, edges: Edges) -> None: ...

    def read(self, shard: int) -> Edges: ...


def _shard_task(
    plan: KnnPlan,
    shard: int,
    start: int,
    stop: int,
    k: int,
    threshold: float,
    store: ShardStore | None,
) -> Edges | None:
    edges = knn_shard(plan, start, stop, k, threshold)
    if store is None:
        return edges
    store.write(shard, edges)
    return None


def self_knn(
    vectors: np.ndarray,
    *,
    k: int,
    threshold: float,
    index: str = "auto",
    nprobe: int = 16,
    seed: int = 0,
    task_map: TaskMap = local_map,
    shard_queries: int = SHARD_QUERIES,
    progress: Callable[[int], None] | None = None,
    store: ShardStore | None = None,
) -> tuple[Edges, dict[str, Any]]:
    """Undirected k-NN edges with cosine >= ``threshold`` and the plan's description. With a
    ``store``, each shard writes its edges there (shards already stored are not recomputed)
    and the driver reads them back."""
    n = len(vectors)
    if n < 2:
        empty = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return empty, {"engine": "none"}
    plan = plan_knn(vectors, index=index, nprobe=nprobe, seed=seed)
    shards = plan.shards(shard_queries)
    todo = [i for i in range(len(shards)) if store is None or not store.done(i)]
    if progress and len(todo) < len(shards):
        progress(len(shards) - len(todo))
    args = [(i, *shards[i], k, threshold, store) for i in todo]
    parts = []
    for part in task_map(_shard_task, plan, args):
        if part is not None:
            parts.append(part)
        if progress:
            progress(1)
    if store is not None:
        parts = [store.read(i) for i in range(len(shards))]
    info = plan.info | {"shards": len(shards), "shards_resumed": len(shards) - len(todo)}
    return merge_edges(parts), info
