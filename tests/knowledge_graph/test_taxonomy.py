"""Tag taxonomy (hierarchical k-means) on synthetic embeddings with planted structure."""

from __future__ import annotations

import logging
import re

import numpy as np
import pyarrow as pa
import pytest

from knowledge_graph.taxonomy import (
    ATTACHMENT,
    LEAF_OF_TAG,
    Taxonomy,
    TaxonomyConfig,
    add_concepts,
    attach_to_graph,
    build_taxonomy,
    nodes_schema,
)

SUPERS, TOPICS, TAGS, DIM = 8, 6, 20, 64


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted(
    n_topics: list[int], tags: int = TAGS, spread: float = 0.5, noise: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, super-topic of each, topic of each): random unit super-topics, topics at
    cos ~0.8 around them, tags at cos ~0.998 around their topic (tags of a topic adjacent)."""
    rng = np.random.default_rng(seed)
    sup = unit(rng.standard_normal((len(n_topics), DIM)))
    sup_of_topic = np.repeat(np.arange(len(n_topics)), n_topics)
    top = unit(sup[sup_of_topic] + spread * rng.standard_normal((len(sup_of_topic), DIM)) / 8)
    topic = np.repeat(np.arange(len(top)), tags)
    x = unit(top[topic] + noise * rng.standard_normal((len(topic), DIM)) / 8)
    return x, sup_of_topic[topic], topic


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (Hubert & Arabie)."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)

    def pairs(v):
        return float((v * (v - 1) / 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / pairs(np.array([len(a)]))
    return (index - expected) / ((rows + cols) / 2 - expected)


def col(tax: Taxonomy, name: str) -> np.ndarray:
    return tax.nodes.column(name).to_numpy(zero_copy_only=False)


def ancestor(tax: Taxonomy, level: int) -> np.ndarray:
    """Concept id of each leaf's ancestor at ``level`` (leaves in row order)."""
    ids, parent = col(tax, "concept_id"), tax.nodes.column("parent_id").fill_null(-1).to_numpy()
    cur = ids[col(tax, "level") == 0]
    for _ in range(level):
        cur = parent[np.searchsorted(ids, cur)]
    return cur


CFG = TaxonomyConfig(levels=(SUPERS * TOPICS, SUPERS), nredo=10, seed=0)


@pytest.fixture(scope="module")
def data() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    x, sup, topic = planted([TOPICS] * SUPERS)
    return [f"tag {i}" for i in range(len(x))], x, sup, topic


@pytest.fixture(scope="module")
def tax(data) -> Taxonomy:
    tags, x, _, _ = data
    return build_taxonomy(tags, x, CFG)


# ---------------------------------------------------------------- structure


def test_levels_recover_planted_topics_and_super_topics(data, tax):
    _, _, sup, topic = data
    assert np.bincount(col(tax, "level")).tolist() == [len(topic), SUPERS * TOPICS, SUPERS]
    assert ari(ancestor(tax, 1), topic) >= 0.95
    assert ari(ancestor(tax, 2), sup) >= 0.95


