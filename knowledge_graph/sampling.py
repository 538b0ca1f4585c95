"""``zfoundry weights RUN_DIR [--kg KG_DIR]`` -> ``weights/`` (a global step).

Each sample's tags come from ``meta.tags`` when present, else from its caption
(``caption_alt``; ``knowledge_graph.tags``). With a knowledge graph each distinct tag maps
to a concept through ``knowledge_graph.concepts.ConceptIndex`` (title, redirect alias,
taxonomy tag or added concept, then the embedding nearest neighbour above a threshold when
the graph has ``concepts/``); unmapped tags are counted and carry no weight. Without one,
each distinct tag is its own concept. The taxonomy's parents are the hierarchy and
``kg boost`` factors scale the prior (uniform over leaves otherwise). Weights:
``knowledge_graph.weights`` (docs/sampling.md).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from infra import catalog
from infra.config import Location, require, to_dict
from infra.storage import RunDir
from knowledge_graph.concepts import MATCH_KINDS, ConceptIndex, concepts_dir
from knowledge_graph.tags import tags_for_table
from knowledge_graph.weights import (
    Corpus,
    WeightConfig,
    encode_tags,
    entropy,
    sampling_weights,
    subtree_sum,
)

PRIORS = ("uniform", "pagerank")
WEIGHTS = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("concepts", pa.list_(pa.int64())),
        pa.field("sampling_weight", pa.float64()),
        pa.field("tags", pa.list_(pa.string())),
    ]
)


@dataclass(frozen=True, kw_only=True)
class WeightsConfig:
    """Settings of ``zfoundry weights``."""

    kg: Location | None = None
    """Knowledge-graph directory (``kg build``, optionally ``kg prune``); none: tags are
    their own concepts."""
    bm25: WeightConfig = field(default_factory=WeightConfig)
    """BM25 and hierarchy parameters (k1, b, alpha)."""
    max_words: int = 3
    """Longest caption noun phrase kept as a tag."""
    match_threshold: float | None = None
    """Least cosine for an embedding match (none: the one ``kg taxonomy`` was built with)."""
    embeddings: bool = True
    """Embedding matches for tags no title / alias / taxonomy tag matches (needs
    ``concepts/``; loads its text encoder)."""
    hierarchy: bool = True
    """Use the taxonomy's parents (hierarchy sharing); off: every concept is a root."""
    boost: bool = True
    """Scale the prior by ``kg boost``'s factors when ``concepts/boost.parquet`` exists."""
    prior: str = "uniform"
    """Target prior over leaf concepts: ``uniform``, or ``pagerank`` (a Wikipedia node's
    share grows with sqrt(PageRank · N), so central concepts get more samples; taxonomy
    concepts count as an average node). Needs a pruned graph for ``pagerank``."""

    def __post_init__(self) -> None:
        if self.kg is not None and "://" not in self.kg:
            require(os.path.isdir(os.path.join(self.kg, "nodes")), "kg", str(self.kg),
                    "must be a knowledge-graph folder (kg build writes its nodes/)")  # fmt: skip
        require(self.max_words >= 1, "max_words", self.max_words, "must be >= 1")
        require(self.prior in PRIORS, "prior", self.prior, f"must be one of {list(PRIORS)}")
        t = self.match_threshold
        require(t is None or -1.0 <= t <= 1.0, "match_threshold", t, "must be in [-1, 1]")


def _samples(run: RunDir) -> pa.Table:
    con = catalog.connect(run)
    if "samples" not in catalog.views(con):
        raise FileNotFoundError(f"samples/ is missing in {run.display}; run ingest")
    return con.sql(
        """SELECT sample_id, caption_alt AS caption,
                  CAST(json_extract(meta, '$.tags') AS VARCHAR) AS tags
           FROM samples ORDER BY sample_id"""
    ).to_arrow_table()


