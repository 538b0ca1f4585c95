"""``KG_DIR/concepts/``: the tag taxonomy hung under the graph, added concepts, prompt boosts,
and the one tag -> concept mapping that weights, boosts and coverage all use.

**Ids.** Wikipedia nodes keep their ``node_id`` (0 .. N-1, ``nodes/`` stays as built);
taxonomy nodes and added concepts get ``concept_id`` N, N+1, ... So one int64 names any
concept, and ``weights.concepts`` lists ids from both ranges.

**Files** (``kg taxonomy`` writes the folder; ``kg add`` and ``kg boost`` update it):

* ``nodes.parquet`` (``CONCEPT_NODES``): one row per taxonomy node. Level 0 rows are the
  distinct tags (leaves) and added concepts (``source = "added"``), levels 1.. the
  hierarchical k-means clusters (``knowledge_graph.taxonomy``), ``parent_id`` the cluster
  above. ``node_id`` is the Wikipedia node the row attaches to (``match``: ``title``,
  ``alias`` = a redirect title, ``embedding`` = nearest title vector with cosine ``sim`` >=
  ``match_threshold``), else null.
* ``tags.parquet``: each taxonomy tag -> its leaf ``concept_id`` and its count in the pool.
* ``title_vectors.parquet``: one unit vector per kept Wikipedia title (the embedding match;
  reused while the encoder and the kept set stay the same).
* ``boost.parquet``: per concept, how often user prompts mention it and the prior factor.
* ``_settings.json`` (encoder, taxonomy settings, N), ``stats.json``.

**Mapping** (``ConceptIndex.map``), first hit wins, every tag normalised as in
``knowledge_graph.tags.normalise_tag``:

1. ``title``: a kept node whose title normalises to the tag;
2. ``alias``: a redirect title (``aliases/``) that normalises to the tag, to a kept node;
3. ``concept``: a taxonomy tag or added concept (-> its attached node when it has one, else
   its own concept id);
4. ``embedding``: the nearest kept title or unattached leaf by cosine of the encoder's
   vectors, when >= ``match_threshold`` (needs ``concepts/``: its encoder and vectors);

otherwise the tag is unmapped and counted.

**Hierarchy** (``ConceptIndex.parent``): a concept row's parent is its ``parent_id``; a
Wikipedia node's parent is the cluster above the first leaf attached to it; anything else
is a root.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from infra.config import Location, from_dict, require, to_dict
from knowledge_graph.encoders import CachedEncoder, EncoderConfig, TextEncoder, load_encoder
from knowledge_graph.tags import extract_tags, normalise_tag
from knowledge_graph.taxonomy import (
    LEAF_OF_TAG,
    Namer,
    Taxonomy,
    TaxonomyConfig,
    add_concepts,
    build_taxonomy,
    nodes_schema,
)

log = logging.getLogger(__name__)

MATCH_KINDS = ("title", "alias", "concept", "embedding")
"""How a tag found its concept, in the order tried (code = index; -1 = unmapped)."""
SEARCH_BATCH = 8192
CACHE = "_cache"
"""``KG_DIR/_cache/``: text vectors per encoder (``CachedEncoder``), shared by the
generatability judge of ``kg prune`` and ``kg taxonomy``; cleared by a rebuild."""
TAGS = pa.schema([("tag", pa.string()), ("concept_id", pa.int64()), ("count", pa.int64())])
BOOST = pa.schema(
    [
        ("concept_id", pa.int64()),
        ("name", pa.string()),
        ("prompt_count", pa.int64()),
        ("boost", pa.float64()),
    ]
)


def concept_nodes_schema(dim: int) -> pa.Schema:
    """Schema of ``concepts/nodes.parquet`` for ``dim``-dimensional centroids."""
    base = nodes_schema(dim)
    return pa.schema(
        [
            *(base.field(n) for n in ("concept_id", "level", "name", "parent_id", "size")),
            pa.field("node_id", pa.int64()),
            pa.field("match", pa.string()),
            pa.field("sim", pa.float32()),
            pa.field("source", pa.string()),
            base.field("centroid"),
        ]
    )


@dataclass(frozen=True, kw_only=True)
class ConceptsConfig:
    """Settings of ``zfoundry kg taxonomy``."""

    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    """Hierarchical k-means over the tag vectors (levels, iterations, seed)."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """Text encoder for tags, titles and added concepts."""
    match_threshold: float = 0.75
    """Least cosine for an embedding match (taxonomy node -> title, tag -> concept)."""
    embed_titles: bool = True
    """Embed every kept Wikipedia title (the embedding match; about 900 titles/s per CPU
    core with MiniLM, far faster on a GPU). Off: title and alias matches only."""
    min_tag_count: int = 1
    """Tags seen fewer times in the pool stay out of the taxonomy."""
    max_words: int = 3
    """Longest caption noun phrase kept as a tag."""

    def __post_init__(self) -> None:
        require(
            -1.0 <= self.match_threshold <= 1.0,
            "match_threshold",
            self.match_threshold,
            "must be in [-1, 1]",
        )
        require(self.min_tag_count >= 1, "min_tag_count", self.min_tag_count, "must be >= 1")
        require(self.max_words >= 1, "max_words", self.max_words, "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class BoostConfig:
    """Settings of ``zfoundry kg boost``."""

    beta: float = 1.0
    """Prior factor of a concept mentioned n times: ``1 + beta * ln(1 + n)``."""
    max_words: int = 3
    """Longest prompt noun phrase kept as a tag."""

    def __post_init__(self) -> None:
        require(self.beta >= 0, "beta", self.beta, "must be >= 0")
        require(self.max_words >= 1, "max_words", self.max_words, "must be >= 1")


# ---------------------------------------------------------------- reading the graph


def _require_graph(kg_dir: Path) -> None:
    if not (kg_dir / "_SUCCESS.json").exists():
        raise FileNotFoundError(f"{kg_dir} holds no finished graph; run `zfoundry kg build`")


def graph_size(kg_dir: str | Path) -> int:
    """N: the number of Wikipedia nodes (the first concept id)."""
    return pq.read_metadata(Path(kg_dir) / "nodes" / "00000.parquet").num_rows


def kept_nodes(kg_dir: str | Path) -> pa.Table:
    """``node_id``, ``title`` of the nodes a pruned graph keeps (all nodes when unpruned)."""
    kg_dir = Path(kg_dir)
    _require_graph(kg_dir)
    cols = pq.read_schema(kg_dir / "nodes" / "00000.parquet").names
    nodes = pq.read_table(
        kg_dir / "nodes", columns=["node_id", "title", *(["kept"] if "kept" in cols else [])]
    )
    if "kept" in cols:
        nodes = nodes.filter(nodes.column("kept")).drop_columns(["kept"])
    return nodes


def concept_names(kg_dir: str | Path) -> list[str | None]:
    """Name of every id a ``weights.concepts`` list can hold: page titles for node ids (None
    for nodes pruning dropped), taxonomy names for concept ids (``>= graph_size``)."""
    kg_dir = Path(kg_dir)
    nodes = kept_nodes(kg_dir)
    names: list[str | None] = [None] * graph_size(kg_dir)
    for node, title in zip(
        nodes.column("node_id").to_pylist(), nodes.column("title").to_pylist(), strict=True
    ):
        names[node] = title
    if read_settings(kg_dir) is not None:
        concepts = read_concepts(kg_dir)[0]
        ids = concepts.column("concept_id").to_pylist()
        names += [None] * max(0, max(ids, default=-1) + 1 - len(names))
        for cid, name in zip(ids, concepts.column("name").to_pylist(), strict=True):
            names[cid] = name
    return names


def _keys(titles: Sequence[str]) -> list[str | None]:
    return [normalise_tag(t) for t in titles]


class _TitleIndex:
    """Normalised title / redirect title -> kept node id."""

    def __init__(self, kg_dir: Path):
        nodes = kept_nodes(kg_dir)
        self.node_ids = nodes.column("node_id").to_numpy()
        self.titles = nodes.column("title").to_pylist()
        self.exact: dict[str, tuple[int, int]] = {}
        for node, key in zip(self.node_ids.tolist(), _keys(self.titles), strict=True):
            if key is not None:
                self.exact.setdefault(key, (node, 0))  # lowest node id wins a shared key
        aliases = kg_dir / "aliases"
        if aliases.is_dir():
            table = pq.read_table(aliases, columns=["title", "node_id"])
            kept = pc.is_in(table.column("node_id"), value_set=pa.array(self.node_ids))
            table = table.filter(kept)
            for node, key in zip(
                table.column("node_id").to_pylist(),
                _keys(table.column("title").to_pylist()),
                strict=True,
            ):
                if key is not None:
                    self.exact.setdefault(key, (node, 1))

    def get(self, key: str | None) -> tuple[int, int]:
        """(node id, 0 title / 1 alias), or (-1, -1)."""
        return self.exact.get(key, (-1, -1)) if key is not None else (-1, -1)


def _matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    dim = col.type.list_size
    return col.flatten().to_numpy().reshape(-1, dim).astype(np.float32, copy=False)


def _fixed(x: np.ndarray) -> pa.FixedSizeListArray:
    x = np.ascontiguousarray(x, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])


def _nearest(queries: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of the most similar ``base`` row, its cosine) per query; (-1, -inf) if none."""
    import faiss

    if not len(base) or not len(queries):
        return np.full(len(queries), -1), np.full(len(queries), -np.inf, np.float32)
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, np.float32))
    rows = np.empty(len(queries), np.int64)
    sims = np.empty(len(queries), np.float32)
    for s in range(0, len(queries), SEARCH_BATCH):
        d, i = index.search(np.ascontiguousarray(queries[s : s + SEARCH_BATCH]), 1)
        rows[s : s + SEARCH_BATCH], sims[s : s + SEARCH_BATCH] = i[:, 0], d[:, 0]
    return rows, sims


