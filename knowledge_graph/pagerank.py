"""PageRank over an edge list as CSR arrays: integer ids, numba kernels, no Python per edge.

``in_csr`` groups the edges by destination with a counting sort (O(E), no argsort of E
items); ``pagerank`` runs the power iteration

    p' = d * A^T (p / outdeg) + (d * dangling(p) + 1 - d) / n

where ``dangling(p)`` is the mass on nodes without out-links, spread uniformly (as networkx
and igraph do), until the L1 change ``|p' - p|_1 < tol``. Each iteration is one parallel
pass over the in-links (numba ``prange``, float64 sums) with no weights array: the
transition matrix is implicit in ``p / outdeg``. The 7M-node / 160M-edge figures are in
docs/benchmarks.md (``bench/kg_scale.py``). cuGraph is used when ``use_gpu`` allows it and
RAPIDS is installed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numba
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PageRank:
    scores: np.ndarray
    """float64, one per node, sums to 1."""
    iterations: int
    converged: bool
    l1_change: float
    """``|p' - p|_1`` at the last iteration."""
    backend: str


@numba.njit(cache=True)
def _fill(dst: np.ndarray, src: np.ndarray, starts: np.ndarray, out: np.ndarray) -> None:
    pos = starts.copy()
    for e in range(len(dst)):
        d = dst[e]
        out[pos[d]] = src[e]
        pos[d] += 1


def in_csr(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr int64 (n+1,), indices int32 (E,)): in-neighbours of node i are
    ``indices[indptr[i]:indptr[i+1]]``, in edge order. Counting sort by ``dst``."""
    src, dst = _ids(src, "src", n), _ids(dst, "dst", n)
    if len(src) != len(dst):
        raise ValueError(f"src and dst: lengths differ ({len(src)} vs {len(dst)})")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    indices = np.empty(len(src), np.int32)
    _fill(dst, src, indptr[:-1], indices)
    return indptr, indices


def _ids(a: np.ndarray, name: str, n: int) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: must be a 1-D integer array, got {a.dtype} {a.shape}")
    if n >= 2**31:
        raise ValueError(f"n: at most 2^31 - 1 nodes (int32 ids), got {n}")
    if len(a) and (a.min() < 0 or a.max() >= n):
        raise ValueError(f"{name}: ids must be in [0, {n}), got [{a.min()}, {a.max()}]")
    return a.astype(np.int32, copy=False)


@numba.njit(parallel=True, cache=True)
def _step(
    indptr: np.ndarray,
    indices: np.ndarray,
    x: np.ndarray,
    p: np.ndarray,
    out: np.ndarray,
    damping: float,
    base: float,
) -> float:
    """out = damping * A^T x + base; returns |out - p|_1."""
    n = len(out)
    change = 0.0
    for i in numba.prange(n):
        s = 0.0
        for e in range(indptr[i], indptr[i + 1]):
            s += x[indices[e]]
        v = damping * s + base
        out[i] = v
        change += abs(v - p[i])
    return change


def pagerank(
    src: np.ndarray,
    dst: np.ndarray,
    n: int,
    *,
    damping: float = 0.85,
    tol: float = 1e-10,
    max_iter: int = 1000,
    csr: tuple[np.ndarray, np.ndarray] | None = None,
    use_gpu: bool | None = None,
) -> PageRank:
    """PageRank of ``n`` nodes over directed edges ``src -> dst`` (duplicates count twice;
    build the graph without them). ``csr``: a precomputed ``in_csr(src, dst, n)``."""
    if not 0.0 <= damping < 1.0:
        raise ValueError(f"damping: must be in [0, 1), got {damping}")
    if tol <= 0:
        raise ValueError(f"tol: must be > 0, got {tol}")
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    if _cugraph_ok(use_gpu):
        touched = np.zeros(n, bool)
        touched[np.asarray(src)] = touched[np.asarray(dst)] = True
        if touched.all():
            return _pagerank_cugraph(src, dst, n, damping, tol, max_iter)
        # cuGraph only knows vertices that have edges; their dangling mass would be spread
        # over fewer nodes than ours, so graphs with isolated nodes stay on the CPU kernel
        log.info("PageRank on CPU: %d isolated nodes", int((~touched).sum()))
    indptr, indices = csr if csr is not None else in_csr(src, dst, n)
    outdeg = np.bincount(_ids(src, "src", n), minlength=n).astype(np.float64)
    dangling = outdeg == 0
    inv = np.divide(1.0, outdeg, out=np.zeros(n), where=~dangling)
    p = np.full(n, 1.0 / n)
    nxt = np.empty(n)
    change, it = np.inf, 0
    while it < max_iter:
        it += 1
        x = p * inv
        base = (damping * p[dangling].sum() + 1.0 - damping) / n
        change = _step(indptr, indices, x, p, nxt, damping, base)
        p, nxt = nxt, p
        if change < tol:
            break
    p /= p.sum()  # rounding only: the iteration preserves the total
    return PageRank(p, it, bool(change < tol), float(change), "numba")


def _cugraph_ok(use_gpu: bool | None) -> bool:
    if use_gpu is False:
        return False
    try:
        import cudf  # noqa: F401
        import cugraph  # noqa: F401
    except ImportError:
        if use_gpu:
            raise ImportError("use_gpu=True needs RAPIDS cugraph + cudf") from None
        return False
    return True


def _pagerank_cugraph(
    src: np.ndarray, dst: np.ndarray, n: int, damping: float, tol: float, max_iter: int
) -> PageRank:  # pragma: no cover - needs a GPU with RAPIDS
    import cudf
    import cugraph

    graph = cugraph.Graph(directed=True)
    frame = cudf.DataFrame({"src": np.asarray(src), "dst": np.asarray(dst)})
    graph.from_cudf_edgelist(frame, source="src", destination="dst", renumber=False)
    # every vertex has an edge here (checked by the caller); cuGraph's tol is per vertex
    res = cugraph.pagerank(graph, alpha=damping, tol=tol / n, max_iter=max_iter)
    p = np.zeros(n)
    p[res["vertex"].to_numpy()] = res["pagerank"].to_numpy()
    return PageRank(p / p.sum(), max_iter, True, float("nan"), "cugraph")