def _with_ancestors(ids: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Sorted distinct ``ids`` plus every ancestor of them."""
    out, frontier = [ids], ids
    while frontier.size:
        up = parent[frontier]
        frontier = np.setdiff1d(up[up >= 0], np.concatenate(out))
        out.append(frontier)
    return np.unique(np.concatenate(out))


def prior_factor(index: ConceptIndex, *, prior: str, boost: bool) -> np.ndarray | None:
    """Per concept id: the leaf prior's factor (``prior`` x ``kg boost``), None = uniform."""
    factor = None
    if prior == "pagerank":
        nodes = index.kg_dir / "nodes" / "00000.parquet"
        if "pagerank" not in pq.read_schema(nodes).names:
            raise ValueError(f"prior = 'pagerank': {index.kg_dir} is not pruned; run kg prune")
        pr = pq.read_table(nodes, columns=["pagerank"]).column("pagerank").to_numpy()
        factor = np.ones(index.n_ids)
        factor[: len(pr)] = np.sqrt(pr * len(pr))
    if boost:
        factor = index.boost() * (1.0 if factor is None else factor)
    return factor


def concept_space(
    ids: np.ndarray, parent: np.ndarray | None, boost: np.ndarray | None
) -> dict[str, np.ndarray | None]:
    """Dense numbering of the concepts ``ids`` (global, -1 = unmapped) use, with their
    ancestors: ``dense`` (global id per dense index), ``of`` (dense index per entry of
    ``ids``, -1 kept), ``parent`` (dense, -1 = root; None without a hierarchy) and ``prior``
    (boost over leaves, internal nodes their subtree's sum; None = uniform default)."""
    used = np.unique(ids[ids >= 0])
    dense = used if parent is None else _with_ancestors(used, parent)
    of = np.where(ids >= 0, np.searchsorted(dense, np.maximum(ids, 0)), -1)
    dparent = None
    if parent is not None:
        up = parent[dense]
        dparent = np.where(up >= 0, np.searchsorted(dense, np.maximum(up, 0)), -1)
        if not (dparent >= 0).any():
            dparent = None
    prior = None
    if boost is not None or dparent is not None:
        leaf = np.ones(len(dense), bool)
        if dparent is not None:
            leaf[dparent[dparent >= 0]] = False
        factor = np.ones(len(dense)) if boost is None else boost[dense]
        prior = np.where(leaf, factor, 0.0)
        if dparent is not None:
            prior = subtree_sum(prior, dparent)
    return {"dense": dense, "of": of, "parent": dparent, "prior": prior}


def run_tags(run: RunDir, *, max_words: int = 3) -> pa.Array:
    """Tags of each sample of a run (sample_id order): meta.tags, else caption phrases."""
    return tags_for_table(
        _samples(run), tags_column="tags", caption_column="caption", max_words=max_words
    )


def weights_step(run: RunDir, cfg: WeightsConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    samples = _samples(run)
    tags = tags_for_table(
        samples, tags_column="tags", caption_column="caption", max_words=cfg.max_words
    )
    corpus = encode_tags(tags)
    vocab = corpus.vocab.to_pylist()
    global_of_term = np.full(len(vocab), -1, np.int64)
    kinds = np.full(len(vocab), -1, np.int8)
    extra: dict[str, Any] = {}
    parent = prior = None
    if cfg.kg is not None:
        index = ConceptIndex(cfg.kg, match_threshold=cfg.match_threshold, embeddings=cfg.embeddings)
        global_of_term, kinds = index.map(vocab)
        has_boost = cfg.boost and (concepts_dir(cfg.kg) / "boost.parquet").exists()
        space = concept_space(
            global_of_term,
            index.parent if cfg.hierarchy and index.concepts is not None else None,
            prior_factor(index, prior=cfg.prior, boost=has_boost),
        )
        concept_of_term, parent, prior = space["of"], space["parent"], space["prior"]
        extra = {
            "kg_nodes": index.n_nodes,
            "kg_concepts": index.n_ids - index.n_nodes,
            "concepts_used": len(space["dense"]),
            "hierarchy": parent is not None,
            "boosted": has_boost,
            "prior": cfg.prior,
        }
    else:
        concept_of_term = np.arange(len(vocab))
    res = sampling_weights(
        corpus, cfg.bm25, concept_of_term=concept_of_term, parent=parent, prior=prior
    )
    counts = np.diff(corpus.indptr)
    mapped_tok = global_of_term[corpus.tokens] >= 0 if len(corpus.tokens) else np.zeros(0, bool)
    nodes_flat = global_of_term[corpus.tokens][mapped_tok] if len(corpus.tokens) else []
    doc = np.repeat(np.arange(corpus.n_docs), counts)
    per_doc = np.bincount(doc[mapped_tok], minlength=corpus.n_docs) if len(doc) else counts
    offsets = np.zeros(corpus.n_docs + 1, np.int32)
    np.cumsum(per_doc, out=offsets[1:])
    concepts = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(np.asarray(nodes_flat, np.int64), pa.int64())
    )
    table = pa.table(
        {
            "sample_id": samples.column("sample_id"),
            "concepts": concepts,
            "sampling_weight": pa.array(res["weight"], pa.float64()),
            "tags": tags,
        },
        schema=WEIGHTS,
    )
    run.write_json(run.path("weights", "_settings.json"), to_dict(cfg))
    run.replace_table("weights", table)
    n_tags = len(corpus.tokens)
    stats = {
        "stage": "weights",
        "in": corpus.n_docs,
        "ok": corpus.n_docs,
        "rejected": 0,
        "samples_without_tags": int((counts == 0).sum()),
        "tags": n_tags,
        "distinct_tags": len(vocab),
        **extra,
        "tags_mapped": int(mapped_tok.sum()) if cfg.kg is not None else None,
        "tags_unmapped": int(n_tags - mapped_tok.sum()) if cfg.kg is not None else None,
        "distinct_tags_unmapped": int((kinds < 0).sum()) if cfg.kg is not None else None,
        "tags_by_match": (
            {
                k: int((kinds[corpus.tokens] == c).sum()) if n_tags else 0
                for c, k in enumerate(MATCH_KINDS)
            }
            if cfg.kg is not None
            else None
        ),
        "weight_min": float(res["weight"].min()) if corpus.n_docs else None,
        "weight_max": float(res["weight"].max()) if corpus.n_docs else None,
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    run.write_json(run.path("stats", "weights.json"), stats)
    return stats


def coverage(run: RunDir, kg: str | Path, *, top: int = 10, few: int = 3) -> dict[str, Any]:
    """``kg stats --run``: how a run's ``weights/`` covers the graph's concepts. Voids are
    kept Wikipedia nodes (highest PageRank first when pruned) and taxonomy concepts with no
    sample; ``few`` counts those with 1..``few`` samples."""
    kg = Path(kg)
    con = catalog.connect(run)
    if "weights" not in catalog.views(con):
        raise FileNotFoundError(f"weights/ is missing in {run.display}; run `zfoundry weights`")
    table = con.sql("SELECT concepts, sampling_weight FROM weights").to_arrow_table()
    w = table.column("sampling_weight").to_numpy()
    lists = table.column("concepts").combine_chunks()
    flat = pc.list_flatten(lists).to_numpy()
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    doc_w = np.repeat(w, lengths)
    index = ConceptIndex(kg, embeddings=False)
    n_ids = max(index.n_ids, int(flat.max()) + 1 if len(flat) else 0)
    count = np.bincount(flat, minlength=n_ids)
    weighted = np.bincount(flat, weights=doc_w, minlength=n_ids)
    nodes = pq.read_table(
        kg / "nodes",
        columns=[c for c in ("node_id", "title", "kept", "pagerank") if c in _node_columns(kg)],
    )
    kept = nodes.column("kept").to_numpy() if "kept" in nodes.column_names else None
    node_ids = nodes.column("node_id").to_numpy()
    universe = node_ids[kept] if kept is not None else node_ids
    order = universe
    if "pagerank" in nodes.column_names:
        pr = nodes.column("pagerank").to_numpy()
        sel = kept if kept is not None else np.ones(len(pr), bool)
        order = node_ids[sel][np.argsort(-pr[sel], kind="stable")]
    voids = order[count[order] == 0]
    few_mask = (count[universe] >= 1) & (count[universe] <= few)
    out: dict[str, Any] = {
        "samples": int(table.num_rows),
        "samples_with_concepts": int((lengths > 0).sum()),
        "concepts_seen": int((count > 0).sum()),
        "graph_concepts": len(universe),
        "graph_concepts_covered": int((count[universe] > 0).sum()),
        "graph_voids": len(voids),
        f"graph_concepts_with_1_to_{few}_samples": int(few_mask.sum()),
        "top_voids": index.names(voids[:top]),
        "weight_quantiles": _quantiles(w),
        "effective_sample_fraction": (
            float(w.sum() ** 2 / (w**2).sum() / len(w)) if len(w) and (w**2).sum() > 0 else None
        ),
        "concept_entropy_raw": entropy(count),
        "concept_entropy_weighted": entropy(weighted),
    }
    if index.concepts is not None:
        ids = index.concepts.column("concept_id").to_numpy()
        level = index.concepts.column("level").to_numpy()
        leaf = ids[(level == 0) & index.concepts.column("node_id").is_null().to_numpy()]
        out["taxonomy_leaves_unattached"] = len(leaf)
        out["taxonomy_leaf_voids"] = int((count[leaf] == 0).sum())
    seen = np.flatnonzero(count)
    best = seen[np.lexsort((seen, -count[seen]))][:top]
    out["top_concepts"] = [
        {
            "concept_id": int(c),
            "name": name,
            "samples": int(count[c]),
            "mean_weight": round(float(weighted[c] / count[c]), 4),
        }
        for c, name in zip(best, index.names(best), strict=True)
    ]
    return out


def _node_columns(kg: Path) -> list[str]:
    return pq.read_schema(kg / "nodes" / "00000.parquet").names


def _quantiles(x: np.ndarray) -> dict[str, float]:
    if not len(x):
        return {}
    qs = {"min": 0.0, "p10": 0.1, "p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}
    return {k: round(float(np.quantile(x, q)), 4) for k, q in qs.items()}


def plot_coverage(run: RunDir, kg: str | Path, path: str | Path) -> Path:
    """PNG: sampling-weight histogram and concept sample counts by rank, raw vs weighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = catalog.connect(run).sql("SELECT concepts, sampling_weight FROM weights")
    table = table.to_arrow_table()
    w = table.column("sampling_weight").to_numpy()
    lists = table.column("concepts").combine_chunks()
    flat = pc.list_flatten(lists).to_numpy()
    doc_w = np.repeat(w, pc.list_value_length(lists).to_numpy(zero_copy_only=False))
    raw = np.bincount(flat) if len(flat) else np.zeros(0)
    weighted = np.bincount(flat, weights=doc_w) if len(flat) else np.zeros(0)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.hist(w, bins=50, color="#4477aa")
    a.set(xlabel="sampling_weight", ylabel="samples", title="Weight distribution")
    a.set_yscale("log")
    for values, label in ((raw, "raw pool"), (weighted, "weighted")):
        v = np.sort(values[values > 0])[::-1]
        if len(v):
            b.loglog(np.arange(1, len(v) + 1), v / v.sum(), label=label)
    b.set(xlabel="concept rank", ylabel="share of concept mentions", title="Concept balance")
    b.legend()
    fig.suptitle(f"{run.display} against {Path(kg).name}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def balanced_weights(
    concepts: pa.Array | pa.ChunkedArray,
    kg: str | Path | None,
    cfg: WeightConfig | None = None,
    *,
    hierarchy: bool = True,
    boost: bool = True,
    prior: str = "uniform",
) -> np.ndarray:
    """Sampling weights of a subset of samples from their ``concepts`` lists alone (the
    ``weights/`` formula with concepts as the terms): what a recipe's ``balance =
    "concepts"`` uses so the *selected* rows are balanced, not the whole pool. With ``kg``
    the taxonomy's parents and ``kg boost`` factors apply as in ``weights_step``."""
    if isinstance(concepts, pa.ChunkedArray):
        concepts = concepts.combine_chunks() if concepts.num_chunks else pa.array([], concepts.type)
    concepts = (
        pc.fill_null(concepts, pa.scalar([], concepts.type)) if concepts.null_count else concepts
    )
    flat = pc.list_flatten(concepts).to_numpy().astype(np.int64)
    lengths = pc.list_value_length(concepts).to_numpy(zero_copy_only=False).astype(np.int64)
    parent = factor = None
    if kg is not None:
        index = ConceptIndex(kg, embeddings=False)
        if hierarchy and index.concepts is not None:
            parent = index.parent
        has_boost = boost and (concepts_dir(kg) / "boost.parquet").exists()
        factor = prior_factor(index, prior=prior, boost=has_boost)
        if len(flat) and flat.max() >= len(index.parent):
            raise ValueError(
                f"concepts: id {int(flat.max())} is not in {kg} ({len(index.parent)} ids); "
                "were the weights computed against another graph?"
            )
    space = concept_space(flat, parent, factor)
    indptr = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    n_terms = len(space["dense"])
    corpus = Corpus(indptr, space["of"].astype(np.int32), pa.nulls(n_terms, pa.string()))
    res = sampling_weights(
        corpus,
        cfg or WeightConfig(),
        concept_of_term=np.arange(n_terms),
        parent=space["parent"],
        prior=space["prior"],
    )
    return res["weight"]