# ---------------------------------------------------------------- the concepts/ folder


def concepts_dir(kg_dir: str | Path) -> Path:
    return Path(kg_dir) / "concepts"


def read_settings(kg_dir: str | Path) -> dict[str, Any] | None:
    path = concepts_dir(kg_dir) / "_settings.json"
    return json.loads(path.read_text()) if path.exists() else None


def _encoder_of(settings: dict[str, Any]) -> EncoderConfig:
    return from_dict(EncoderConfig, settings["encoder"], source="concepts/_settings.json")


def _title_vectors(
    kg_dir: Path, index: _TitleIndex, encoder: TextEncoder, *, progress: bool
) -> tuple[np.ndarray, bool]:
    """Unit vectors of the kept titles (row order of ``index``), and whether they were
    reused from ``concepts/title_vectors.parquet``."""
    path = concepts_dir(kg_dir) / "title_vectors.parquet"
    if path.exists():
        meta = pq.read_schema(path).metadata or {}
        table = pq.read_table(path)
        same = meta.get(b"encoder", b"").decode() == encoder.name and np.array_equal(
            table.column("node_id").to_numpy(), index.node_ids
        )
        if same:
            return _matrix(table.column("vector")), True
    cached = CachedEncoder(encoder, kg_dir / CACHE)
    return cached.encode(index.titles, progress=progress), False


