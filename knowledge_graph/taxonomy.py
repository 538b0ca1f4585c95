"""Tag taxonomy by hierarchical k-means (Vo et al. 2024, "Automatic Data Curation for
Self-Supervised Learning: A Clustering-Based Approach"), named and attached to the graph.

**Algorithm.** The input is one unit vector per tag (a short noun phrase from the captions).
Repeated tags become one leaf whose vector is the renormalised mean of their rows. Level 1 is
k-means on the leaf vectors (``levels[0]`` clusters, optionally weighted by ``weights``, e.g.
tag frequencies); level ``t > 1`` is k-means on the ``levels[t-2]`` centroids of level
``t - 1``, unweighted. Each item goes to its nearest final centroid, so every level is a
partition of the one below it and the levels nest into a tree. A level asking for more
clusters than it has items is clamped to the item count (logged); clusters that end up
empty are dropped, so a level may hold fewer clusters than asked. ``spherical`` k-means
(cosine; faiss renormalises the centroids each iteration) is the default.

**Balanced.** Plain k-means on tags spends its clusters where tags are dense: a thousand
near-synonyms of "dog" would get many clusters and a rare domain none. Clustering the
centroids of the level below instead of the tags means each coarse cluster covers a region
of concepts, however many tags sit in each one, so coarse levels spread evenly over the
support of the data rather than following its density; sizes (leaf counts) still differ and
are reported, not equalised. The optional resampling refinement of Vo et al.
(``resample_points = r > 0``, at every level after the first, ``resample_steps`` times):
take the ``r`` items nearest each centroid, re-run k-means on that union (at most ``k * r``
points, each cluster contributing alike) and reassign all items to the new centroids. It
pulls centroids away from dense regions towards a uniform cover; r of about half the mean
cluster size is their setting.

**Names.** A cluster is named after the leaf tag under it that is nearest its centroid
(cosine; ties go to the first tag), or by ``namer(member_tags) -> str`` given the
``namer_tags`` leaf tags under it nearest the centroid, nearest first. A level-1 cluster and
its representative leaf therefore share a name, and so can clusters at different levels.

**Complexity** (n leaves, d dims, k_t clusters at level t, i = niter): level 1 costs
O(i n k_1 d) (faiss subsamples to 256 points per centroid above that), level t
O(i k_{t-1} k_t d), resampling O(steps i k_t r k_t d) per level; names and sizes are
O(levels n d) plus one O(n log n) sort per level. Memory is O(n d) plus faiss' blocks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from curation.vectors.index import as_matrix, check_unit
from infra.config import require

log = logging.getLogger(__name__)

Namer = Callable[[list[str]], str]
INIT_METHODS = {
    "random": "ClusteringInitMethod_RANDOM",
    "kmeans++": "ClusteringInitMethod_KMEANS_PLUS_PLUS",
    "afk-mc2": "ClusteringInitMethod_AFK_MC2",
}
LEAF_OF_TAG = pa.schema([("tag", pa.string()), ("concept_id", pa.int64())])
ATTACHMENT = pa.schema(
    [
        ("concept_id", pa.int64()),
        ("node_id", pa.int64()),
        ("match", pa.string()),
        ("sim", pa.float32()),
    ]
)
SEARCH_BATCH = 8192


def nodes_schema(dim: int) -> pa.Schema:
    """Schema of ``Taxonomy.nodes`` for ``dim``-dimensional vectors."""
    return pa.schema(
        [
            ("concept_id", pa.int64()),
            ("level", pa.int32()),
            ("name", pa.string()),
            ("parent_id", pa.int64()),
            ("size", pa.int64()),
            ("centroid", pa.list_(pa.float32(), dim)),
        ]
    )


@dataclass(frozen=True, kw_only=True)
class TaxonomyConfig:
    """Settings of the tag taxonomy (hierarchical k-means)."""

    levels: tuple[int, ...] = (256, 32, 8)
    """Clusters per level, finest first; strictly decreasing, each >= 1."""
    niter: int = 20
    """k-means iterations per run."""
    nredo: int = 1
    """k-means restarts per run (the best objective is kept); worth raising when a level asks
    for about as many clusters as there are real groups, where one run can merge two."""
    seed: int = 0
    """Seed of every k-means run (same inputs and seed give the same taxonomy)."""
    resample_points: int = 0
    """Resampling refinement: items taken nearest each centroid (0 = off); levels >= 2."""
    resample_steps: int = 10
    """Resampling rounds per level when ``resample_points > 0``."""
    spherical: bool = True
    """Cosine k-means (unit centroids); False = Euclidean k-means (centroids are still
    reported renormalised)."""
    init: str = "kmeans++"
    """Centroid initialisation: one of ``INIT_METHODS``."""
    namer_tags: int = 32
    """How many member tags (nearest the centroid first) a ``namer`` is shown."""

    def __post_init__(self) -> None:
        levels = tuple(self.levels)
        object.__setattr__(self, "levels", levels)
        require(len(levels) >= 1, "levels", levels, "must name at least one level")
        require(
            all(isinstance(k, int) and k >= 1 for k in levels),
            "levels",
            levels,
            "must be integers >= 1",
        )
        require(
            all(a > b for a, b in pairwise(levels)),
            "levels",
            levels,
            "must be strictly decreasing (finest level first)",
        )
        require(self.niter >= 1, "niter", self.niter, "must be >= 1")
        require(self.nredo >= 1, "nredo", self.nredo, "must be >= 1")
        require(self.resample_points >= 0, "resample_points", self.resample_points, "must be >= 0")
        require(self.resample_steps >= 1, "resample_steps", self.resample_steps, "must be >= 1")
        require(
            self.init in INIT_METHODS, "init", self.init, f"must be one of {list(INIT_METHODS)}"
        )
        require(self.namer_tags >= 1, "namer_tags", self.namer_tags, "must be >= 1")


@dataclass(frozen=True)
class Taxonomy:
    nodes: pa.Table
    """``nodes_schema(dim)``, one row per concept, sorted by ``concept_id``: level 0 = the
    distinct tags (leaves), 1.. = clusters; ``parent_id`` is null at the coarsest level and
    ``size`` counts the leaves under a node."""
    leaf_of_tag: pa.Table
    """``LEAF_OF_TAG``: each input tag (in input order, repeats included) -> its leaf."""

    @property
    def dim(self) -> int:
        return self.nodes.schema.field("centroid").type.list_size

    def centroids(self) -> np.ndarray:
        """(nodes, dim) float32 unit vectors, in row order."""
        col = self.nodes.column("centroid").combine_chunks()
        return col.flatten().to_numpy().reshape(-1, self.dim)


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - installed with either extra
        raise ImportError("knowledge_graph.taxonomy needs faiss: install zfoundry[cpu]") from e
    return faiss


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _strings(values: Sequence[str] | pa.Array | pa.ChunkedArray, what: str) -> pa.Array:
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    try:
        arr = pa.array(arr, pa.string()) if not isinstance(arr, pa.Array) else arr.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"{what}: must be strings ({e})") from e
    return arr


def _leaves(
    arr: pa.Array, vectors: np.ndarray, weights: np.ndarray | None, dim: int | None = None
) -> tuple[pa.Array, np.ndarray, np.ndarray | None, np.ndarray]:
    """(distinct tags in first-seen order, their unit vectors, their summed weights, the leaf
    index of each row of ``arr``). Repeated tags average their vectors."""
    require(len(arr) > 0, "tags", len(arr), "must not be empty (number of tags)")
    require(arr.null_count == 0, "tags", f"{arr.null_count} nulls", "must not hold nulls")
    x = as_matrix(vectors, "vectors", dim)
    require(len(x) == len(arr), "vectors", x.shape, f"must have one row per tag ({len(arr)})")
    check_unit(x, "vectors")
    w = None
    if weights is not None:
        w = np.asarray(weights, np.float64)
        require(w.shape == (len(x),), "weights", w.shape, f"must have shape ({len(x)},)")
        require(
            bool(np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0),
            "weights",
            f"min {w.min()}, sum {w.sum()}",
            "must be finite, >= 0, not all 0",
        )
    enc = arr.dictionary_encode()
    inv = enc.indices.to_numpy().astype(np.int64)
    names = enc.dictionary
    if len(names) < len(arr):
        n, m = len(arr), len(names)
        log.info("taxonomy: %d tag rows hold %d distinct tags; repeats averaged", n, m)
        merge = sp.csr_matrix((np.ones(n, np.float32), (inv, np.arange(n))), shape=(m, n))
        x = np.asarray(merge @ x, np.float32)
        norms = np.linalg.norm(x, axis=1)
        bad = np.flatnonzero(norms < 1e-6)
        if bad.size:
            tag = names[int(bad[0])].as_py()
            raise ValueError(f"vectors: the rows of repeated tag {tag!r} average to ~0")
        x = x / norms[:, None]
        w = None if w is None else np.bincount(inv, w, minlength=m)
    return names, np.ascontiguousarray(x, np.float32), w, inv


def _kmeans(x: np.ndarray, k: int, cfg: TaxonomyConfig, seed: int, w=None) -> np.ndarray:
    faiss = _faiss()
    if not hasattr(faiss, INIT_METHODS[cfg.init]):
        raise ImportError(f"init={cfg.init!r} needs a newer faiss than {faiss.__version__}")
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=cfg.niter,
        nredo=cfg.nredo,
        seed=seed,
        spherical=cfg.spherical,
        min_points_per_centroid=1,
        init_method=getattr(faiss, INIT_METHODS[cfg.init]),
    )
    km.train(x, weights=None if w is None else w.astype(np.float32))
    return km.centroids


def _assign(x: np.ndarray, c: np.ndarray, spherical: bool) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row and a score, higher = nearer."""
    faiss = _faiss()
    index = faiss.IndexFlatIP(c.shape[1]) if spherical else faiss.IndexFlatL2(c.shape[1])
    index.add(np.ascontiguousarray(c, np.float32))
    d, i = index.search(x, 1)
    return i[:, 0].astype(np.int64), d[:, 0] if spherical else -d[:, 0]


