"""PageRank pruning of a built graph (``zfoundry kg prune``) and its summary (``kg stats``).

Prune only adds columns to ``nodes/``: ``pagerank`` (float64, sums to 1 over all nodes) and
``kept``. A node is kept when it is referenced by at least ``min_in_links`` articles and its
PageRank passes the cut: among the top ``keep_fraction`` of nodes (ties by ``node_id``), or
at least ``min_score``. Isolated and seldom-referenced concepts fall below both. With
``generatability`` set, the nodes PageRank keeps are also judged visually generatable
(``knowledge_graph.generatability``: rules, then an embedding head or a text-generation
backend) and ``kept`` requires it; the verdict, score and reason become columns.
"""

from __future__ import annotations

import collections
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from infra.config import require, to_dict
from knowledge_graph.build import read_edges
from knowledge_graph.encoders import EncoderConfig
from knowledge_graph.generatability import GeneratabilityConfig
from knowledge_graph.pagerank import in_csr, pagerank

PRUNE_COLUMNS = (
    "pagerank",
    "kept",
    "generatable",
    "generatability_score",
    "generatability_reason",
)


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """Settings of ``zfoundry kg prune``."""

    keep_fraction: float | None = 0.5
    """Keep this fraction of nodes, highest PageRank first (ignored when min_score is set)."""
    min_score: float | None = None
    """Keep nodes whose PageRank is at least this (PageRank sums to 1: 1/n is average)."""
    min_in_links: int = 1
    """Also require at least this many articles linking to the node."""
    damping: float = 0.85
    """PageRank damping factor."""
    tol: float = 1e-10
    """Stop when the L1 change of an iteration is below this."""
    max_iter: int = 1000
    """Give up (and say so in the stats) after this many iterations."""
    generatability: GeneratabilityConfig | None = None
    """Visual-generatability filter on the nodes PageRank keeps (``knowledge_graph.
    generatability``: rules, an embedding head, or a text-generation backend); none: off."""

    def __post_init__(self) -> None:
        if self.min_score is None:
            require(
                self.keep_fraction is not None and 0.0 < self.keep_fraction <= 1.0,
                "keep_fraction",
                self.keep_fraction,
                "must be in (0, 1] (or set min_score)",
            )
        else:
            require(self.min_score >= 0, "min_score", self.min_score, "must be >= 0")
        require(self.min_in_links >= 0, "min_in_links", self.min_in_links, "must be >= 0")
        require(0.0 <= self.damping < 1.0, "damping", self.damping, "must be in [0, 1)")
        require(self.tol > 0, "tol", self.tol, "must be > 0")
        require(self.max_iter >= 1, "max_iter", self.max_iter, "must be >= 1")