def _write_title_vectors(folder: Path, node_ids: np.ndarray, x: np.ndarray, name: str) -> None:
    table = pa.table({"node_id": pa.array(node_ids, pa.int64()), "vector": _fixed(x)})
    table = table.replace_schema_metadata({"encoder": name})
    pq.write_table(table, folder / "title_vectors.parquet", compression="zstd")


def _attach(
    names: Sequence[str],
    vectors: np.ndarray,
    index: _TitleIndex,
    title_vectors: np.ndarray | None,
    threshold: float,
) -> tuple[np.ndarray, list[str | None], np.ndarray]:
    """(node id or -1, match kind, cosine or nan) per name: title / alias, then embedding."""
    node = np.full(len(names), -1, np.int64)
    match: list[str | None] = [None] * len(names)
    sim = np.full(len(names), np.nan, np.float32)
    for i, key in enumerate(_keys(names)):
        hit, kind = index.get(key)
        if hit >= 0:
            node[i], match[i] = hit, ("title", "alias")[kind]
    todo = np.flatnonzero(node < 0)
    if title_vectors is not None and todo.size:
        rows, sims = _nearest(vectors[todo], title_vectors)
        ok = (rows >= 0) & (sims >= threshold)
        node[todo[ok]] = index.node_ids[rows[ok]]
        sim[todo[ok]] = sims[ok]
        for i in todo[ok]:
            match[i] = "embedding"
    return node, match, sim


