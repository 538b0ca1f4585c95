"""Semantic dedup on planted data: groups of near-identical vectors inside looser clusters."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.dedup.graph import leiden, pair_scores, range_groups
from curation.dedup.knn import knn_shard, merge_edges, plan_knn, self_knn
from curation.dedup.run import DedupConfig, dedup
from infra.config import ConfigError
from infra.storage import RunDir
from infra.tables import vectors_schema
from pipelines.cli import app
from tests.helpers import read_table


def planted(seed: int = 0, groups: int = 300, singles: int = 1500, d: int = 64):
    """Duplicate groups (2-5 copies, noise 0.01) around 40 semantic centres (spread 0.35)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d))
    rows, truth = [], []
    for g in range(groups + singles):
        c = (
            centres[g % 40]
            + 0.35 * np.linalg.norm(centres[g % 40]) * rng.normal(size=d) / np.sqrt(d) * 3
        )
        copies = rng.integers(2, 6) if g < groups else 1
        for _ in range(copies):
            rows.append(c + 0.01 * np.linalg.norm(c) * rng.normal(size=d) / np.sqrt(d) * 3)
            truth.append(g)
    x = np.asarray(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.asarray(truth)


def write_foreign_vectors(root, x: np.ndarray) -> list[str]:
    """A vectors/ table as another tool would write it: the contract, no zfoundry markers."""
    ids = [f"id{i:06d}" for i in range(len(x))]
    flat = pa.array(x.astype(np.float16).reshape(-1), pa.float16())
    table = pa.table(
        {
            "sample_id": ids,
            "model": ["other-tool/clip"] * len(ids),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, x.shape[1]),
        },
        schema=vectors_schema(x.shape[1]),
    )
    (root / "vectors").mkdir(parents=True)
    pq.write_table(table, root / "vectors" / "part-0.parquet")
    return ids


@pytest.fixture(scope="module")
def data():
    return planted()


def test_knn_leiden_finds_planted_groups_and_agrees_with_range(data):
    x, truth = data
    (src, dst, sim), info = self_knn(x, k=20, threshold=0.95, index="blocked")
    assert info["exact"]
    groups = leiden(len(x), src, dst, sim, seed=0)
    exact = range_groups(x, threshold=0.95)
    assert pair_scores(groups, truth)["f1"] >= 0.99
    assert pair_scores(exact, truth)["f1"] >= 0.99
    assert pair_scores(groups, exact)["f1"] >= 0.99


def _reference(index, x: np.ndarray, k: int, threshold: float) -> set[tuple[int, int]]:
    sims, ids = index.search(x, k + 1)
    out = set()
    for i in range(len(x)):
        near = [j for j, s in zip(ids[i], sims[i], strict=True) if 0 <= j != i and s >= threshold]
        out.update((i, int(j)) for j in near[:k])
    return out