def _nearest_per_cluster(a: np.ndarray, score: np.ndarray, r: int) -> np.ndarray:
    """Rows of the ``r`` best-scoring members of every cluster (ties: lower row)."""
    order = np.lexsort((np.arange(len(a)), -score, a))
    group = a[order]
    rank = np.arange(len(a)) - np.searchsorted(group, group)
    return order[rank < r]


def _cluster_level(
    x: np.ndarray, k: int, cfg: TaxonomyConfig, level: int, w=None
) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k', d), cluster of each row of ``x``), empty clusters dropped."""
    if k == len(x):
        return x.copy(), np.arange(k)
    seed = cfg.seed + 1000 * level
    c = _kmeans(x, k, cfg, seed, w)
    if level > 1 and cfg.resample_points > 0:
        for step in range(cfg.resample_steps):
            a, score = _assign(x, c, cfg.spherical)
            sample = np.sort(_nearest_per_cluster(a, score, cfg.resample_points))
            c = _kmeans(x[sample], min(k, len(sample)), cfg, seed + step + 1)
    a, _ = _assign(x, c, cfg.spherical)
    used, a = np.unique(a, return_inverse=True)
    if len(used) < len(c):
        log.warning(
            "taxonomy level %d: %d of %d clusters empty, dropped", level, len(c) - len(used), k
        )
    return c[used], a.astype(np.int64)


