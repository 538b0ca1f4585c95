"""Vector engine retrieval: index choice, exact/IVF search vs brute force, persistence and
cache, and the explorations (voids, failure neighbours -> prune list)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curation.vectors import (
    PRUNE_SCHEMA,
    IndexCache,
    build_index,
    choose_index_spec,
    choose_nlist,
    default_nprobe,
    get_index_spec,
    load_index,
    nearest_to_failures,
    prune_list,
    save_index,
    search,
    voids,
)

faiss = pytest.importorskip("faiss")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _random(n: int, d: int, seed: int) -> np.ndarray:
    return _unit(np.random.default_rng(seed).standard_normal((n, d)))


def _clustered(n: int, d: int, seed: int, clusters: int = 200) -> np.ndarray:
    """Unit vectors around random centres: embeddings are clustered, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((clusters, d)))
    return _unit(centres[rng.integers(0, clusters, n)] + 0.25 * rng.standard_normal((n, d)))


def _brute_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


def _near(v: np.ndarray, scale: float, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _unit(v[None, :] + scale * rng.standard_normal((count, v.shape[0])))


# ---------------------------------------------------------------- specs


def test_choose_index_spec_thresholds():
    assert choose_index_spec(1_000, 512) == "Flat"
    assert choose_index_spec(99_999, 512) == "Flat"
    assert choose_index_spec(500_000, 512) == "IVF2048,Flat"  # 4*sqrt(5e5) = 2828 -> 2^11
    assert choose_index_spec(20_000_000, 512) == "IVF16384,PQ64np,RFlat"
    assert choose_index_spec(20_000_000, 768) == "IVF16384,PQ64np,RFlat"
    assert choose_index_spec(10**12, 32) == "IVF65536,PQ8np,RFlat"  # nlist capped
    for n in (100_000, 1_000_000, 3_999_999):
        nlist = choose_nlist(n)
        assert nlist & (nlist - 1) == 0 and 0.5 <= nlist / (4 * n**0.5) <= 2
    with pytest.raises(ValueError, match="dim"):
        choose_index_spec(10, 0)


def test_get_index_spec_registry_and_passthrough():
    assert get_index_spec("auto", 1_000, 64) == "Flat"
    assert get_index_spec("ivf", 20_000, 64) == "IVF512,Flat"
    assert get_index_spec("IVF64,Flat", 5, 64) == "IVF64,Flat"
    with pytest.raises(ValueError, match="'NotAnIndex'"):
        get_index_spec("NotAnIndex", 1_000, 64)


def test_default_nprobe_is_clamped():
    assert [default_nprobe(n) for n in (8, 64, 512, 2048, 65536)] == [8, 16, 64, 256, 256]


# ---------------------------------------------------------------- search


def test_flat_search_returns_the_exact_top_k():
    x = _random(2000, 32, seed=1)
    q = _random(50, 32, seed=2)
    index = build_index(x, use_gpu=False)
    sims, ids = search(index, q, 10, batch_size=7)  # batches of 7 must not change anything
    assert sims.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (50, 10)
    np.testing.assert_array_equal(ids, _brute_topk(x, q, 10))
    np.testing.assert_allclose(sims, np.take_along_axis(q @ x.T, ids, axis=1), atol=1e-5)


def test_ivf_recall_at_10_vs_brute_force():
    x = _clustered(20_000, 32, seed=3)
    rng = np.random.default_rng(4)
    q = _unit(x[rng.choice(len(x), 300, replace=False)] + 0.05 * rng.standard_normal((300, 32)))
    spec = f"IVF{choose_nlist(len(x))},Flat"
    index = build_index(x, spec=spec, use_gpu=False)
    assert faiss.extract_index_ivf(index).nprobe == default_nprobe(choose_nlist(len(x)))
    _, ids = search(index, q, 10)
    truth = _brute_topk(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])
    assert recall >= 0.9, recall


def test_planted_neighbour_comes_first_and_missing_are_minus_one():
    x = _random(3000, 32, seed=5)
    index = build_index(x, use_gpu=False)
    picks = [0, 17, 2999]
    q = _unit(x[picks] + 0.01 * np.random.default_rng(6).standard_normal((3, 32)))
    sims, ids = search(index, q, 5)
    assert ids[:, 0].tolist() == picks and (sims[:, 0] > 0.99).all()
    small = build_index(x[:3], use_gpu=False)
    sims, ids = search(small, q, 5)
    assert (ids[:, 3:] == -1).all() and np.isneginf(sims[:, 3:]).all()


def test_build_index_rejects_unnormalised_rows_with_their_count():
    x = _random(100, 16, seed=7)
    x[[3, 50, 99]] *= 1.5
    with pytest.raises(ValueError, match=r"3 of 100 rows are not L2-normalised.*row 3"):
        build_index(x, use_gpu=False)
    with pytest.raises(ValueError, match="shape"):
        build_index(x[0], use_gpu=False)
    with pytest.raises(ValueError, match="nlist=64 needs >= nlist rows, got 10"):
        build_index(_random(10, 16, 0), spec="IVF64,Flat", use_gpu=False)