def test_blocked_knn_matches_faiss_ivf_flat_and_exact_search():
    """The blocked scan returns exactly faiss IndexIVFFlat's neighbours (same quantizer and
    nprobe), shard boundaries or not; its exact mode returns IndexFlatIP's."""
    import faiss

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(30, 32))
    x = centres[rng.integers(0, 30, 3000)] + 0.3 * rng.normal(size=(3000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    k, threshold = 10, 0.5
    plan = plan_knn(x, index="blocked", nlist=16, nprobe=4, seed=0)
    assert plan.info["cells"] == 16 and not plan.info["exact"]
    quantizer = faiss.IndexFlatIP(32)
    quantizer.add(plan.centroids)
    ivf = faiss.IndexIVFFlat(quantizer, 32, 16, faiss.METRIC_INNER_PRODUCT)
    ivf.add(x)
    ivf.nprobe = 4
    want = _reference(ivf, x, k, threshold)
    shards = [knn_shard(plan, s, e, k, threshold) for s, e in plan.shards(700)]
    got = {(int(a), int(b)) for src, dst, _ in shards for a, b in zip(src, dst, strict=True)}
    assert len(want) > 20_000 and got == want
    flat = faiss.IndexFlatIP(32)
    flat.add(x)
    exact = knn_shard(plan_knn(x, index="exact"), 0, len(x), k, threshold)
    assert set(zip(exact[0].tolist(), exact[1].tolist(), strict=True)) == _reference(
        flat, x, k, threshold
    )
    src, dst, sim = merge_edges(shards)  # undirected, each pair once with its similarity
    assert (src < dst).all() and len(set(zip(src.tolist(), dst.tolist(), strict=False))) == len(src)
    assert np.allclose(sim, np.einsum("ij,ij->i", x[src], x[dst]), atol=1e-5)


def test_faiss_engine_agrees_with_blocked(data):
    x, _ = data
    (a, info_a) = self_knn(x, k=20, threshold=0.9, index="exact")
    (b, info_b) = self_knn(x, k=20, threshold=0.9, index="flat")
    assert info_a["engine"] == "blocked" and info_b["engine"] == "faiss"
    assert set(zip(*a[:2], strict=True)) == set(zip(*b[:2], strict=True))


def test_leiden_in_parts_equals_one_global_run(data):
    """Components packed into many small parts (resolution scaled by each part's weight)
    give the communities of one global run, on the duplicate and the looser semantic graph."""
    x, _ = data
    (src, dst, sim), _ = self_knn(x, k=30, threshold=0.7, index="exact")
    for thr in (0.95, 0.7):
        keep = sim >= thr
        one = leiden(len(x), src[keep], dst[keep], sim[keep], seed=0, part_edges=10**9)
        parts = leiden(len(x), src[keep], dst[keep], sim[keep], seed=0, part_edges=50)
        assert pair_scores(parts, one)["f1"] >= 0.99, thr


def test_leiden_parts_keep_the_global_resolution():
    """200 components, each two 4-cliques joined by one edge: globally (m = 2,600) merging the
    pair raises modularity, inside one component alone (m = 13) it does not. Solved one
    component per part, the scaled resolution must still give the global answer."""
    from curation.dedup.graph import _leiden_part

    clique = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    one = [*clique, *[(a + 4, b + 4) for a, b in clique], (3, 4)]
    edges = np.array([(a + 8 * c, b + 8 * c) for c in range(200) for a, b in one])
    src, dst, w = edges[:, 0], edges[:, 1], np.ones(len(edges))
    glob = leiden(1600, src, dst, w, part_edges=10**9)
    apart = leiden(1600, src, dst, w, part_edges=1)
    assert glob.max() + 1 == 200 and (apart == glob).all()
    _nodes, member = _leiden_part(None, src[:13], dst[:13], w[:13], 1.0, 0)  # unscaled
    assert len(set(member.tolist())) == 2  # what a naive per-component run would return


def test_dedup_step_on_foreign_vectors(tmp_path, data):
    x, truth = data
    ids = write_foreign_vectors(tmp_path, x)
    run = RunDir(tmp_path)
    stats = dedup(run, DedupConfig(k=20, threshold=0.95))
    table = read_table(run, "dedup").to_pylist()
    assert sorted(r["sample_id"] for r in table) == ids  # every input row exactly once
    by_id = {r["sample_id"]: r for r in table}
    groups = np.asarray([by_id[i]["community"] for i in ids])
    assert pair_scores(groups, truth)["f1"] >= 0.99
    keepers = [r for r in table if r["keep"]]
    assert len(keepers) == len(set(groups)) == stats["communities"]  # one per community
    for r in table:
        assert r["community"] is not None and r["community_size"] >= 1
        if not r["keep"]:
            keeper = by_id[r["dup_of"]]
            assert keeper["keep"] and keeper["community"] == r["community"]
        else:
            assert r["dup_of"] is None
    edges = read_table(run, "knn_edges")
    assert min(edges.column("sim").to_pylist()) >= 0.95 and edges.num_rows == stats["edges"]


def test_dedup_on_ray_tasks_equals_in_process(tmp_path, data, ray_local):
    """k-NN shards and Leiden parts as Ray tasks (shared plan in the object store) write the
    same dedup/ and knn_edges/ as the in-process run, with an IVF plan of several cells."""
    from pipelines.executors import get_executor

    x, _ = data
    tables = {}
    for kind in ("local", "ray"):
        root = tmp_path / kind
        write_foreign_vectors(root, x)
        cfg = DedupConfig(k=20, threshold=0.95, index="blocked", shard_queries=500)
        ex = get_executor(kind, progress=False)
        run = RunDir(root)
        stats = dedup(run, cfg, task_map=ex.map_tasks)
        assert stats["knn"]["shards"] == -(-len(x) // 500)
        tables[kind] = (read_table(run, "dedup"), read_table(run, "knn_edges"))
    assert tables["ray"][0].equals(tables["local"][0])
    assert tables["ray"][1].equals(tables["local"][1])


def test_killed_knn_resumes_from_shard_files(tmp_path, data):
    """Shards write their edges to knn_edges/_shards/; a run killed after two shards resumes
    with those two and ends with the same tables as an uninterrupted run (files cleaned up)."""
    from curation.dedup.knn import local_map

    x, _ = data
    cfg = DedupConfig(k=20, threshold=0.95, index="blocked", shard_queries=300)
    tables = {}
    for name in ("clean", "killed"):
        root = tmp_path / name
        write_foreign_vectors(root, x)
        run = RunDir(root)
        if name == "killed":

            def dies_after_two(fn, shared, args):
                for i, a in enumerate(args):
                    if i == 2:
                        raise KeyboardInterrupt
                    yield fn(shared, *a)

            with pytest.raises(KeyboardInterrupt):
                dedup(run, cfg, task_map=dies_after_two)
            assert len(list((root / "knn_edges" / "_shards").rglob("*.parquet"))) == 2
        stats = dedup(run, cfg, task_map=local_map)
        assert stats["knn"]["shards_resumed"] == (2 if name == "killed" else 0)
        assert not (root / "knn_edges" / "_shards").exists()
        tables[name] = (read_table(run, "dedup"), read_table(run, "knn_edges"))
    assert tables["killed"][0].equals(tables["clean"][0])
    assert tables["killed"][1].equals(tables["clean"][1])


def test_keepers_follow_the_quality_order(tmp_path, data):
    x, _ = data
    ids = write_foreign_vectors(tmp_path, x)
    quality = np.random.default_rng(1).random(len(ids))
    (tmp_path / "scores").mkdir()
    pq.write_table(
        pa.table({"sample_id": ids, "aesthetic": quality}), tmp_path / "scores" / "s.parquet"
    )
    run = RunDir(tmp_path)
    dedup(run, DedupConfig(k=20, keep_order=("scores.aesthetic DESC",)))
    q = dict(zip(ids, quality, strict=True))
    best: dict[int, float] = {}
    for r in read_table(run, "dedup").to_pylist():
        best[r["community"]] = max(best.get(r["community"], -1.0), q[r["sample_id"]])
    for r in read_table(run, "dedup").to_pylist():
        assert r["keep"] == (q[r["sample_id"]] == best[r["community"]])
    with pytest.raises(ConfigError, match=r"keep_order\[0\].*nope"):
        dedup(run, DedupConfig(k=20, keep_order=("scores.nope DESC",)))


def test_rerun_skips_and_new_settings_recompute(tmp_path, data):
    x, _ = data
    write_foreign_vectors(tmp_path, x[:500])
    run = RunDir(tmp_path)
    first = dedup(run, DedupConfig(k=10))
    assert "skipped_step" not in first
    assert dedup(run, DedupConfig(k=10)).get("skipped_step") is True
    strict = dedup(run, DedupConfig(k=10, threshold=0.999))
    assert "skipped_step" not in strict and strict["communities"] >= first["communities"]


def test_cli_dedup_json(tmp_path, data):
    x, _ = data
    write_foreign_vectors(tmp_path, x[:300])
    res = CliRunner().invoke(
        app, ["dedup", str(tmp_path), "--k", "10", "--method", "range", "--json"]
    )
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)
    assert stats["method"] == "range" and stats["in"] == 300
    write_foreign_vectors(tmp_path / "default", x[:300])  # no --method: the default method
    res = CliRunner().invoke(app, ["dedup", str(tmp_path / "default"), "--k", "10", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["method"] == "knn-leiden"


def test_semdedup_method_through_the_step(tmp_path, data):
    x, truth = data
    ids = write_foreign_vectors(tmp_path, x)
    run = RunDir(tmp_path)
    stats = dedup(run, DedupConfig(method="semdedup", k=20, semdedup_clusters=40))
    by_id = {r["sample_id"]: r for r in read_table(run, "dedup").to_pylist()}
    scores = pair_scores(np.asarray([by_id[i]["community"] for i in ids]), truth)
    assert scores["precision"] >= 0.99 and scores["recall"] >= 0.9, scores
    assert stats["kept"] == stats["communities"]


def test_phash_near_duplicates_merge_into_communities(tmp_path, data):
    x, _ = data
    ids = write_foreign_vectors(tmp_path, x[:200])
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 2**63, 200, dtype=np.uint64)
    hashes[7] = hashes[150] ^ np.uint64(0b101)  # 2 bits apart: perceptual duplicates
    (tmp_path / "profiles").mkdir()
    pq.write_table(
        pa.table({"sample_id": ids, "phash": pa.array(hashes, pa.uint64())}),
        tmp_path / "profiles" / "p.parquet",
    )
    run = RunDir(tmp_path)
    plain = {
        r["sample_id"]: r
        for r in (dedup(run, DedupConfig(k=10)) and read_table(run, "dedup").to_pylist())
    }
    assert plain[ids[7]]["community"] != plain[ids[150]]["community"]
    dedup(run, DedupConfig(k=10, phash_radius=4))
    merged = {r["sample_id"]: r for r in read_table(run, "dedup").to_pylist()}
    assert merged[ids[7]]["community"] == merged[ids[150]]["community"]
    assert sum(r["keep"] for r in merged.values()) == len({r["community"] for r in merged.values()})
