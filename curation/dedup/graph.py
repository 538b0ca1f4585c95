"""Semantic dedup by proximity graph: k-NN edges above a cosine threshold -> Leiden.

The Z-Image report's method (section 2.2): every item's K nearest neighbours (faiss), edges
kept where cosine >= threshold, communities by Leiden (igraph, modularity objective, seeded)
- each community is one duplicate group. Unlike connected components, Leiden does not chain
a -> b -> c into one group when a and c are far apart. ``range_groups`` is the SD3-style
baseline: exact range search, groups formed greedily in item order.
"""

from __future__ import annotations

import random

import numpy as np

from curation.vectors import build_index, search


def knn_edges(
    vectors: np.ndarray,
    *,
    k: int,
    threshold: float,
    spec: str | None = None,
    seed: int = 0,
    batch: int = 16384,
    nprobe: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges (src < dst, each once) between each item and those of its ``k``
    nearest neighbours with cosine >= ``threshold``: (src int64, dst int64, sim float32)."""
    n = len(vectors)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    index = build_index(vectors, spec=spec, seed=seed, nprobe=nprobe)
    srcs, dsts, sims = [], [], []
    for start in range(0, n, batch):
        q = vectors[start : start + batch]
        sim, ids = search(index, q, min(k + 1, n))  # +1: the item itself comes back first
        rows = np.repeat(np.arange(start, start + len(q)), ids.shape[1]).reshape(ids.shape)
        keep = (ids >= 0) & (ids != rows) & (sim >= threshold)
        a, b = rows[keep], ids[keep]
        srcs.append(np.minimum(a, b))
        dsts.append(np.maximum(a, b))
        sims.append(sim[keep])
    src, dst, sim = np.concatenate(srcs), np.concatenate(dsts), np.concatenate(sims)
    key = src * n + dst
    order = np.lexsort((-sim, key))  # per pair keep the highest similarity seen
    key, src, dst, sim = key[order], src[order], dst[order], sim[order]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    return src[first], dst[first], sim[first].astype(np.float32)


def leiden(
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    sim: np.ndarray,
    *,
    resolution: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Leiden communities (modularity, edge weight = cosine) as int64 labels, renumbered in
    order of each community's smallest member; isolated items are singletons."""
    import igraph as ig

    graph = ig.Graph(n=n, edges=np.column_stack([src, dst]), directed=False)
    ig.set_random_number_generator(random.Random(seed))
    try:
        parts = graph.community_leiden(
            objective_function="modularity",
            weights=sim.astype(float).tolist() if len(sim) else None,
            resolution=resolution,
            n_iterations=-1,  # until stable
        )
    finally:
        ig.set_random_number_generator(random)
    return canonical(np.asarray(parts.membership, np.int64))


def range_groups(vectors: np.ndarray, *, threshold: float, batch: int = 4096) -> np.ndarray:
    """SD3's baseline: exact range search at ``threshold``; in item order, an item not yet
    removed keeps its group and removes every item within range. Labels as in ``leiden``."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    group = np.full(len(x), -1, np.int64)
    for start in range(0, len(x), batch):
        lims, _, ids = index.range_search(x[start : start + batch], float(threshold))
        for row in range(min(batch, len(x) - start)):
            i = start + row
            if group[i] >= 0:
                continue
            group[i] = i
            near = ids[lims[row] : lims[row + 1]]
            near = near[(near != i)]
            free = near[group[near] < 0]
            group[free] = i
    return canonical(group)


def canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel groups 0..G-1 in order of their smallest member (deterministic ids)."""
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    remap = np.empty(len(first), np.int64)
    remap[order] = np.arange(len(first))
    return remap[np.unique(labels, return_inverse=True)[1]]


def pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """All unordered pairs (i < j) sharing a label: for pairwise precision / recall."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels: must be 1-D, got shape {labels.shape}")
    out: set[tuple[int, int]] = set()
    order = np.argsort(labels, kind="stable")  # members of a group in increasing index
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        if len(members) > 1:
            i, j = np.triu_indices(len(members), k=1)
            out.update(zip(members[i].tolist(), members[j].tolist(), strict=True))
    return out


def pair_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pairwise precision, recall and F1 of duplicate pairs."""
    p, t = pairs(predicted), pairs(truth)
    tp = len(p & t)
    precision = tp / len(p) if p else 1.0
    recall = tp / len(t) if t else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "pairs": len(p),
        "true_pairs": len(t),
    }