def _write_folder(kg_dir: Path, write) -> None:
    """Write a new ``concepts/`` next to the old one, then swap (never half-written)."""
    final = concepts_dir(kg_dir)
    tmp = kg_dir / "_concepts_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    old = kg_dir / "_concepts_old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def tag_counts(tag_lists: pa.Array | pa.ChunkedArray, min_count: int = 1) -> pa.Table:
    """Distinct tags of a list<string> column with their counts, most frequent first (ties
    by tag), those seen fewer than ``min_count`` times dropped."""
    if isinstance(tag_lists, pa.ChunkedArray):
        tag_lists = tag_lists.combine_chunks()
    flat = pc.drop_null(pc.list_flatten(tag_lists))
    flat = flat.filter(pc.greater(pc.utf8_length(flat), 0))
    vc = pc.value_counts(flat)
    table = pa.table(
        {"tag": vc.field("values"), "count": pc.cast(vc.field("counts"), pa.int64())}
    ).filter(pc.greater_equal(pc.field("count"), min_count))
    return table.sort_by([("count", "descending"), ("tag", "ascending")])


def build_concepts(
    kg_dir: str | Path,
    tag_lists: pa.Array | pa.ChunkedArray,
    cfg: ConceptsConfig = ConceptsConfig(),
    *,
    namer: Namer | None = None,
    source: str = "",
    progress: bool = False,
) -> dict[str, Any]:
    """``kg taxonomy``: embed the pool's distinct tags, cluster them into a taxonomy (tag
    counts weigh level 1), attach its nodes to the graph and write ``concepts/``."""
    t0 = time.perf_counter()
    kg_dir = Path(kg_dir)
    _require_graph(kg_dir)
    counts = tag_counts(tag_lists, cfg.min_tag_count)
    if not counts.num_rows:
        raise ValueError(
            f"kg taxonomy: no tags (min_tag_count {cfg.min_tag_count}) in {source or 'input'}"
        )
    tags = counts.column("tag").to_pylist()
    fingerprint = _fingerprint(counts)
    old = read_settings(kg_dir)
    if old and old.get("config") == to_dict(cfg) and old.get("tags_sha256") == fingerprint:
        stats = json.loads((concepts_dir(kg_dir) / "stats.json").read_text())
        return stats | {"skipped_step": True}
    encoder = load_encoder(cfg.encoder)
    vectors = encoder.encode(tags, progress=progress)
    tax = build_taxonomy(
        tags,
        vectors,
        cfg.taxonomy,
        weights=counts.column("count").to_numpy().astype(np.float64),
        namer=namer,
    )
    n = graph_size(kg_dir)
    index = _TitleIndex(kg_dir)
    title_vectors, reused = None, False
    if cfg.embed_titles:
        title_vectors, reused = _title_vectors(kg_dir, index, encoder, progress=progress)
    nodes = tax.nodes
    node, match, sim = _attach(
        nodes.column("name").to_pylist(),
        tax.centroids(),
        index,
        title_vectors,
        cfg.match_threshold,
    )
    table = _concept_table(nodes, n, node, match, sim, "taxonomy")
    leaf = pc.add(tax.leaf_of_tag.column("concept_id"), n)
    tags_table = pa.table(
        {"tag": tax.leaf_of_tag.column("tag"), "concept_id": leaf, "count": counts["count"]},
        schema=TAGS,
    )
    settings = {
        "format": "zfoundry.concepts/1",
        "graph_nodes": n,
        "encoder": to_dict(cfg.encoder),
        "encoder_name": encoder.name,
        "config": to_dict(cfg),
        "built_from": source,
        "tags_sha256": fingerprint,
    }
    level = table.column("level").to_numpy()
    stats = {
        "stage": "kg_taxonomy",
        "tags": int(pc.sum(counts.column("count")).as_py()),
        "distinct_tags": counts.num_rows,
        "levels": {str(t): int((level == t).sum()) for t in np.unique(level)},
        "attached": {k: match.count(k) for k in ("title", "alias", "embedding")},
        "unattached": int((node < 0).sum()),
        "title_vectors": None if title_vectors is None else len(title_vectors),
        "title_vectors_reused": reused,
        "encoder": encoder.name,
        "boost_cleared": (concepts_dir(kg_dir) / "boost.parquet").exists(),
    }

    def write(folder: Path) -> None:
        pq.write_table(table, folder / "nodes.parquet", compression="zstd")
        pq.write_table(tags_table, folder / "tags.parquet")
        if title_vectors is not None:
            _write_title_vectors(folder, index.node_ids, title_vectors, encoder.name)
        (folder / "_settings.json").write_text(json.dumps(settings, indent=2))
        stats["wall_seconds"] = round(time.perf_counter() - t0, 3)
        (folder / "stats.json").write_text(json.dumps(stats, indent=2))

    _write_folder(kg_dir, write)
    return stats