def test_float16_input_matches_float32():
    x = _random(500, 32, seed=8)
    q = _random(20, 32, seed=9)
    half = x.astype(np.float16)
    _, ids16 = search(build_index(half, use_gpu=False), q, 5)
    np.testing.assert_array_equal(ids16, _brute_topk(half.astype(np.float32), q, 5))


def test_ivf_build_is_deterministic_for_a_seed():
    x = _clustered(6000, 32, seed=10)
    q = _random(100, 32, seed=11)
    spec = "IVF64,Flat"
    runs = [search(build_index(x, spec=spec, seed=s, use_gpu=False), q, 10) for s in (5, 5, 6)]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    indexes = [build_index(x, spec=spec, seed=s, use_gpu=False) for s in (5, 6)]
    a, b = (faiss.extract_index_ivf(i).quantizer.reconstruct_n(0, 64) for i in indexes)
    assert not np.array_equal(a, b)  # the seed matters, so the equality above means something


def test_ivfpq_refine_builds_and_reranks_exactly():
    x = _clustered(8000, 32, seed=12)
    q = x[:20]
    index = build_index(x, spec="IVF16,PQ8x4np,RFlat", use_gpu=False)
    sims, ids = search(index, q, 5)
    assert ids[:, 0].tolist() == list(range(20))
    np.testing.assert_allclose(sims, np.take_along_axis(q @ x.T, ids, axis=1), atol=1e-5)


# ---------------------------------------------------------------- persistence


def test_save_load_round_trip_gives_identical_results(tmp_path):
    x = _clustered(4000, 32, seed=13)
    q = _random(30, 32, seed=14)
    index = build_index(x, spec="IVF32,Flat", use_gpu=False, nprobe=3)
    save_index(index, tmp_path / "i.faiss")
    loaded = load_index(tmp_path / "i.faiss", use_gpu=False)
    assert faiss.extract_index_ivf(loaded).nprobe == 3
    for a, b in zip(search(index, q, 10), search(loaded, q, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["i.faiss"]  # no temp file left
    with pytest.raises(FileNotFoundError, match=r"nope\.faiss"):
        load_index(tmp_path / "nope.faiss")


def test_index_cache_rebuilds_only_when_the_key_changes(tmp_path):
    x = _random(300, 16, seed=15)
    builds = []

    def loader():
        builds.append(1)
        return x

    cache = IndexCache(tmp_path / "idx", use_gpu=False)
    first = cache.get_or_build(loader, "fp1", "clip-b32")
    meta = cache.meta()
    assert meta["fingerprint"] == "fp1" and meta["model"] == "clip-b32"
    assert (meta["spec"], meta["n"], meta["dim"]) == ("Flat", 300, 16)
    (tmp_path / "idx" / "index.faiss.tmp-leftover").write_bytes(b"half-written")
    (tmp_path / "idx" / "index.json.tmp-leftover").write_text("{")
    again = cache.get_or_build(loader, "fp1", "clip-b32")
    assert len(builds) == 1
    for a, b in zip(search(first, x[:5], 3), search(again, x[:5], 3), strict=True):
        np.testing.assert_array_equal(a, b)
    cache.get_or_build(loader, "fp2", "clip-b32")
    cache.get_or_build(loader, "fp2", "clip-l14")
    assert len(builds) == 3 and cache.meta()["model"] == "clip-l14"
    cache.get_or_build(loader, "fp2", "clip-l14")
    assert len(builds) == 3
    (tmp_path / "idx" / "index.faiss").write_bytes(b"corrupt")
    assert cache.get_or_build(loader, "fp2", "clip-l14").ntotal == 300
    assert len(builds) == 4


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="needs CPU-only faiss")
def test_use_gpu_true_without_a_gpu_fails_loudly_and_auto_falls_back():
    x = _random(50, 8, seed=27)
    with pytest.raises(RuntimeError, match=r"use_gpu=True but faiss .* sees no GPU"):
        build_index(x, use_gpu=True)
    assert build_index(x).ntotal == 50  # use_gpu=None on CPU-only faiss
    with pytest.raises(ValueError, match="nprobe"):
        build_index(x, nprobe=0)


@pytest.mark.gpu
@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs faiss with a visible GPU")
def test_gpu_index_matches_cpu_and_saves_to_cpu(tmp_path):
    x = _clustered(20_000, 32, seed=28)
    q = x[:200]
    cpu = build_index(x, spec="IVF128,Flat", use_gpu=False)
    gpu = build_index(x, spec="IVF128,Flat", use_gpu=True)
    _, ids_cpu = search(cpu, q, 10)
    _, ids_gpu = search(gpu, q, 10)
    assert ids_gpu[:, 0].tolist() == list(range(200))
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids_cpu, ids_gpu, strict=True)])
    assert overlap >= 0.95, overlap
    save_index(gpu, tmp_path / "g.faiss")
    loaded = load_index(tmp_path / "g.faiss", use_gpu=False)
    assert type(loaded).__name__ == "IndexIVFFlat" and loaded.ntotal == len(x)
    np.testing.assert_array_equal(search(loaded, q, 10)[1][:, 0], ids_gpu[:, 0])
    refine = build_index(x, spec="IVF64,PQ8x4np,RFlat", use_gpu=True)  # stays on CPU
    assert search(refine, q[:20], 5)[1][:, 0].tolist() == list(range(20))


