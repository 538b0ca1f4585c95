"""Perceptual near-duplicates: every pair of pHashes within a Hamming radius, and their groups.

Hashes are the profiles table's ``phash`` column: uint64 ``int(str(imagehash.phash(img)), 16)``,
so bit 63 is the first bit of imagehash's hex string. They are packed big-endian into 8-byte
faiss binary codes, so code byte ``k`` is hex digits ``2k, 2k+1``; the Hamming distance does not
depend on the packing, only which bits multi-index hashing slices into substrings does.

Pairs are exact for every method: ``"flat"`` (``IndexBinaryFlat``, brute-force popcount in C,
O(n^2 / 2) work) or ``"mih"`` (``IndexBinaryMultiHash``: the 64 bits are cut into ``nhash``
disjoint ``b``-bit substrings; two codes within ``radius`` agree to within ``radius // nhash``
bits on at least one substring (pigeonhole), so probing every bucket within that many flips of
each query substring and verifying the full distance finds them all); ``"auto"`` (the default)
picks the one a cost model predicts is faster for n and radius (``choose_method``). faiss range
search keeps distances strictly below its threshold, so it is called with ``radius + 1``.

Codes are added to the index batch by batch and each batch queries the codes added so far,
keeping only earlier neighbours: each pair is found once and the flat scan does half the work.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MAX_RADIUS = 32  # half of the 64 bits: two unrelated hashes differ in ~32 bits
METHODS = ("auto", "flat", "mih")
# "auto" cost model, per query, fitted on one x86 core (faiss 1.15, AVX2): the flat scan takes
# ~0.85 ns per stored code (half of n on average); MIH ~3 us plus ~150 ns per unit of
# ``_mih_cost``. Both parallelise over queries alike, so the ratio holds with more threads.
FLAT_NS_PER_CODE = 0.85
MIH_NS_PER_QUERY, MIH_NS_PER_UNIT = 3000.0, 150.0


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss is installed with either extra
        raise ImportError("curation.dedup.phash needs faiss: install zfoundry[cpu] or [gpu]") from e
    return faiss


def _check(hashes: np.ndarray, radius: int, batch: int, method: str) -> None:
    if not isinstance(hashes, np.ndarray) or hashes.dtype != np.uint64 or hashes.ndim != 1:
        got = (hashes.dtype, hashes.shape) if isinstance(hashes, np.ndarray) else type(hashes)
        raise ValueError(f"hashes must be a 1-D uint64 numpy array, got {got}")
    if isinstance(radius, bool) or not isinstance(radius, int | np.integer):
        raise ValueError(f"radius must be an int in 0..{MAX_RADIUS}, got {radius!r}")
    if not 0 <= radius <= MAX_RADIUS:
        raise ValueError(f"radius must be in 0..{MAX_RADIUS}, got {radius}")
    if isinstance(batch, bool) or not isinstance(batch, int | np.integer) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def pack_codes(hashes: np.ndarray) -> np.ndarray:
    """(n + 1, 8) uint8: row i is ``hashes[i]`` big-endian (imagehash's hex order); the last row
    is zero padding, because faiss's multi-index hashing reads a whole 64-bit word from the
    first byte of each substring, i.e. up to 7 bytes past the code. Use ``codes[:n]``."""
    codes = np.zeros((len(hashes) + 1, 8), np.uint8)
    codes[:-1] = hashes.astype(">u8").view(np.uint8).reshape(-1, 8)
    return codes


def mih_params(n: int, radius: int) -> tuple[int, int, int]:
    """(nhash, b, nflip) for ``IndexBinaryMultiHash``, exact at ``radius``: nflip = radius // nhash.

    Picks the substring width b in 8..32 (nhash = 64 // b) that minimises a simple cost per
    query: buckets probed (nhash * sum_k<=nflip C(b, k)) times (1 + expected bucket size
    n / 2^b, uniform hashes). Roughly b ~ log2(n) plus a few bits at radius 8.
    """

    b = min(range(8, 33), key=lambda b: _mih_cost(n, radius, b))
    return 64 // b, b, radius // (64 // b)


def _mih_cost(n: int, radius: int, b: int) -> float:
    nhash = 64 // b
    probes = nhash * sum(math.comb(b, k) for k in range(radius // nhash + 1))
    return probes * (1.0 + n / 2.0**b)


def choose_method(n: int, radius: int) -> str:
    """``"mih"`` where the cost model above predicts it beats the flat scan, else ``"flat"``.

    With these constants MIH is chosen from n ~ 1e4 at radius 0-2, ~3e4 at radius 4, ~3e5 at
    radius 8, ~1e7 at radius 10-11, and never below 1e9 at radius >= 12.
    """
    b = mih_params(n, radius)[1]
    mih = MIH_NS_PER_QUERY + MIH_NS_PER_UNIT * _mih_cost(n, radius, b)
    return "mih" if mih < FLAT_NS_PER_CODE * n / 2 else "flat"


def _index(method: str, n: int, radius: int) -> Any:
    faiss = _faiss()
    if method == "auto":
        method = choose_method(n, radius)
    if method == "flat":
        return faiss.IndexBinaryFlat(64)
    nhash, b, nflip = mih_params(n, radius)
    index = faiss.IndexBinaryMultiHash(64, nhash, b)
    index.nflip = nflip
    return index


def phash_pairs_with_distance(
    hashes: np.ndarray, *, radius: int, batch: int = 65536, method: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j), i < j, with popcount(hashes[i] ^ hashes[j]) <= radius, and that distance.

    Returns ``(pairs (m, 2) int64, distances (m,) int32)`` sorted by (i, j). Exact for both
    methods; ``batch`` only bounds the memory of one faiss range search. Beware that m grows
    quadratically with repeated hashes (k identical hashes give k(k-1)/2 pairs).
    """
    _check(hashes, radius, batch, method)
    n = len(hashes)
    codes = pack_codes(hashes)
    index = _index(method, n, radius)
    firsts, seconds, dists = [], [], []
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        index.add(codes[start:stop])  # index holds codes[:stop]; ids are positions
        lims, dis, ids = index.range_search(codes[start:stop], radius + 1)
        query = start + np.repeat(np.arange(stop - start), np.diff(lims).astype(np.int64))
        earlier = ids < query  # drops self-matches, keeps each pair once
        firsts.append(ids[earlier].astype(np.int64))
        seconds.append(query[earlier])
        dists.append(dis[earlier].astype(np.int32))
    if not firsts:
        return np.empty((0, 2), np.int64), np.empty(0, np.int32)
    i, j, d = np.concatenate(firsts), np.concatenate(seconds), np.concatenate(dists)
    order = np.lexsort((j, i))
    return np.stack([i[order], j[order]], axis=1), d[order]


def phash_pairs(
    hashes: np.ndarray, *, radius: int, batch: int = 65536, method: str = "auto"
) -> np.ndarray:
    """(m, 2) int64 pairs i < j within Hamming ``radius``; see ``phash_pairs_with_distance``."""
    return phash_pairs_with_distance(hashes, radius=radius, batch=batch, method=method)[0]


def phash_groups(
    hashes: np.ndarray, *, radius: int, batch: int = 65536, method: str = "auto"
) -> np.ndarray:
    """(n,) int64 connected-component id of each hash under "within ``radius``": the smallest
    index in its component (a singleton's id is its own index).

    Identical hashes are collapsed before the search, so repeats cost nothing here. Components
    are transitive: a chain a~b~c groups a with c even if they are further apart than radius.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _check(hashes, radius, batch, method)
    n = len(hashes)
    unique, inverse = np.unique(hashes, return_inverse=True)
    pairs = phash_pairs(unique, radius=radius, batch=batch, method=method)
    ones = np.ones(len(pairs), np.int8)
    graph = coo_matrix((ones, (pairs[:, 0], pairs[:, 1])), shape=(len(unique), len(unique)))
    n_comp, comp = connected_components(graph, directed=False)
    label = comp[inverse.reshape(-1)]
    smallest = np.full(n_comp, n, np.int64)
    np.minimum.at(smallest, label, np.arange(n, dtype=np.int64))
    return smallest[label]