def _fingerprint(counts: pa.Table) -> str:
    h = hashlib.sha256()
    for tag, n in zip(
        counts.column("tag").to_pylist(), counts.column("count").to_pylist(), strict=True
    ):
        h.update(f"{tag}\t{n}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True, kw_only=True)
class TaxonomyStep(ConceptsConfig):
    """The ``taxonomy`` pipeline step: ``kg taxonomy KG_DIR --run`` on the run's tags."""

    kg: Location | None = None
    """Knowledge-graph directory whose ``concepts/`` the step (re)writes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.kg is not None, "kg", self.kg, "is required (a knowledge-graph directory)")


def taxonomy_step(run, cfg: TaxonomyStep, *, progress: bool = False) -> dict[str, Any]:
    """Build ``KG_DIR/concepts/`` from a run's tags; skipped when neither the settings nor
    the tag counts changed since the last build."""
    from knowledge_graph.sampling import run_tags

    concepts = ConceptsConfig(**{f.name: getattr(cfg, f.name) for f in fields(ConceptsConfig)})
    tags = run_tags(run, max_words=cfg.max_words)
    stats = build_concepts(cfg.kg, tags, concepts, source=run.display, progress=progress)
    out = {"stage": "taxonomy", "in": len(tags), "ok": len(tags), "rejected": 0, **stats}
    run.write_json(run.path("stats", "taxonomy.json"), out)
    return out


def _concept_table(nodes: pa.Table, n: int, node, match, sim, source: str) -> pa.Table:
    dim = nodes.schema.field("centroid").type.list_size
    return pa.table(
        {
            "concept_id": pc.add(nodes.column("concept_id"), n),
            "level": nodes.column("level"),
            "name": nodes.column("name"),
            "parent_id": pc.add(nodes.column("parent_id"), n),
            "size": nodes.column("size"),
            "node_id": pa.array(node, pa.int64(), mask=np.asarray(node) < 0),
            "match": pa.array(match, pa.string()),
            "sim": pa.array(sim, pa.float32(), mask=np.isnan(sim)),
            "source": pa.array([source] * nodes.num_rows, pa.string()),
            "centroid": nodes.column("centroid"),
        },
        schema=concept_nodes_schema(dim),
    )


def read_concepts(kg_dir: str | Path) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """(nodes, tags, settings) of ``concepts/``; FileNotFoundError when there is none."""
    folder = concepts_dir(kg_dir)
    settings = read_settings(kg_dir)
    if settings is None:
        raise FileNotFoundError(f"{folder} holds no taxonomy; run `zfoundry kg taxonomy`")
    return pq.read_table(folder / "nodes.parquet"), pq.read_table(folder / "tags.parquet"), settings


def add_new_concepts(
    kg_dir: str | Path, names: Sequence[str], *, progress: bool = False
) -> dict[str, Any]:
    """``kg add``: each new (e.g. trending) concept becomes a leaf under the level-1 cluster
    with the most similar centroid and attaches to the graph like the taxonomy did."""
    t0 = time.perf_counter()
    kg_dir = Path(kg_dir)
    nodes, tags, settings = read_concepts(kg_dir)
    n = settings["graph_nodes"]
    keys, bad = [], []
    for name in names:
        key = normalise_tag(name) if name.strip() else None
        (keys if key else bad).append(key or name)
    keys = list(dict.fromkeys(keys))
    if not keys:
        raise ValueError(f"kg add: no usable concept names (rejected: {bad[:5]})")
    encoder = load_encoder(_encoder_of(settings))
    vectors = encoder.encode(keys, progress=progress)
    local = nodes.select(["concept_id", "level", "name", "parent_id", "size", "centroid"])
    local = local.set_column(0, "concept_id", pc.subtract(local.column("concept_id"), n))
    local = local.set_column(3, "parent_id", pc.subtract(local.column("parent_id"), n))
    local = local.cast(nodes_schema(local.schema.field("centroid").type.list_size))
    leaf_of_tag = pa.table(
        {"tag": tags.column("tag"), "concept_id": pc.subtract(tags.column("concept_id"), n)},
        schema=LEAF_OF_TAG,
    )
    grown = add_concepts(Taxonomy(nodes=local, leaf_of_tag=leaf_of_tag), keys, vectors)
    new = grown.nodes.slice(nodes.num_rows)
    index = _TitleIndex(kg_dir)
    cfg = from_dict(ConceptsConfig, settings["config"], source="concepts/_settings.json")
    title_vectors = None
    if (concepts_dir(kg_dir) / "title_vectors.parquet").exists():
        title_vectors, _ = _title_vectors(kg_dir, index, encoder, progress=progress)
    node, match, sim = _attach(
        new.column("name").to_pylist(),
        _matrix(new.column("centroid")),
        index,
        title_vectors,
        cfg.match_threshold,
    )
    added = _concept_table(new, n, node, match, sim, "added")
    sizes = grown.nodes.column("size").slice(0, nodes.num_rows)
    old = nodes.set_column(nodes.schema.get_field_index("size"), "size", sizes)
    table = pa.concat_tables([old, added]).combine_chunks()
    new_tags = grown.leaf_of_tag.slice(tags.num_rows)
    new_tags = pa.table(
        {
            "tag": new_tags.column("tag"),
            "concept_id": pc.add(new_tags.column("concept_id"), n),
            "count": pa.array(np.zeros(new_tags.num_rows, np.int64)),
        },
        schema=TAGS,
    )
    present = set(tags.column("tag").to_pylist())
    fresh = [k for k in keys if k not in present]
    new_tags = new_tags.filter(pc.is_in(new_tags["tag"], pa.array(fresh, pa.string())))
    tags_table = pa.concat_tables([tags, new_tags])
    folder = concepts_dir(kg_dir)
    pq.write_table(table, folder / "_nodes.tmp.parquet", compression="zstd")
    pq.write_table(tags_table, folder / "_tags.tmp.parquet")
    (folder / "_nodes.tmp.parquet").replace(folder / "nodes.parquet")
    (folder / "_tags.tmp.parquet").replace(folder / "tags.parquet")
    return {
        "stage": "kg_add",
        "given": len(names),
        "rejected": bad,
        "added": added.num_rows,
        "already_present": len(keys) - added.num_rows,
        "attached": {k: match.count(k) for k in ("title", "alias", "embedding")},
        "new": [
            {
                "concept_id": r["concept_id"],
                "name": r["name"],
                "parent": r["parent_id"],
                "node_id": r["node_id"],
                "match": r["match"],
            }
            for r in added.select(
                ["concept_id", "name", "parent_id", "node_id", "match"]
            ).to_pylist()
        ],
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }


# ---------------------------------------------------------------- tag -> concept


class ConceptIndex:
    """Tag -> concept id over a graph and its ``concepts/`` (module docstring: the order)."""

    def __init__(
        self,
        kg_dir: str | Path,
        *,
        match_threshold: float | None = None,
        embeddings: bool = True,
    ):
        kg_dir = Path(kg_dir)
        self.kg_dir = kg_dir
        self.n_nodes = graph_size(kg_dir)
        self.titles = _TitleIndex(kg_dir)
        self.settings = read_settings(kg_dir)
        self.concepts: pa.Table | None = None
        self.by_tag: dict[str, int] = {}
        self.n_ids = self.n_nodes
        self.parent = np.full(self.n_nodes, -1, np.int64)
        self.encoder: TextEncoder | None = None
        self.threshold = match_threshold
        self._targets: tuple[np.ndarray, np.ndarray] | None = None
        if self.settings is None:
            return
        nodes, tags, _ = read_concepts(kg_dir)
        self.concepts = nodes
        ids = nodes.column("concept_id").to_numpy()
        self.n_ids = int(ids.max()) + 1 if len(ids) else self.n_nodes
        parent = np.full(self.n_ids, -1, np.int64)
        parent[ids] = nodes.column("parent_id").fill_null(-1).to_numpy()
        attached = nodes.column("node_id").fill_null(-1).to_numpy()
        level = nodes.column("level").to_numpy()
        leaf_node = np.where(level == 0, attached, -1)
        target = np.where(leaf_node >= 0, leaf_node, ids)  # a leaf stands for its node
        for row in np.flatnonzero(leaf_node >= 0)[::-1]:  # the first attached leaf wins
            parent[leaf_node[row]] = parent[ids[row]]
        self.parent = parent
        target_of = dict(zip(ids.tolist(), target.tolist(), strict=True))
        for tag, cid in zip(
            tags.column("tag").to_pylist(), tags.column("concept_id").to_pylist(), strict=True
        ):
            self.by_tag.setdefault(tag, target_of[cid])
        for name, cid, lv in zip(
            nodes.column("name").to_pylist(), ids.tolist(), level.tolist(), strict=True
        ):
            if lv == 0:
                self.by_tag.setdefault(name, target_of[cid])
        if self.threshold is None:
            self.threshold = self.settings["config"]["match_threshold"]
        if embeddings:
            self.encoder = load_encoder(_encoder_of(self.settings))
            base, base_ids = [], []
            folder = concepts_dir(kg_dir)
            if (folder / "title_vectors.parquet").exists():
                tv, _ = _title_vectors(kg_dir, self.titles, self.encoder, progress=False)
                base.append(tv)
                base_ids.append(self.titles.node_ids)
            free = (level == 0) & (attached < 0)
            if free.any():
                base.append(_matrix(nodes.column("centroid").filter(pa.array(free))))
                base_ids.append(ids[free])
            if base:
                self._targets = (np.concatenate(base), np.concatenate(base_ids))

    def map(self, tags: Sequence[str], *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(concept id or -1, match code = index into ``MATCH_KINDS`` or -1) per tag."""
        out = np.full(len(tags), -1, np.int64)
        kind = np.full(len(tags), -1, np.int8)
        for i, tag in enumerate(tags):
            key = normalise_tag(tag) if tag else None
            if key is None:
                continue
            hit, k = self.titles.get(key)
            if hit >= 0:
                out[i], kind[i] = hit, k
            elif (c := self.by_tag.get(key)) is not None:
                out[i], kind[i] = c, 2
        todo = np.flatnonzero(out < 0)
        todo = np.array([i for i in todo if tags[i] and normalise_tag(tags[i])], np.int64)
        if self._targets is not None and self.encoder is not None and todo.size:
            q = self.encoder.encode([tags[i] for i in todo], progress=progress)
            rows, sims = _nearest(q, self._targets[0])
            ok = (rows >= 0) & (sims >= self.threshold)
            out[todo[ok]] = self._targets[1][rows[ok]]
            kind[todo[ok]] = 3
        return out, kind

    def names(self, ids: Sequence[int]) -> list[str]:
        """Display name of each concept id (title of a node, name of a concept row)."""
        ids = np.asarray(ids, np.int64)
        out = [""] * len(ids)
        pos = dict(
            zip(self.titles.node_ids.tolist(), range(len(self.titles.node_ids)), strict=True)
        )
        cnames = {}
        if self.concepts is not None:
            cnames = dict(
                zip(
                    self.concepts.column("concept_id").to_pylist(),
                    self.concepts.column("name").to_pylist(),
                    strict=True,
                )
            )
        for i, c in enumerate(ids.tolist()):
            if c < self.n_nodes:
                out[i] = self.titles.titles[pos[c]] if c in pos else f"node {c}"
            else:
                out[i] = cnames.get(c, f"concept {c}")
        return out

    def boost(self) -> np.ndarray:
        """Prior factor per id (``concepts/boost.parquet``; 1 where absent)."""
        out = np.ones(self.n_ids, np.float64)
        path = concepts_dir(self.kg_dir) / "boost.parquet"
        if path.exists():
            table = pq.read_table(path)
            ids = table.column("concept_id").to_numpy()
            ok = ids < self.n_ids
            out[ids[ok]] = table.column("boost").to_numpy()[ok]
        return out


def boost_from_prompts(
    kg_dir: str | Path,
    prompts: Sequence[str],
    cfg: BoostConfig = BoostConfig(),
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """``kg boost``: concepts the prompts mention (tags as in captions, mapped like the
    pool's) get prior factor ``1 + beta ln(1 + n)``; written to ``concepts/boost.parquet``."""
    t0 = time.perf_counter()
    kg_dir = Path(kg_dir)
    index = ConceptIndex(kg_dir)
    tags = [t for p in prompts for t in extract_tags(p, max_words=cfg.max_words)]
    distinct = list(dict.fromkeys(tags))
    ids, kind = index.map(distinct, progress=progress)
    id_of = dict(zip(distinct, ids.tolist(), strict=True))
    per_tag = np.array([id_of[t] for t in tags], np.int64)
    mapped = per_tag[per_tag >= 0]
    concept, count = np.unique(mapped, return_counts=True)
    boost = 1.0 + cfg.beta * np.log1p(count)
    table = pa.table(
        {
            "concept_id": pa.array(concept, pa.int64()),
            "name": pa.array(index.names(concept), pa.string()),
            "prompt_count": pa.array(count, pa.int64()),
            "boost": pa.array(boost, pa.float64()),
        },
        schema=BOOST,
    )
    folder = concepts_dir(kg_dir)
    folder.mkdir(exist_ok=True)
    pq.write_table(table, folder / "_boost.tmp.parquet")
    (folder / "_boost.tmp.parquet").replace(folder / "boost.parquet")
    order = np.argsort(-count, kind="stable")[:10]
    return {
        "stage": "kg_boost",
        "prompts": len(prompts),
        "tags": len(tags),
        "tags_mapped": len(mapped),
        "tags_unmapped": int(len(tags) - len(mapped)),
        "by_match": {k: int((kind == c).sum()) for c, k in enumerate(MATCH_KINDS)},
        "concepts_boosted": len(concept),
        "max_boost": float(boost.max()) if len(boost) else None,
        "top": [
            {
                "concept_id": int(concept[i]),
                "name": table["name"][int(i)].as_py(),
                "prompt_count": int(count[i]),
                "boost": round(float(boost[i]), 4),
            }
            for i in order
        ],
        "beta": cfg.beta,
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
