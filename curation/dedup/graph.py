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

from curation.dedup.knn import TaskMap, local_map

LEIDEN_PART_EDGES = 4_000_000
"""Edges per Leiden part: connected components are packed into parts of about this size."""


def leiden(
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    sim: np.ndarray,
    *,
    resolution: float = 1.0,
    seed: int = 0,
    part_edges: int = LEIDEN_PART_EDGES,
    task_map: TaskMap = local_map,
) -> np.ndarray:
    """Leiden communities (modularity, edge weight = cosine) as int64 labels, renumbered in
    order of each community's smallest member; isolated items are singletons.

    Leiden communities are connected, so no community spans two connected components, and
    modularity splits into a sum over components once each part's resolution is scaled by
    its share of the total edge weight (resolution * m_part / m: the null-model term
    k_i k_j / 2m keeps the global m). Components are therefore packed into parts of about
    ``part_edges`` edges and each part solved on its own (through ``task_map``: in process
    or as Ray tasks) with the same objective as one global run. A component larger than
    ``part_edges`` is one part."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    labels = np.arange(n, dtype=np.int64)
    if len(src) == 0:
        return labels
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[src]
    comp_edges = np.bincount(edge_comp, minlength=comp.max() + 1)
    part_of_comp = _pack(comp_edges, part_edges)
    edge_part = part_of_comp[edge_comp]
    total = float(sim.sum())
    order = np.argsort(edge_part, kind="stable")
    cuts = np.flatnonzero(np.diff(edge_part[order])) + 1
    args = []
    for idx in np.split(order, cuts):
        s, d, w = src[idx], dst[idx], sim[idx]
        args.append((s, d, w, resolution * float(w.sum()) / total, seed))
    for nodes, member in task_map(_leiden_part, None, args):
        labels[nodes] = n + nodes[member]  # a part's community: its first member (+n: no clash)
    return canonical(labels)


def _pack(sizes: np.ndarray, limit: int) -> np.ndarray:
    """Part number of each component: consecutive components while the part holds < limit."""
    ends = np.cumsum(sizes)
    return ((ends - 1) // max(1, limit)).astype(np.int64) if len(sizes) else sizes


def _leiden_part(
    _: None, src: np.ndarray, dst: np.ndarray, sim: np.ndarray, resolution: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, index into nodes of each node's community's first member) for one part."""
    import igraph as ig

    nodes, local = np.unique(np.concatenate([src, dst]), return_inverse=True)
    edges = local.reshape(2, -1).T
    graph = ig.Graph(n=len(nodes), edges=edges, directed=False)
    ig.set_random_number_generator(random.Random(seed))
    try:
        parts = graph.community_leiden(
            objective_function="modularity",
            weights=sim.astype(float).tolist(),
            resolution=resolution,
            n_iterations=-1,  # until stable
        )
    finally:
        ig.set_random_number_generator(random)
    member = np.asarray(parts.membership, np.int64)
    _, first = np.unique(member, return_index=True)  # nodes are sorted: first = smallest
    return nodes, first[member]


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