def test_tree_nests_and_sizes_add_up(data, tax):
    assert tax.nodes.schema == nodes_schema(DIM)
    ids, level, size = col(tax, "concept_id"), col(tax, "level"), col(tax, "size")
    parent = tax.nodes.column("parent_id")
    assert (np.diff(ids) > 0).all()
    top = level == level.max()
    pid = parent.fill_null(-1).to_numpy()
    assert parent.null_count == top.sum() and (pid[top] == -1).all()  # coarsest: no parent
    rows = np.searchsorted(ids, pid[~top])
    assert (ids[rows] == pid[~top]).all()
    assert (level[rows] == level[~top] + 1).all()  # every parent one level up
    assert (size[level == 0] == 1).all()
    children_sum = np.bincount(rows, weights=size[~top], minlength=len(ids))
    assert (size[level > 0] == children_sum[level > 0]).all()
    assert all(size[level == t].sum() == len(data[0]) for t in range(3))
    np.testing.assert_allclose(np.linalg.norm(tax.centroids(), axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(tax.centroids()[level == 0], data[1])


def test_cluster_names_are_members_nearest_centroid(data, tax):
    tags, x, _, _ = data
    names, cent, level = col(tax, "name"), tax.centroids(), col(tax, "level")
    for t in (1, 2):
        anc = ancestor(tax, t)
        for row in np.flatnonzero(level == t):
            members = np.flatnonzero(anc == col(tax, "concept_id")[row])
            sims = x[members] @ cent[row]
            best = members[sims.argmax()]
            assert names[row] == tags[best], (t, row)  # ties are unlikely on random data
    np.testing.assert_array_equal(names[level == 0], tags)
    assert tax.leaf_of_tag.schema == LEAF_OF_TAG
    np.testing.assert_array_equal(tax.leaf_of_tag.column("concept_id").to_numpy(), np.arange(960))


def test_namer_sees_nearest_members_first_and_names_nodes(data, tax):
    tags, x, _, _ = data
    calls: list[list[str]] = []

    def namer(members: list[str]) -> str:
        calls.append(members)
        return f"<{members[0]}|{len(members)}>"

    cfg = TaxonomyConfig(levels=CFG.levels, nredo=CFG.nredo, seed=CFG.seed, namer_tags=4)
    named = build_taxonomy(tags, x, cfg, namer=namer)
    level, default = col(named, "level"), col(tax, "name")
    assert len(calls) == (level > 0).sum()
    assert all(1 <= len(c) <= 4 for c in calls)
    want = [f"<{n}|4>" for n in default[level > 0]]  # every cluster has >= 4 members here
    assert col(named, "name")[level > 0].tolist() == want
    index = {t: i for i, t in enumerate(tags)}
    cent = named.centroids()[level > 0]
    for members, c in zip(calls, cent, strict=True):
        sims = x[[index[m] for m in members]] @ c
        assert (np.diff(sims) <= 1e-6).all()  # nearest first
    with pytest.raises(ValueError, match="namer"):
        build_taxonomy(tags[:50], x[:50], TaxonomyConfig(levels=(5,)), namer=lambda m: "")


def test_same_seed_same_tables_other_seed_differs(data, tax):
    tags, x, _, _ = data
    again = build_taxonomy(tags, x, CFG)
    assert again.nodes.equals(tax.nodes) and again.leaf_of_tag.equals(tax.leaf_of_tag)
    rng = np.random.default_rng(1)
    noise = unit(rng.standard_normal((300, 16)))
    a, b = (
        build_taxonomy([str(i) for i in range(300)], noise, TaxonomyConfig(levels=(20, 4), seed=s))
        for s in (0, 1)
    )
    assert not a.nodes.equals(b.nodes)


def test_weights_pull_the_centroid():
    x = unit(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32))
    w = np.array([6.0, 3.0, 1.0])
    tax = build_taxonomy(["a", "b", "c"], x, TaxonomyConfig(levels=(1,)), weights=w)
    cent = tax.centroids()[col(tax, "level") == 1][0]
    np.testing.assert_allclose(cent, unit(w @ x), atol=1e-5)
    assert col(tax, "name")[-1] == "a"


def test_euclidean_kmeans_reports_unit_centroids(data):
    tags, x, _, topic = data
    cfg = TaxonomyConfig(levels=CFG.levels, nredo=5, spherical=False)
    tax = build_taxonomy(tags, x, cfg)
    np.testing.assert_allclose(np.linalg.norm(tax.centroids(), axis=1), 1.0, atol=1e-5)
    assert ari(ancestor(tax, 1), topic) >= 0.95


def test_resampling_spreads_coarse_clusters_over_sparse_regions():
    """One dense super-topic (30 topics) and seven sparse ones (3 each): plain hierarchical
    k-means gives the dense one several of the 8 coarse clusters; resampling (each cluster
    contributes at most r items to the re-run) gives it fewer."""
    x, sup, _ = planted([30] + [3] * 7)
    tags = [str(i) for i in range(len(x))]

    def dense_share(r: int) -> int:
        total = 0
        for seed in range(6):
            cfg = TaxonomyConfig(levels=(51, 8), nredo=5, seed=seed, resample_points=r)
            tax = build_taxonomy(tags, x, cfg)
            total += len(np.unique(ancestor(tax, 2)[sup == 0]))
        return total

    assert dense_share(3) < dense_share(0)


# ---------------------------------------------------------------- inputs and config


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"levels": ()}, "levels"),
        ({"levels": (8, 8)}, "levels"),
        ({"levels": (4, 16)}, "levels"),
        ({"levels": (4, 0)}, "levels"),
        ({"niter": 0}, "niter"),
        ({"nredo": 0}, "nredo"),
        ({"resample_points": -1}, "resample_points"),
        ({"resample_steps": 0}, "resample_steps"),
        ({"init": "farthest"}, "init"),
        ({"namer_tags": 0}, "namer_tags"),
    ],
)
def test_config_errors_name_field_and_value(kwargs, field):
    value = next(iter(kwargs.values()))
    with pytest.raises(ValueError, match=rf"^{field}: .*got {re.escape(repr(value))}$"):
        TaxonomyConfig(**kwargs)
    assert TaxonomyConfig(levels=[9, 3]).levels == (9, 3)  # TOML lists become tuples