# ---------------------------------------------------------------- explore


def _concept_pool(d: int = 32):
    rng = np.random.default_rng(16)
    a, b, c = _random(3, d, seed=17)
    pool = np.concatenate(
        [_near(a, 0.05, 400, 18), _near(c, 0.12, 30, 19), _unit(rng.standard_normal((800, d)))]
    )
    return pool, np.stack([a, b, c])


def test_voids_lists_uncovered_concepts_first():
    pool, concepts = _concept_pool()
    index = build_index(pool, use_gpu=False)
    rows = voids(index, concepts, ["A", "B", "C"], threshold=0.8, k=100)
    assert [r["concept"] for r in rows] == ["B", "C", "A"]
    b, c, a = rows
    assert b["count"] == 0 and b["max_sim"] < 0.8 and not b["saturated"]
    assert 0 < c["count"] <= 30
    assert a["count"] == 100 and a["saturated"] and a["mean_top10_sim"] > 0.95
    with pytest.raises(ValueError, match="concept_names"):
        voids(index, concepts, ["A", "B"], threshold=0.8)
    with pytest.raises(ValueError, match="1 of 3 rows are not L2-normalised"):
        voids(index, concepts * np.array([[1.0], [2.0], [1.0]]), ["A", "B", "C"], threshold=0.8)
    with pytest.raises(ValueError, match="threshold"):
        voids(index, concepts, ["A", "B", "C"], threshold=1.5)


def test_nearest_to_failures_finds_planted_near_duplicates():
    pool = _random(2000, 32, seed=20)
    fail = _random(2, 32, seed=21)
    planted = [5, 500, 1500]
    pool[planted] = _near(fail[0], 0.02, 3, seed=22)
    index = build_index(pool, use_gpu=False)
    rows = nearest_to_failures(index, fail, ["f0", "f1"], k=10, threshold=None)
    assert len(rows) == 20 and [r["rank"] for r in rows[:10]] == list(range(10))
    top = [r for r in rows if r["failure"] == "f0"][:3]
    assert sorted(r["item_index"] for r in top) == planted and min(r["sim"] for r in top) > 0.98
    strict = nearest_to_failures(index, fail, ["f0", "f1"], k=10, threshold=0.9)
    assert sorted(r["item_index"] for r in strict) == planted


def test_prune_list_dedups_keeping_the_best_sim():
    rows = [
        {"failure": "f0", "rank": 0, "item_index": 2, "sim": 0.91},
        {"failure": "f0", "rank": 1, "item_index": 0, "sim": 0.80},
        {"failure": "f1", "rank": 0, "item_index": 0, "sim": 0.95},
        {"failure": "f1", "rank": 1, "item_index": 1, "sim": 0.80},
        {"failure": "f1", "rank": 2, "item_index": 2, "sim": 0.70},
    ]
    table = prune_list(rows, ["s0", "s1", "s2"])
    assert table.schema == PRUNE_SCHEMA
    assert table.schema.field("rank").type == pa.int32()
    assert table.column("sample_id").to_pylist() == ["s0", "s2", "s1"]
    assert table.column("failure").to_pylist() == ["f1", "f0", "f1"]
    assert table.column("rank").to_pylist() == [0, 0, 1]
    np.testing.assert_allclose(table.column("sim").to_numpy(), [0.95, 0.91, 0.80], rtol=1e-6)
    assert prune_list([], ["s0"]).schema == PRUNE_SCHEMA
    with pytest.raises(ValueError, match="item_index must be in \\[0, 3\\), got 7"):
        prune_list([{**rows[0], "item_index": 7}], ["s0", "s1", "s2"])


def test_failures_to_prune_list_end_to_end():
    pool = _random(1000, 32, seed=23)
    fail = _random(2, 32, seed=24)
    pool[[10, 20]] = _near(fail[0], 0.02, 2, seed=25)
    pool[30] = _near(fail[1], 0.01, 1, seed=26)[0]
    index = build_index(pool, use_gpu=False)
    rows = nearest_to_failures(index, fail, ["f0", "f1"], k=200)
    table = prune_list(rows, [f"s{i:04d}" for i in range(len(pool))])
    ids = table.column("sample_id").to_pylist()
    assert len(rows) == 400 and len(ids) == len(set(ids)) == len({r["item_index"] for r in rows})
    assert len(ids) < 400  # some items are near both failures: dedup had work to do
    assert set(ids[:3]) == {"s0010", "s0020", "s0030"}
    best: dict[int, float] = {}
    for r in rows:
        best[r["item_index"]] = max(best.get(r["item_index"], -2.0), r["sim"])
    got = dict(zip(ids, table.column("sim").to_pylist(), strict=True))
    assert all(np.isclose(got[f"s{i:04d}"], v, atol=1e-6) for i, v in best.items())
    assert (np.diff(table.column("sim").to_numpy()) <= 0).all()