def build_taxonomy(
    tags: Sequence[str] | pa.Array,
    vectors: np.ndarray,
    cfg: TaxonomyConfig | None = None,
    *,
    weights: np.ndarray | None = None,
    namer: Namer | None = None,
) -> Taxonomy:
    """Hierarchical k-means taxonomy of ``tags`` (``vectors``: (n, d) unit rows, one per
    tag). ``weights`` (n,) weigh the tags in the level-1 k-means only."""
    cfg = cfg or TaxonomyConfig()
    tags = _strings(tags, "tags")
    names, x, w, inv = _leaves(tags, vectors, weights)
    cents, assigns, items = [x], [], x
    for level, k in enumerate(cfg.levels, 1):
        if k > len(items):
            log.warning(
                "taxonomy level %d: %d clusters asked, %d items; clamped", level, k, len(items)
            )
        t0 = time.perf_counter()
        c, a = _cluster_level(items, min(k, len(items)), cfg, level, w if level == 1 else None)
        log.info(
            "taxonomy level %d: %d clusters in %.1f s", level, len(c), time.perf_counter() - t0
        )
        cents.append(c if cfg.spherical else _unit(c).astype(np.float32))
        assigns.append(a)
        items = c
    nodes = _assemble(names, cents, assigns, cfg, namer)
    leaf_of_tag = pa.table({"tag": tags, "concept_id": inv}, schema=LEAF_OF_TAG)
    return Taxonomy(nodes=nodes, leaf_of_tag=leaf_of_tag)