def test_levels_clamped_to_item_count(caplog):
    x = unit(np.random.default_rng(0).standard_normal((5, 8)))
    with caplog.at_level(logging.WARNING, logger="knowledge_graph.taxonomy"):
        tax = build_taxonomy(list("abcde"), x, TaxonomyConfig(levels=(16, 8, 2)))
    assert np.bincount(col(tax, "level")).tolist() == [5, 5, 5, 2]
    assert sum("clamped" in r.message for r in caplog.records) == 2
    assert sorted(col(tax, "name")[col(tax, "level") == 1]) == list("abcde")


def test_duplicate_tags_become_one_leaf_with_mean_vector():
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((6, 8)))
    tags = ["cat", "dog", "cat", "sky", "dog", "cat"]
    tax = build_taxonomy(tags, x, TaxonomyConfig(levels=(2, 1)))
    leaves = col(tax, "level") == 0
    assert col(tax, "name")[leaves].tolist() == ["cat", "dog", "sky"]
    np.testing.assert_allclose(tax.centroids()[0], unit(x[[0, 2, 5]].sum(0)), atol=1e-6)
    assert tax.leaf_of_tag.column("concept_id").to_pylist() == [0, 1, 0, 2, 1, 0]
    assert tax.leaf_of_tag.column("tag").to_pylist() == tags
    assert col(tax, "size")[col(tax, "level") == 2].tolist() == [3]


@pytest.mark.parametrize(
    ("tags", "vectors", "weights", "match"),
    [
        ([], np.zeros((0, 4), np.float32), None, "tags: must not be empty"),
        (["a", None], np.eye(2, 4, dtype=np.float32), None, "tags: must not hold nulls"),
        (["a", "b"], np.eye(3, 4, dtype=np.float32), None, "vectors: must have one row"),
        (["a", "b"], 2 * np.eye(2, 4, dtype=np.float32), None, "vectors: 2 of 2 rows"),
        (["a", "b"], np.eye(2, 4, dtype=np.float32), np.array([1.0, -1.0]), "weights"),
        (["a", "a"], np.array([[1, 0], [-1, 0]], np.float32), None, "repeated tag 'a'"),
    ],
)
def test_bad_inputs_raise(tags, vectors, weights, match):
    with pytest.raises(ValueError, match=match):
        build_taxonomy(tags, vectors, TaxonomyConfig(levels=(1,)), weights=weights)


# ---------------------------------------------------------------- attach to the graph


def test_title_match_beats_a_better_embedding_match(tax):
    names, cent = col(tax, "name"), tax.centroids()
    row = int(np.flatnonzero(col(tax, "level") == 1)[0])
    other = (row + 7) % len(names)
    titles = pa.array(["Unrelated", names[row].upper(), names[row].title(), "x"])
    tv = unit(np.stack([cent[other], cent[other], cent[other], cent[row]]))  # "x" = the centroid
    out = attach_to_graph(tax, titles, tv, threshold=0.5)
    assert out.schema == ATTACHMENT and len(out) == len(names)
    got = out.slice(row, 1).to_pylist()[0]
    assert got["match"] == "title" and got["node_id"] == 1  # the first case-insensitive match
    assert got["sim"] == pytest.approx(float(cent[row] @ cent[other]), abs=1e-5)
    emb = out.filter(pa.compute.equal(out.column("match"), "embedding"))
    assert len(emb) > 0 and (np.asarray(emb.column("sim")) >= 0.5).all()


