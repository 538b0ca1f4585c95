"""``zfoundry weights RUN_DIR [--kg KG_DIR]`` -> ``weights/`` (a global step).

Each sample's tags come from ``meta.tags`` when present, else from its caption
(``caption_alt``; ``knowledge_graph.tags``). With a knowledge graph, a tag maps to the node
whose title normalises to the same tag (``normalise_tag`` on both sides; kept nodes only
when the graph is pruned); unmapped tags are counted and carry no weight. Without one, each
distinct tag is its own concept. Weights: ``knowledge_graph.weights`` (docs/sampling.md).

Not yet (issue 7): redirect / alias and embedding matches, the taxonomy's parents as the
hierarchy, priors other than uniform.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from infra import catalog
from infra.config import Location, to_dict
from infra.storage import RunDir
from knowledge_graph.tags import normalise_tag, tags_for_table
from knowledge_graph.weights import WeightConfig, encode_tags, sampling_weights

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


def _samples(run: RunDir) -> pa.Table:
    con = catalog.connect(run)
    if "samples" not in catalog.views(con):
        raise FileNotFoundError(f"samples/ is missing in {run.display}; run ingest")
    return con.sql(
        """SELECT sample_id, caption_alt AS caption,
                  CAST(json_extract(meta, '$.tags') AS VARCHAR) AS tags
           FROM samples ORDER BY sample_id"""
    ).to_arrow_table()


def _title_index(kg: str) -> tuple[dict[str, int], int]:
    nodes = pq.read_table(Path(kg) / "nodes")
    if "kept" in nodes.column_names:
        nodes = nodes.filter(nodes.column("kept"))
    index: dict[str, int] = {}
    for node, title in zip(
        nodes.column("node_id").to_pylist(), nodes.column("title").to_pylist(), strict=True
    ):
        key = normalise_tag(title)
        if key is not None:
            index.setdefault(key, node)  # the first (lowest id) node wins a shared key
    return index, nodes.num_rows


def weights_step(run: RunDir, cfg: WeightsConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    samples = _samples(run)
    tags = tags_for_table(
        samples, tags_column="tags", caption_column="caption", max_words=cfg.max_words
    )
    corpus = encode_tags(tags)
    vocab = corpus.vocab.to_pylist()
    node_of_term = np.full(len(vocab), -1, np.int64)
    kg_nodes = None
    if cfg.kg is not None:
        index, kg_nodes = _title_index(cfg.kg)
        node_of_term = np.array([index.get(t, -1) for t in vocab], np.int64)
        # concepts are the distinct mapped nodes, numbered densely
        nodes, concept = np.unique(node_of_term, return_inverse=True)
        concept_of_term = np.where(node_of_term >= 0, concept - int(nodes[0] < 0), -1)
    else:
        concept_of_term = np.arange(len(vocab))
    res = sampling_weights(corpus, cfg.bm25, concept_of_term=concept_of_term)
    counts = np.diff(corpus.indptr)
    mapped_tok = node_of_term[corpus.tokens] >= 0 if len(corpus.tokens) else np.zeros(0, bool)
    nodes_flat = node_of_term[corpus.tokens][mapped_tok] if len(corpus.tokens) else []
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
        "kg_nodes": kg_nodes,
        "tags_mapped": int(mapped_tok.sum()) if cfg.kg is not None else None,
        "tags_unmapped": int(n_tags - mapped_tok.sum()) if cfg.kg is not None else None,
        "distinct_tags_unmapped": int((node_of_term < 0).sum()) if cfg.kg is not None else None,
        "weight_min": float(res["weight"].min()) if corpus.n_docs else None,
        "weight_max": float(res["weight"].max()) if corpus.n_docs else None,
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    run.write_json(run.path("stats", "weights.json"), stats)
    return stats