def _assemble(names, cents, assigns, cfg, namer) -> pa.Table:
    counts = [len(c) for c in cents]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    x = cents[0]
    sizes, anc = [np.ones(len(x), np.int64)], np.arange(len(x))
    parts = {k: [] for k in ("level", "name", "parent_id", "size")}
    level_names = [names]
    for t, a in enumerate(assigns, 1):
        sizes.append(np.bincount(a, sizes[-1], minlength=counts[t]).astype(np.int64))
        anc = a[anc]
        level_names.append(_name_level(names, x, cents[t], anc, cfg, namer))
    for t, c in enumerate(counts):
        parent = assigns[t] + offsets[t + 1] if t < len(assigns) else None
        parts["level"].append(pa.array(np.full(c, t, np.int32)))
        parts["name"].append(level_names[t])
        parts["parent_id"].append(
            pa.array(parent, pa.int64()) if parent is not None else pa.nulls(c, pa.int64())
        )
        parts["size"].append(pa.array(sizes[t]))
    cent = np.concatenate(cents).astype(np.float32, copy=False)
    cols = {k: pa.concat_arrays(v) for k, v in parts.items()}
    return pa.table(
        {
            "concept_id": pa.array(np.arange(offsets[-1], dtype=np.int64)),
            **cols,
            "centroid": pa.FixedSizeListArray.from_arrays(pa.array(cent.ravel()), cent.shape[1]),
        },
        schema=nodes_schema(cent.shape[1]),
    )


def _name_level(names, x, c, anc, cfg, namer) -> pa.Array:
    """Name of each cluster at one level: its member leaf nearest the centroid, or ``namer``
    of its ``namer_tags`` nearest members. ``anc``: the cluster of each leaf."""
    sim = np.einsum("ij,ij->i", x, c[anc])
    order = np.lexsort((np.arange(len(x)), -sim, anc))
    starts = np.searchsorted(anc[order], np.arange(len(c) + 1))
    if namer is None:
        return names.take(pa.array(order[starts[:-1]]))
    out = []
    for j in range(len(c)):
        rows = order[starts[j] : min(starts[j + 1], starts[j] + cfg.namer_tags)]
        name = namer(names.take(pa.array(rows)).to_pylist())
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"namer: must return a non-empty str, got {name!r} for {rows.size} tags"
            )
        out.append(name)
    return pa.array(out, pa.string())


