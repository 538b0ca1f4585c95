"""SemDeDup: planted near-duplicates, group properties, determinism, exact copies, errors."""

from __future__ import annotations

import numpy as np
import pytest

from curation.dedup.semdedup import groups_to_pairs, semdedup, semdedup_result


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted(
    seed: int = 0, d: int = 64, n_base: int = 60, n_single: int = 200, sigma: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """``n_base`` random unit directions, each with 1-4 noisy copies (cosine ~0.997 to it),
    plus ``n_single`` unrelated unit vectors: (float32 vectors, true group label)."""
    rng = np.random.default_rng(seed)
    base = _unit(rng.standard_normal((n_base, d)))
    vecs, truth = [], []
    for g, b in enumerate(base):
        k = int(rng.integers(1, 5))
        vecs += [b[None], _unit(b + sigma * rng.standard_normal((k, d)))]
        truth += [g] * (k + 1)
    vecs.append(_unit(rng.standard_normal((n_single, d))))
    truth += list(range(n_base, n_base + n_single))
    return np.concatenate(vecs).astype(np.float32), np.array(truth)


def pair_pr(groups: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    p, t = groups_to_pairs(groups), groups_to_pairs(truth)
    return len(p & t) / len(p), len(p & t) / len(t)


def reference(x: np.ndarray, res, eps: float) -> np.ndarray:
    """Brute force over whole clusters (full similarity matrix) under the same clustering."""
    n = len(x)
    groups = np.arange(n)
    for c in np.unique(res.cluster):
        idx = np.flatnonzero(res.cluster == c)
        idx = idx[np.lexsort((idx, res.centroid_sim[idx]))]
        s = x[idx] @ x[idx].T
        kept: list[int] = []
        for j in range(len(idx)):
            sims = [s[j, i] for i in kept]
            if sims and max(sims) > 1 - eps:
                groups[idx[j]] = idx[kept[int(np.argmax(sims))]]
            else:
                kept.append(j)
    return groups


def test_planted_precision_recall():
    x, truth = planted()
    groups = semdedup(x, n_clusters=20, eps=0.01, seed=0)
    precision, recall = pair_pr(groups, truth)
    # Measured: precision 1.000, recall 0.988 (329 of 333 true pairs; misses are planted
    # groups that k-means split across two clusters).
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)


def test_group_properties():
    x, _ = planted(seed=1)
    res = semdedup_result(x, n_clusters=20, eps=0.01, seed=3)
    g = res.groups
    assert g.dtype == np.int64 and g.shape == (len(x),)
    assert ((g >= 0) & (g < len(x))).all()
    assert (g[g] == g).all()  # a representative is kept: it is its own group
    assert (g != np.arange(len(x))).sum() > 50  # the planted duplicates were found
    for rep in np.unique(g):
        members = np.flatnonzero(g == rep)
        assert (res.cluster[members] == res.cluster[rep]).all()
        # keep hard examples: the representative is the member farthest from the centroid
        assert res.centroid_sim[rep] <= res.centroid_sim[members].min()
        # every removed member really is a duplicate of its representative
        others = members[members != rep]
        assert (x[others] @ x[rep] > 1 - 0.01).all()


@pytest.mark.parametrize("block_rows", [1, 5, 4096])
def test_matches_brute_force(block_rows):
    # sigma 0.02: pairs straddle 1 - eps, so chains (a ~ b ~ c, a !~ c) occur
    x, _ = planted(seed=2, n_base=40, n_single=50, sigma=0.02)
    eps = 0.02
    res = semdedup_result(x, n_clusters=6, eps=eps, seed=0, block_rows=block_rows)
    np.testing.assert_array_equal(res.groups, reference(x, res, eps))


def test_deterministic_and_seeded():
    x, _ = planted(seed=4)
    a = semdedup(x, n_clusters=20, eps=0.01, seed=7)
    b = semdedup(x.astype(np.float16), n_clusters=20, eps=0.01, seed=7)
    np.testing.assert_array_equal(a, semdedup(x, n_clusters=20, eps=0.01, seed=7))
    assert pair_pr(b, a)[0] >= 0.95  # float16 input: same answer up to rounding


def test_tiny_eps_groups_only_exact_copies():
    x, _ = planted(seed=5)
    copies = {3: 10, 200: 201, 7: 300}  # item -> copied-from
    x[list(copies)] = x[list(copies.values())]
    groups = semdedup(x, n_clusters=20, eps=1e-6)
    assert groups_to_pairs(groups) == {tuple(sorted(p)) for p in copies.items()}


def test_exact_copies_always_grouped_and_order_breaks_ties():
    x, _ = planted(seed=6, n_base=10, n_single=30)
    x[[5, 9, 20]] = x[12]
    groups = semdedup(x, n_clusters=4, eps=1e-9)
    assert set(groups[[5, 9, 12, 20]]) == {5}  # default priority: lowest index kept
    order = np.zeros(len(x))
    order[20] = -1.0
    groups = semdedup(x, n_clusters=4, eps=1e-9, order=order)
    assert set(groups[[5, 9, 12, 20]]) == {20}


def test_more_clusters_than_items_and_empty():
    x = _unit(np.random.default_rng(0).standard_normal((5, 8))).astype(np.float32)
    np.testing.assert_array_equal(semdedup(x, n_clusters=50, eps=0.01), np.arange(5))
    assert semdedup(np.zeros((0, 8), np.float32), n_clusters=3, eps=0.1).shape == (0,)


def test_groups_to_pairs():
    assert groups_to_pairs(np.array([4, 1, 4, 4, 1, 7])) == {(0, 2), (0, 3), (2, 3), (1, 4)}
    assert groups_to_pairs(np.arange(4)) == set()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_clusters": 0, "eps": 0.1}, "n_clusters.*0"),
        ({"n_clusters": 2, "eps": 0.0}, "eps.*0.0"),
        ({"n_clusters": 2, "eps": 1.5}, "eps.*1.5"),
        ({"n_clusters": 2, "eps": 0.1, "niter": 0}, "niter.*0"),
        ({"n_clusters": 2, "eps": 0.1, "order": np.zeros(3)}, r"order.*\(3,\)"),
    ],
)
def test_invalid_args_name_the_value(kwargs, match):
    x = _unit(np.random.default_rng(0).standard_normal((10, 8))).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        semdedup(x, **kwargs)


def test_rejects_unnormalised_and_non_float():
    x = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="not L2-normalised"):
        semdedup(x * 3, n_clusters=2, eps=0.1)
    with pytest.raises(ValueError, match="int64"):
        semdedup(np.ones((10, 8), np.int64), n_clusters=2, eps=0.1)