def prune(
    kg_dir: str | Path,
    cfg: PruneConfig,
    *,
    use_gpu: bool | None = None,
    encoder: EncoderConfig | None = None,
    backend=None,
    progress: bool = False,
) -> dict[str, Any]:
    """Compute PageRank over ``edges/`` and write ``pagerank`` + ``kept`` into ``nodes/``;
    with ``cfg.generatability`` also ``generatable`` / ``generatability_score`` /
    ``generatability_reason`` (null for nodes PageRank already cut), and ``kept`` requires
    ``generatable``. ``encoder``: the judge's text encoder (default the bundled MiniLM),
    its vectors cached under ``KG_DIR/_cache/``; ``backend``: a ``TextGenBackend``."""
    t0 = time.perf_counter()
    kg_dir = Path(kg_dir)
    if not (kg_dir / "_SUCCESS.json").exists():
        raise FileNotFoundError(f"{kg_dir} holds no finished graph; run `zfoundry kg build`")
    src, dst, n = read_edges(kg_dir)
    t = time.perf_counter()
    csr = in_csr(src, dst, n)
    t_csr = time.perf_counter() - t
    t = time.perf_counter()
    pr = pagerank(
        src,
        dst,
        n,
        damping=cfg.damping,
        tol=cfg.tol,
        max_iter=cfg.max_iter,
        csr=csr,
        use_gpu=use_gpu,
    )
    t_pr = time.perf_counter() - t
    in_degree = np.diff(csr[0])
    kept = _cut(pr.scores, in_degree, cfg)
    by_pagerank = int(kept.sum())
    path = kg_dir / "nodes" / "00000.parquet"
    nodes = pq.read_table(path)
    nodes = nodes.drop_columns([c for c in PRUNE_COLUMNS if c in nodes.column_names])
    if not np.array_equal(nodes.column("node_id").to_numpy(), np.arange(n)):
        raise ValueError(f"{path}: node_id must be 0..n-1 in order; rebuild the graph")
    nodes = nodes.append_column("pagerank", pa.array(pr.scores, pa.float64()))
    judged: dict[str, Any] = {}
    if cfg.generatability is not None:
        t = time.perf_counter()
        cols, judged = _judge(nodes, kept, cfg.generatability, kg_dir, encoder, backend, progress)
        judged["generatability_s"] = round(time.perf_counter() - t, 3)
        kept &= cols["generatable"].fill_null(False).to_numpy(zero_copy_only=False)
        for name, col in cols.items():
            nodes = nodes.append_column(name, col)
    nodes = nodes.append_column("kept", pa.array(kept))
    tmp = path.with_suffix(".tmp")
    pq.write_table(nodes, tmp, compression="zstd")
    tmp.replace(path)
    stats = {
        "stage": "kg_prune",
        "config": to_dict(cfg),
        "nodes": n,
        "edges": len(src),
        "kept": int(kept.sum()),
        "kept_by_pagerank": by_pagerank,
        "removed": int(n - kept.sum()),
        **judged,
        "removed_isolated": int(((in_degree == 0) & ~kept).sum()),
        "pagerank_backend": pr.backend,
        "iterations": pr.iterations,
        "converged": pr.converged,
        "l1_change": pr.l1_change,
        "csr_s": round(t_csr, 3),
        "pagerank_s": round(t_pr, 3),
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    (kg_dir / "stats").mkdir(exist_ok=True)
    (kg_dir / "stats" / "prune.json").write_text(json.dumps(stats, indent=2))
    return stats


def _judge(nodes, kept, gcfg, kg_dir: Path, encoder, backend, progress: bool):
    """Generatability columns for ``nodes`` (judging only the ``kept`` rows) and counters."""
    from knowledge_graph.concepts import CACHE
    from knowledge_graph.encoders import CachedEncoder, load_encoder
    from knowledge_graph.generatability import judge_titles

    rows = np.flatnonzero(kept)
    enc = None
    if gcfg.judge != "rules":
        enc = CachedEncoder(load_encoder(encoder or EncoderConfig()), kg_dir / CACHE)
    verdict = judge_titles(
        nodes.column("title").take(pa.array(rows)),
        is_disambiguation=nodes.column("is_disambiguation").take(pa.array(rows)),
        cfg=gcfg,
        encoder=enc,
        backend=backend,
        progress=progress,
    )
    n = nodes.num_rows
    cols = {}
    for name, col in (
        ("generatable", "generatable"),
        ("generatability_score", "score"),
        ("generatability_reason", "reason"),
    ):
        values = verdict.column(col).combine_chunks()
        index = np.full(n, -1, np.int64)
        index[rows] = np.arange(len(rows))
        full = values.take(pa.array(index, mask=index < 0))
        cols[name] = full
    gen = verdict.column("generatable").to_numpy(zero_copy_only=False)
    reasons = verdict.column("reason").to_pylist()
    dropped = collections.Counter(r for r, g in zip(reasons, gen, strict=True) if not g)
    return cols, {
        "judged": len(rows),
        "removed_not_generatable": int((~gen).sum()),
        "not_generatable_by_reason": dict(sorted(dropped.items())),
        "judge": gcfg.judge,
    }


def _cut(scores: np.ndarray, in_degree: np.ndarray, cfg: PruneConfig) -> np.ndarray:
    n = len(scores)
    if cfg.min_score is not None:
        passed = scores >= cfg.min_score
    else:
        assert cfg.keep_fraction is not None
        order = np.lexsort((np.arange(n), -scores))  # highest first, ties by node_id
        passed = np.zeros(n, bool)
        passed[order[: round(cfg.keep_fraction * n)]] = True
    return passed & (in_degree >= cfg.min_in_links)


def kg_stats(kg_dir: str | Path, top: int = 10) -> dict[str, Any]:
    """Counts, the PageRank distribution and the top / bottom concepts of a graph."""
    kg_dir = Path(kg_dir)
    if not (kg_dir / "_SUCCESS.json").exists():
        raise FileNotFoundError(f"{kg_dir} holds no finished graph; run `zfoundry kg build`")
    nodes = pq.read_table(kg_dir / "nodes")
    build = json.loads((kg_dir / "stats" / "build.json").read_text())
    out: dict[str, Any] = {
        "nodes": nodes.num_rows,
        "edges": build["edges"],
        "disambiguation_nodes": build["disambiguation_nodes"],
        "isolated_nodes": build["isolated_nodes"],
        "redirects_resolved": build["redirects_resolved"],
        "links_to_missing_pages": build["links_to_missing_pages"],
        "pruned": "pagerank" in nodes.column_names,
    }
    if not out["pruned"]:
        return out
    pr = nodes.column("pagerank").to_numpy()
    kept = nodes.column("kept").to_numpy(zero_copy_only=False)
    n = len(pr)
    out["kept"] = int(kept.sum())
    out["pagerank_quantiles"] = {
        f"p{q}": float(np.percentile(pr, q)) for q in (0, 10, 50, 90, 99, 100)
    } | {"uniform": 1.0 / n}
    order = np.lexsort((np.arange(n), -pr))
    cols = ["node_id", "title", "pagerank", "in_degree", "out_degree", "kept"]
    out["top"] = nodes.select(cols).take(order[:top]).to_pylist()
    kept_order = order[kept[order]]
    out["bottom_kept"] = nodes.select(cols).take(kept_order[::-1][:top]).to_pylist()
    return out


def plot_pagerank(kg_dir: str | Path, path: str | Path) -> Path:
    """PNG: log-log rank plot of PageRank with the pruning cut marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = pq.read_table(Path(kg_dir) / "nodes", columns=["pagerank", "kept"])
    pr = nodes.column("pagerank").to_numpy()
    kept = nodes.column("kept").to_numpy(zero_copy_only=False)
    order = np.argsort(pr)[::-1]
    ranks = np.arange(1, len(pr) + 1)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.loglog(ranks, pr[order], lw=1, color="0.3", label="all nodes")
    ax.scatter(ranks[kept[order]], pr[order][kept[order]], s=2, color="tab:green", label="kept")
    ax.axhline(1.0 / len(pr), ls=":", color="tab:red", label="uniform 1/n")
    ax.set(xlabel="rank", ylabel="PageRank", title=f"{len(pr):,} concepts, {kept.sum():,} kept")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