def attach_to_graph(
    taxonomy: Taxonomy,
    titles: pa.Array | pa.ChunkedArray,
    title_vectors: np.ndarray | None,
    *,
    threshold: float = 0.8,
    batch: int = SEARCH_BATCH,
) -> pa.Table:
    """``ATTACHMENT`` row per taxonomy node (in node order): the graph node (index into
    ``titles``) whose title equals the node name case-insensitively (the first such title),
    else, with ``title_vectors`` (one unit row per title), the title most similar to the
    node centroid when the cosine is >= ``threshold``, else null. ``sim`` is that cosine
    (also for title matches when vectors are given)."""
    require(-1.0 <= threshold <= 1.0, "threshold", threshold, "must be in [-1, 1]")
    require(batch >= 1, "batch", batch, "must be >= 1")
    titles = _strings(titles, "titles")
    hit = pc.index_in(pc.utf8_lower(taxonomy.nodes.column("name")), value_set=pc.utf8_lower(titles))
    node_id = hit.fill_null(-1).to_numpy().astype(np.int64)
    match = np.where(node_id >= 0, "title", None).astype(object)
    sim = np.full(len(node_id), np.nan, np.float32)
    if title_vectors is not None:
        tv = as_matrix(title_vectors, "title_vectors", taxonomy.dim)
        require(
            len(tv) == len(titles),
            "title_vectors",
            tv.shape,
            f"must have one row per title ({len(titles)})",
        )
        check_unit(tv, "title_vectors")
        q = taxonomy.centroids()
        got = np.flatnonzero(node_id >= 0)
        sim[got] = np.einsum("ij,ij->i", q[got], tv[node_id[got]])
        index = _faiss().IndexFlatIP(taxonomy.dim)
        index.add(tv)
        todo = np.flatnonzero(node_id < 0)
        for s in range(0, len(todo), batch):
            rows = todo[s : s + batch]
            d, i = index.search(q[rows], 1)
            ok = (d[:, 0] >= threshold) & (i[:, 0] >= 0)
            node_id[rows[ok]], sim[rows[ok]] = i[ok, 0], d[ok, 0]
            match[rows[ok]] = "embedding"
    return pa.table(
        {
            "concept_id": taxonomy.nodes.column("concept_id"),
            "node_id": pa.array(node_id, pa.int64(), mask=node_id < 0),
            "match": pa.array(match, pa.string()),
            "sim": pa.array(sim, pa.float32(), mask=np.isnan(sim) | (node_id < 0)),
        },
        schema=ATTACHMENT,
    )


def add_concepts(
    taxonomy: Taxonomy, new_tags: Sequence[str] | pa.Array, new_vectors: np.ndarray
) -> Taxonomy:
    """``taxonomy`` with new leaves (e.g. trending tags), each under the level-1 cluster with
    the most similar centroid; the sizes of all its ancestors grow by one. Tags that are
    already leaves map to those leaves and change nothing; centroids and names stay fixed
    (rebuild to re-cluster)."""
    new_tags = _strings(new_tags, "new_tags")
    names, x, _, inv = _leaves(new_tags, new_vectors, None, taxonomy.dim)
    nodes = taxonomy.nodes
    ids = nodes.column("concept_id").to_numpy()
    level = nodes.column("level").to_numpy()
    leaves = nodes.filter(pc.equal(nodes.column("level"), 0))
    old = pc.index_in(names, value_set=leaves.column("name")).fill_null(-1).to_numpy()
    fresh = np.flatnonzero(old < 0)
    l1 = np.flatnonzero(level == 1)
    index = _faiss().IndexFlatIP(taxonomy.dim)
    index.add(taxonomy.centroids()[l1])
    home = l1[index.search(x[fresh], 1)[1][:, 0]] if fresh.size else fresh
    new_ids = ids.max() + 1 + np.arange(len(fresh), dtype=np.int64)
    leaf_id = leaves.column("concept_id").to_numpy()[np.maximum(old, 0)]
    leaf_id[fresh] = new_ids
    parent = nodes.column("parent_id").fill_null(-1).to_numpy()
    delta, rows = np.zeros(len(ids), np.int64), home
    while rows.size:  # one level up per round: sizes of every ancestor
        delta += np.bincount(rows, minlength=len(ids))
        up = parent[rows]
        rows = np.searchsorted(ids, up[up >= 0])
    added = pa.table(
        {
            "concept_id": new_ids,
            "level": np.zeros(len(fresh), np.int32),
            "name": names.take(pa.array(fresh)),
            "parent_id": ids[home],
            "size": np.ones(len(fresh), np.int64),
            "centroid": pa.FixedSizeListArray.from_arrays(pa.array(x[fresh].ravel()), taxonomy.dim),
        },
        schema=nodes.schema,
    )
    grown = nodes.set_column(
        nodes.schema.get_field_index("size"),
        "size",
        pa.array(nodes.column("size").to_numpy() + delta),
    )
    log.info(
        "taxonomy: %d new leaves, %d tags already present", len(fresh), len(names) - len(fresh)
    )
    tag_rows = pa.table({"tag": new_tags, "concept_id": leaf_id[inv]}, schema=LEAF_OF_TAG)
    return Taxonomy(
        nodes=pa.concat_tables([grown, added]).combine_chunks(),
        leaf_of_tag=pa.concat_tables([taxonomy.leaf_of_tag, tag_rows]).combine_chunks(),
    )