def test_embedding_match_respects_threshold(tax):
    cent = tax.centroids()
    row = int(np.flatnonzero(col(tax, "level") == 2)[0])
    u = cent[row].astype(np.float64)
    v = np.random.default_rng(0).standard_normal(DIM)
    v = unit(v - (v @ u) * u).astype(np.float64)
    title = unit(0.7 * u + np.sqrt(1 - 0.7**2) * v)[None]  # cos 0.7 to the centroid
    sims = cent @ title[0]
    titles = pa.array(["nothing matches this"])
    for thr in (0.69, 0.71):
        out = attach_to_graph(tax, titles, title, threshold=thr)
        node_id = out.column("node_id").fill_null(-1).to_numpy()
        np.testing.assert_array_equal(node_id == 0, sims >= thr)
        assert out.column("match").drop_null().unique().to_pylist() == ["embedding"]
        sim = out.column("sim").to_numpy(zero_copy_only=False)
        np.testing.assert_allclose(sim[node_id == 0], sims[node_id == 0], atol=1e-5)
    assert out.slice(row, 1).column("node_id").to_pylist() == [None]  # 0.7 < 0.71


def test_attach_by_title_only(tax):
    titles = pa.chunked_array([["tag 3", None], ["TAG 5"]])
    out = attach_to_graph(tax, titles, None)
    hits = out.filter(out.column("node_id").is_valid())
    assert set(hits.column("node_id").to_pylist()) == {0, 2}
    assert hits.column("match").unique().to_pylist() == ["title"]
    assert hits.column("sim").null_count == len(hits)
    with pytest.raises(ValueError, match="threshold"):
        attach_to_graph(tax, titles, None, threshold=1.5)
    with pytest.raises(ValueError, match="title_vectors"):
        attach_to_graph(tax, titles, np.eye(2, DIM, dtype=np.float32))


# ---------------------------------------------------------------- add concepts


def test_add_concepts_under_nearest_level1_cluster(data, tax):
    tags, x, _, _ = data
    cent, level, ids = tax.centroids(), col(tax, "level"), col(tax, "concept_id")
    l1 = np.flatnonzero(level == 1)
    rng = np.random.default_rng(3)
    new = unit(x[[5, 400, 401]] + 0.05 * rng.standard_normal((3, DIM)))
    new_tags = ["trend a", "trend b", "trend a", tags[7]]  # a repeat and a known tag
    vecs = np.concatenate([new, x[[7]]])
    grown = add_concepts(tax, new_tags, vecs)
    assert grown.nodes.schema == tax.nodes.schema
    assert len(grown.nodes) == len(tax.nodes) + 2
    added = grown.nodes.slice(len(tax.nodes)).to_pylist()
    assert [a["name"] for a in added] == ["trend a", "trend b"]
    assert [a["concept_id"] for a in added] == [ids.max() + 1, ids.max() + 2]
    va, vb = unit(new[0] + new[2]), new[1]
    for a, v in zip(added, (va, vb), strict=True):
        assert a["level"] == 0 and a["size"] == 1
        assert a["parent_id"] == ids[l1[np.argmax(cent[l1] @ v)]]
    # sizes: +1 on every ancestor of each new leaf, unchanged elsewhere
    expect = col(tax, "size").copy()
    parent = tax.nodes.column("parent_id").fill_null(-1).to_numpy()
    for a in added:
        p = a["parent_id"]
        while p >= 0:
            r = int(np.searchsorted(ids, p))
            expect[r] += 1
            p = parent[r]
    np.testing.assert_array_equal(col(grown, "size")[: len(ids)], expect)
    assert col(grown, "size")[col(grown, "level") == 2].sum() == len(tags) + 2
    tail = grown.leaf_of_tag.slice(len(tags)).to_pydict()
    assert tail == {"tag": new_tags, "concept_id": [ids.max() + 1, ids.max() + 2, ids.max() + 1, 7]}
    again = add_concepts(grown, ["trend b"], vb[None])
    assert again.nodes.equals(grown.nodes)
