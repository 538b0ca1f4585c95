"""The dedup step over a run: ``vectors/`` -> ``dedup/`` + ``knn_edges/`` (a global step).

Works on any ``vectors/`` written to the contract. One k-NN search at the lower of the two
thresholds serves both the duplicate graph (``threshold``) and the coarser semantic graph
(``cluster_threshold``, whose Leiden communities become ``semantic_cluster`` for balancing).
Keepers follow ``keep_order``: DuckDB ORDER BY expressions over ``profiles`` / ``scores``
(e.g. ``"profiles.width * profiles.height DESC"``); ties and the default fall back to
``sample_id``. Re-running with the same settings and vectors does nothing; changed settings
recompute (no model runs here).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from curation.dedup.graph import canonical, leiden, range_groups
from curation.dedup.knn import TaskMap, local_map, self_knn
from curation.retrieval import load_vectors
from infra import catalog
from infra.config import ConfigError, require, to_dict
from infra.storage import RunDir, write_parquet_atomic
from infra.tables import DEDUP, KNN_EDGES, conform

ROWS_PER_FILE = 1_000_000


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    """Settings of ``zfoundry dedup`` / the ``[dedup]`` table of a pipeline file."""

    method: Literal["knn-leiden", "range", "semdedup"] = "knn-leiden"
    """knn-leiden (the report's), range (SD3's exact baseline) or semdedup (NeMo / Meta's)."""
    k: int = 100
    """Neighbours per item in the k-NN graph."""
    threshold: float = 0.95
    """Cosine at or above which two items are duplicates (an edge of the duplicate graph)."""
    cluster_threshold: float = 0.75
    """Lower cosine for the semantic graph whose communities are ``semantic_cluster``."""
    resolution: float = 1.0
    """Leiden modularity resolution (higher: smaller communities)."""
    semdedup_clusters: int = 0
    """SemDeDup's k-means clusters (0: about sqrt(n))."""
    index: str = "auto"
    """k-NN index: auto (blocked on CPU, a faiss GPU index when a GPU is seen), blocked (IVF
    cells scored by matrix products; exact below 20k items), exact, or a faiss index: flat,
    ivf, ivfpq, or a factory string (see docs/architecture.md, "Dedup")."""
    nprobe: int = 8
    """IVF cells searched per query. Near-duplicates share a cell, so a small value keeps
    their recall (F1 1.0 vs the exact baseline at 200k with 4, 8 or 16 in bench/dedup.py);
    the k-NN scan costs about nprobe / cells of the exact search."""
    shard_queries: int = 65_536
    """Queries per k-NN task (the unit spread over Ray tasks; results do not depend on it)."""
    keep_order: tuple[str, ...] = ()
    """ORDER BY expressions choosing each community's keeper (first wins)."""
    phash_radius: int | None = None
    """Also merge perceptual near-duplicates: items whose ``profiles.phash`` differ in at most
    this many bits join the same community (None: off)."""
    seed: int = 0
    """Seed of index training, Leiden and k-means."""

    def __post_init__(self) -> None:
        require(self.k >= 1, "k", self.k, "must be >= 1")
        require(-1.0 <= self.threshold <= 1.0, "threshold", self.threshold, "must be a cosine")
        require(
            -1.0 <= self.cluster_threshold <= self.threshold,
            "cluster_threshold",
            self.cluster_threshold,
            "must be a cosine <= threshold",
        )
        require(self.resolution > 0, "resolution", self.resolution, "must be > 0")
        require(self.nprobe >= 1, "nprobe", self.nprobe, "must be >= 1")
        require(self.shard_queries >= 1, "shard_queries", self.shard_queries, "must be >= 1")


def dedup(
    run: RunDir, cfg: DedupConfig, *, task_map: TaskMap = local_map, progress: bool = False
) -> dict[str, Any]:
    """Run the dedup step; ``task_map`` spreads k-NN shards and Leiden parts (an executor's
    ``map_tasks``: in process or Ray tasks)."""
    t0 = time.perf_counter()
    vectors = load_vectors(run)
    config = to_dict(cfg)
    config.pop("shard_queries")  # changes where the work runs, not the result
    settings = {"config": config, "vectors": vectors.fingerprint}
    stats_path = run.path("stats", "dedup.json")
    marker = run.path("dedup", "_settings.json")
    done = run.exists(run.success_path("dedup")) and run.exists(marker) and run.exists(stats_path)
    if done and run.read_json(marker) == settings:
        return run.read_json(stats_path) | {"skipped_step": True}
    x, ids, n = vectors.matrix, vectors.ids, len(vectors.ids)
    knn_settings = {k: config[k] for k in ("k", "cluster_threshold", "index", "nprobe", "seed")} | {
        "vectors": vectors.fingerprint,
        "shard_queries": cfg.shard_queries,
    }
    key = hashlib.sha256(json.dumps(knn_settings, sort_keys=True).encode()).hexdigest()[:16]
    store = RunShardStore(run, key)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    with tqdm(desc="dedup k-NN", unit="shard", disable=not progress) as bar:
        (src, dst, sim), knn_info = self_knn(
            x,
            k=cfg.k,
            threshold=cfg.cluster_threshold,
            index=cfg.index,
            nprobe=cfg.nprobe,
            seed=cfg.seed,
            task_map=task_map,
            shard_queries=cfg.shard_queries,
            progress=bar.update,
            store=store,
        )
    timings["knn_s"] = time.perf_counter() - t
    dup = sim >= cfg.threshold
    t = time.perf_counter()
    if cfg.method == "knn-leiden":
        groups = leiden(
            n,
            src[dup],
            dst[dup],
            sim[dup],
            resolution=cfg.resolution,
            seed=cfg.seed,
            task_map=task_map,
        )
    elif cfg.method == "range":
        groups = range_groups(x, threshold=cfg.threshold)
    else:
        from curation.dedup.semdedup import semdedup

        clusters = cfg.semdedup_clusters or max(1, int(np.sqrt(n)))
        eps = 1.0 - cfg.threshold
        groups = canonical(semdedup(x, n_clusters=clusters, eps=eps, seed=cfg.seed))
    if cfg.phash_radius is not None:
        groups = merge_phash(run, ids, groups, cfg.phash_radius)
    timings["groups_s"] = time.perf_counter() - t
    t = time.perf_counter()
    semantic = leiden(n, src, dst, sim, resolution=cfg.resolution, seed=cfg.seed, task_map=task_map)
    timings["semantic_s"] = time.perf_counter() - t
    rank = keeper_rank(run, ids, cfg.keep_order)
    table = dedup_table(ids, groups, semantic, rank)
    run.replace_table("dedup", conform(table, DEDUP, name="dedup"), ROWS_PER_FILE)
    edges = pa.table(
        {
            "src": pa.array(np.asarray(ids, object)[src[dup]], pa.string()),
            "dst": pa.array(np.asarray(ids, object)[dst[dup]], pa.string()),
            "sim": pa.array(sim[dup], pa.float32()),
        }
    )
    run.replace_table("knn_edges", conform(edges, KNN_EDGES, name="knn_edges"), ROWS_PER_FILE)
    run.write_json(marker, settings)
    store.clear()  # the merged knn_edges/ is written: shard files are no longer needed
    keep = table.column("keep").to_numpy(zero_copy_only=False)
    stats = {
        "stage": "dedup",
        "method": cfg.method,
        "in": n,
        "ok": n,
        "rejected": 0,
        "communities": int(groups.max() + 1) if n else 0,
        "kept": int(keep.sum()),
        "duplicates": int(n - keep.sum()),
        "semantic_clusters": int(semantic.max() + 1) if n else 0,
        "edges": int(dup.sum()),
        "knn": knn_info,
        **{k: round(v, 3) for k, v in timings.items()},
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "rows_per_s": round(n / (time.perf_counter() - t0), 1),
    }
    run.write_json(run.success_path("dedup"), {"rows": n})
    run.write_json(stats_path, stats)
    return stats


@dataclass(frozen=True)
class RunShardStore:
    """k-NN shard edges as ``knn_edges/_shards/<settings key>/NNNNN.parquet`` (item numbers,
    not sample ids); written atomically, so a file present is a shard done."""

    run: RunDir
    key: str

    def _file(self, shard: int) -> str:
        return self.run.path("knn_edges", "_shards", self.key, f"{shard:05d}.parquet")

    def done(self, shard: int) -> bool:
        return self.run.exists(self._file(shard))

    def write(self, shard: int, edges: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        src, dst, sim = edges
        table = pa.table({"src": src.astype(np.int64), "dst": dst.astype(np.int64), "sim": sim})
        write_parquet_atomic(self.run.fs, self._file(shard), table)

    def read(self, shard: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = pq.read_table(self._file(shard), filesystem=self.run.fs)
        return tuple(t.column(c).to_numpy() for c in ("src", "dst", "sim"))  # type: ignore[return-value]

    def clear(self) -> None:
        base = self.run.path("knn_edges", "_shards")
        if self.run.exists(base):
            self.run.fs.delete_dir(base)


def merge_phash(run: RunDir, ids: list[str], groups: np.ndarray, radius: int) -> np.ndarray:
    """Communities joined wherever two members' pHashes are within ``radius`` bits."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from curation.dedup.phash import phash_pairs

    con = catalog.connect(run)
    if "profiles" not in catalog.views(con):
        raise FileNotFoundError(f"phash_radius needs profiles/ in {run.display}; run profile")
    con.register("dedup_items", pa.table({"sample_id": ids, "item": np.arange(len(ids))}))
    rows = con.execute(
        "SELECT item, phash FROM dedup_items JOIN profiles USING (sample_id) "
        "WHERE phash IS NOT NULL ORDER BY item"
    ).fetchnumpy()
    items, hashes = np.asarray(rows["item"], np.int64), np.asarray(rows["phash"], np.uint64)
    links = items[phash_pairs(hashes, radius=radius)] if len(items) else np.zeros((0, 2), np.int64)
    n, g = len(ids), int(groups.max()) + 1
    # nodes: items 0..n-1 and communities n..n+g-1; edges: item-community and pHash links
    src = np.concatenate([np.arange(n), links[:, 0]])
    dst = np.concatenate([n + groups, links[:, 1]])
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n + g, n + g))
    _, labels = connected_components(graph, directed=False)
    return canonical(labels[:n])


def keeper_rank(run: RunDir, ids: list[str], keep_order: tuple[str, ...]) -> np.ndarray:
    """Position of every item in the quality order (0 = best); ties by sample_id."""
    con = catalog.connect(run)
    con.register("dedup_items", pa.table({"sample_id": ids, "item": np.arange(len(ids))}))
    joins = " ".join(
        f"LEFT JOIN {t} USING (sample_id)"
        for t in ("profiles", "scores")
        if t in catalog.views(con)
    )
    for i, expr in enumerate(keep_order):
        try:
            con.execute(f"SELECT 1 FROM dedup_items {joins} ORDER BY {expr} LIMIT 0")
        except Exception as err:
            raise ConfigError(f"{expr!r}: {err}", source="dedup", key=f"keep_order[{i}]") from None
    order = ", ".join([*keep_order, "dedup_items.sample_id"])
    items = con.execute(f"SELECT item FROM dedup_items {joins} ORDER BY {order}").fetchnumpy()[
        "item"
    ]
    rank = np.empty(len(ids), np.int64)
    rank[np.asarray(items, np.int64)] = np.arange(len(ids))
    return rank


def dedup_table(
    ids: list[str], groups: np.ndarray, semantic: np.ndarray, rank: np.ndarray
) -> pa.Table:
    """One row per item; exactly one keeper (lowest rank) per community."""
    n = len(ids)
    order = np.lexsort((rank, groups))  # by group, then quality
    first = np.ones(n, bool)
    first[1:] = groups[order][1:] != groups[order][:-1]
    keeper_of_group = np.empty(int(groups.max()) + 1 if n else 0, np.int64)
    keeper_of_group[groups[order][first]] = order[first]
    keeper = keeper_of_group[groups]
    keep = keeper == np.arange(n)
    size = np.bincount(groups)[groups]
    id_arr = np.asarray(ids, object)
    dup_of = np.where(keep, None, id_arr[keeper])
    table = pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "community": pa.array(groups, pa.int64()),
            "community_size": pa.array(size, pa.int64()),
            "keep": pa.array(keep),
            "dup_of": pa.array(dup_of.tolist(), pa.string()),
            "semantic_cluster": pa.array(semantic, pa.int64()),
        }
    )
    return table.sort_by("sample_id")
