"""SemDeDup (Abbas et al. 2023) over L2-normalised embeddings: k-means, then dedup per cluster.

As in Meta's SemDeDup and NeMo Curator: spherical k-means (faiss, seeded) splits the items
into ``n_clusters``; inside each cluster members are ranked by cosine similarity to their
centroid, ascending ("keep hard examples": the item farthest from the centroid comes first),
and an item is removed when its cosine to an earlier item is > ``1 - eps``. One difference:
here the earlier item must itself be *kept* (greedy), so a chain a ~ b ~ c with a !~ c keeps
a and c; the reference implementations compare against every earlier item, kept or not.

Each kept item is the representative of its group; a removed item joins the group of the
earlier-kept item it is most similar to; group id = the representative's index. So within a
group the representative is the member farthest from the centroid. Exact copies (byte-equal
rows) are collapsed before clustering and always share a group, whatever ``eps``. Ties in
centroid similarity are broken by ``order`` (lower first, then item index).

Cost and memory: pairs are only compared inside a cluster, in blocks of ``block_rows`` rows
against ``block_rows`` kept items (at most ``block_rows**2`` float32 similarities live at
once, 64 MiB at the default), never n x n; time is O(sum over clusters of size * kept * d).
Near-duplicates that k-means puts into different clusters are missed (a known SemDeDup
trade-off; more clusters = faster but more such misses).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curation.dedup.graph import pairs as groups_to_pairs  # noqa: F401 - re-export
from curation.vectors.index import as_matrix, check_unit


@dataclass(frozen=True)
class SemDedupResult:
    """``semdedup``'s groups with the k-means assignment they were computed under."""

    groups: np.ndarray
    """int64 (n,): index of the group's kept item (``groups[i] == i`` iff ``i`` is kept)."""
    cluster: np.ndarray
    """int64 (n,): k-means cluster of each item."""
    centroid_sim: np.ndarray
    """float32 (n,): cosine similarity of each item to its cluster's centroid."""


def semdedup(
    vectors: np.ndarray,
    *,
    n_clusters: int,
    eps: float,
    seed: int = 0,
    niter: int = 20,
    order: np.ndarray | None = None,
    block_rows: int = 4096,
) -> np.ndarray:
    """SemDeDup group ids, int64 (n,): the index of each item's kept representative
    (module docstring). ``eps`` in (0, 1): duplicates have cosine > ``1 - eps``."""
    return semdedup_result(
        vectors,
        n_clusters=n_clusters,
        eps=eps,
        seed=seed,
        niter=niter,
        order=order,
        block_rows=block_rows,
    ).groups


def semdedup_result(
    vectors: np.ndarray,
    *,
    n_clusters: int,
    eps: float,
    seed: int = 0,
    niter: int = 20,
    order: np.ndarray | None = None,
    block_rows: int = 4096,
) -> SemDedupResult:
    """``semdedup`` plus each item's cluster and centroid similarity (for inspection/tuning)."""
    x, prio = _check(vectors, n_clusters, eps, niter, order, block_rows)
    n = len(x)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return SemDedupResult(empty, empty.copy(), np.zeros(0, np.float32))
    # Collapse exact copies; each unique row is represented by its first item in priority order.
    by_prio = np.lexsort((np.arange(n), prio))
    rows = x[by_prio].view(np.dtype((np.void, x.shape[1] * 4))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    rep = by_prio[first]  # (u,) item index of each unique row
    unique_of = np.empty(n, np.int64)
    unique_of[by_prio] = inverse.ravel()
    u = x[rep]  # (u, d)

    cluster_u, sim_u = _spherical_kmeans(u, min(n_clusters, len(u)), seed, niter)
    # Globally: by cluster, then centroid similarity ascending (farthest first), then priority.
    rank = np.lexsort((rep, prio[rep], sim_u, cluster_u))
    bounds = np.flatnonzero(np.diff(cluster_u[rank])) + 1
    parent_u = np.empty(len(u), np.int64)
    threshold = np.float64(1.0 - eps)
    for members in np.split(rank, bounds):
        local = _greedy_parents(u[members], threshold, block_rows)
        parent_u[members] = members[local]
    groups = rep[parent_u][unique_of]
    return SemDedupResult(groups, cluster_u[unique_of], sim_u[unique_of])


def _check(
    vectors: np.ndarray,
    n_clusters: int,
    eps: float,
    niter: int,
    order: np.ndarray | None,
    block_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    for name, value in (("n_clusters", n_clusters), ("niter", niter), ("block_rows", block_rows)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps: must be in (0, 1), got {eps!r}")
    x = as_matrix(vectors, "vectors") + np.float32(0.0)  # + 0.0 turns -0.0 into 0.0
    check_unit(x, "vectors")
    if order is None:
        return x, np.arange(len(x))
    prio = np.asarray(order)
    if prio.shape != (len(x),):
        raise ValueError(f"order: must have shape ({len(x)},), got {prio.shape}")
    if not np.issubdtype(prio.dtype, np.number) or not np.isfinite(prio).all():
        raise ValueError(f"order: must be finite numbers, got dtype {prio.dtype}")
    return x, prio


def _spherical_kmeans(
    x: np.ndarray, k: int, seed: int, niter: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster id (int64) and cosine to the (unit) centroid (float32) of each row of ``x``."""
    import faiss

    km = faiss.Kmeans(
        x.shape[1], k, niter=niter, seed=seed, spherical=True, min_points_per_centroid=1
    )
    km.train(x)
    sim, ids = km.index.search(x, 1)  # spherical => IndexFlatIP over unit centroids
    return ids[:, 0].astype(np.int64), sim[:, 0].astype(np.float32)


def _greedy_parents(x: np.ndarray, threshold: np.float64, block: int) -> np.ndarray:
    """Rows of ``x`` in processing order: parent[j] = j if kept, else the earlier kept row
    most similar to it (ties: the earliest). Row j is removed iff cos to a kept row > threshold."""
    m = len(x)
    parent = np.arange(m)
    kept = np.zeros(0, np.int64)
    for start in range(0, m, block):
        xb = x[start : start + block]  # (b, d)
        b = len(xb)
        best = np.full(b, -np.inf)
        arg = np.full(b, -1, np.int64)
        for c in range(0, len(kept), block):  # against rows kept in earlier blocks
            cols = kept[c : c + block]
            s = xb @ x[cols].T  # (b, c)
            j = s.argmax(axis=1)
            v = s[np.arange(b), j]
            better = v > best
            best[better], arg[better] = v[better], cols[j[better]]
        inner = xb @ xb.T  # (b, b), row j vs earlier rows of this block
        near = np.tril(inner > threshold, -1)
        keep_b = np.ones(b, bool)
        for j in np.flatnonzero((best > threshold) | near.any(axis=1)):
            cand = np.flatnonzero(near[j, :j] & keep_b[:j])
            if len(cand) and inner[j, cand].max() > best[j]:
                arg[j], best[j] = start + cand[inner[j, cand].argmax()], inner[j, cand].max()
            if best[j] > threshold:
                keep_b[j] = False
                parent[start + j] = arg[j]
        kept = np.concatenate([kept, start + np.flatnonzero(keep_b)])
    return parent
