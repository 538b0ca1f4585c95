"""KG_DIR/concepts/: taxonomy over a run's tags attached to a graph, the tag -> concept
mapping (title, alias, taxonomy tag, embedding), kg add, kg boost, weights with the
hierarchy and boosts, and a run's coverage, through the functions and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from knowledge_graph.build import build_kg
from knowledge_graph.concepts import (
    MATCH_KINDS,
    BoostConfig,
    ConceptIndex,
    ConceptsConfig,
    boost_from_prompts,
    build_concepts,
    graph_size,
)
from knowledge_graph.sampling import WeightsConfig, run_tags, weights_step
from knowledge_graph.taxonomy import TaxonomyConfig
from pipelines.cli import app
from tests.conftest import EXAMPLES
from tests.helpers import ingest_folders, read_table
from tests.knowledge_graph.test_kg import page, write_dump

TITLES = [
    "Dog", "Pizza", "Table (furniture)", "Man", "Bicycle", "Laptop", "Bus", "Horse",
    "Elephant", "Broccoli", "Democracy", "Inflation",
]  # fmt: skip
LEVELS = (8, 3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return ingest_folders(tmp_path_factory.mktemp("c"), EXAMPLES / "data" / "coco25")


@pytest.fixture(scope="module")
def kg(tmp_path_factory, run):
    tmp = tmp_path_factory.mktemp("kg")
    pages = [page(i + 1, t, f"[[{TITLES[(i + 1) % len(TITLES)]}]]") for i, t in enumerate(TITLES)]
    pages += [
        page(100, "Bike", "#REDIRECT [[Bicycle]]", redirect="Bicycle"),
        page(101, "Pie (pizza)", "#REDIRECT [[Pizza]]", redirect="Pizza"),
    ]
    build_kg([write_dump(tmp / "t-pages-articles.xml", pages)], tmp / "kg")
    cfg = ConceptsConfig(taxonomy=TaxonomyConfig(levels=LEVELS))
    stats = build_concepts(tmp / "kg", run_tags(run), cfg, source="coco25")
    assert stats["distinct_tags"] == 66 and stats["levels"] == {"0": 66, "1": 8, "2": 3}
    return tmp / "kg"


def test_taxonomy_is_a_tree_hung_under_the_graph(kg):
    n = graph_size(kg)
    assert n == len(TITLES)
    nodes = pq.read_table(kg / "concepts" / "nodes.parquet").to_pylist()
    ids = {r["concept_id"]: r for r in nodes}
    assert min(ids) == n and sorted(ids) == list(range(n, n + len(nodes)))
    for r in nodes:  # every level points one level up; the top has no parent
        if r["level"] == len(LEVELS):
            assert r["parent_id"] is None
        else:
            assert ids[r["parent_id"]]["level"] == r["level"] + 1
    leaves = {r["name"]: r for r in nodes if r["level"] == 0}
    assert leaves["dog"]["node_id"] == TITLES.index("Dog") and leaves["dog"]["match"] == "title"
    sizes = {r["concept_id"]: r["size"] for r in nodes}
    top = [r for r in nodes if r["parent_id"] is None]
    assert sum(sizes[r["concept_id"]] for r in top) == 66  # sizes count leaves


def test_tags_map_by_title_alias_taxonomy_and_embedding(kg):
    index = ConceptIndex(kg)
    tags = [
        "dog",
        "Dogs",
        "bike",
        "pie (pizza)",
        "vulture",
        "canine",
        "notebook computer",
        "quantum chromodynamics",
    ]
    ids, kind = index.map(tags)
    names = [MATCH_KINDS[k] if k >= 0 else None for k in kind]
    assert ids[0] == ids[1] == TITLES.index("Dog") and names[:2] == ["title", "title"]
    assert ids[2] == TITLES.index("Bicycle") and names[2] == "alias"
    assert ids[3] == TITLES.index("Pizza") and names[3] == "alias"
    assert names[4] == "concept" and ids[4] >= len(TITLES)  # a pool tag with no article
    assert index.names([ids[4]]) == ["vulture"]
    assert names[5] == "embedding" and ids[5] == TITLES.index("Dog")
    assert names[6] == "embedding" and ids[6] == TITLES.index("Laptop")
    assert ids[7] == -1 and kind[7] == -1
    # a leaf's node inherits the leaf's parent: the hierarchy reaches Wikipedia nodes
    assert index.parent[TITLES.index("Dog")] >= len(TITLES)


def test_weights_use_the_hierarchy_and_prompt_boosts(kg, run, tmp_path):
    base = weights_step(run, WeightsConfig(kg=str(kg), hierarchy=False))
    flat = {r["sample_id"]: r for r in read_table(run, "weights").to_pylist()}
    stats = weights_step(run, WeightsConfig(kg=str(kg)))
    tree = {r["sample_id"]: r for r in read_table(run, "weights").to_pylist()}
    assert stats["hierarchy"] and not base["hierarchy"]
    assert sum(stats["tags_by_match"].values()) == stats["tags_mapped"] == stats["tags"]
    assert stats["tags_by_match"]["concept"] > 0 and stats["tags_by_match"]["title"] > 0
    w = np.array([r["sampling_weight"] for r in tree.values()])
    assert (w > 0).all() and w.mean() == pytest.approx(1.0)
    assert any(abs(tree[k]["sampling_weight"] - flat[k]["sampling_weight"]) > 1e-6 for k in tree)
    # a sample whose only tags are the common "man" weighs less than one with rare tags
    man = TITLES.index("Man")
    rare = [r for r in tree.values() if man not in r["concepts"] and r["concepts"]]
    only_man = [r for r in tree.values() if r["concepts"] == [man]]
    if only_man:
        assert max(r["sampling_weight"] for r in only_man) < np.median(
            [r["sampling_weight"] for r in rare]
        )
    # prompts that keep asking for pizza raise pizza samples' weights
    bst = boost_from_prompts(kg, ["a pizza on a table", "pizza!", "two pizzas"], BoostConfig())
    pizza = TITLES.index("Pizza")
    assert bst["top"][0] == {
        "concept_id": pizza,
        "name": "Pizza",
        "prompt_count": 3,
        "boost": round(1 + np.log(4), 4),
    }
    weights_step(run, WeightsConfig(kg=str(kg)))
    boosted = {r["sample_id"]: r for r in read_table(run, "weights").to_pylist()}
    with_pizza = [k for k, r in boosted.items() if pizza in r["concepts"]]
    assert with_pizza
    for k in with_pizza:
        assert boosted[k]["sampling_weight"] > tree[k]["sampling_weight"]
    (kg / "concepts" / "boost.parquet").unlink()


def test_cli_taxonomy_add_boost_and_coverage(kg, run, tmp_path):
    runner = CliRunner()
    (tmp_path / "new.txt").write_text("drone\n\nelectric scooter\ndog\n")
    res = runner.invoke(app, ["kg", "add", str(kg), "--concepts", str(tmp_path / "new.txt"),
                              "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    added = json.loads(res.stdout)
    assert added["added"] == 2 and added["already_present"] == 1  # "dog" is a leaf already
    new = {r["name"]: r for r in added["new"]}
    assert set(new) == {"drone", "electric scooter"}
    index = ConceptIndex(kg)
    ids, kind = index.map(["drone"])
    assert ids[0] == new["drone"]["concept_id"] and MATCH_KINDS[kind[0]] == "concept"
    nodes = pq.read_table(kg / "concepts" / "nodes.parquet")
    assert nodes.column("source").to_pylist().count("added") == 2
    res = runner.invoke(app, ["weights", run.root, "--kg", str(kg), "--json"])
    assert res.exit_code == 0, res.output
    png = tmp_path / "coverage.png"
    res = runner.invoke(
        app, ["kg", "stats", str(kg), "--run", run.root, "--plot", str(png), "--json"]
    )
    assert res.exit_code == 0, res.output
    cov = json.loads(res.stdout)
    assert cov["samples"] == 25 and cov["graph_concepts"] == len(TITLES)
    assert {"Democracy", "Inflation"} <= set(cov["top_voids"])  # no photo shows them
    assert cov["graph_voids"] + cov["graph_concepts_covered"] == len(TITLES)
    assert cov["top_concepts"][0]["name"] == "Man"  # 5 captions mention a man
    assert png.stat().st_size > 10_000
    res = runner.invoke(app, ["kg", "stats", str(kg), "--run", run.root])
    assert res.exit_code == 0 and "Voids" in res.stdout


def test_cli_taxonomy_from_a_tags_file_and_bad_input(tmp_path, kg):
    runner = CliRunner()
    tags = tmp_path / "tags.txt"
    tags.write_text("dog\ncat\ncat\nred car\nbicycle\nBikes\n")
    out = tmp_path / "kg2"
    import shutil

    shutil.copytree(kg, out, ignore=shutil.ignore_patterns("concepts"))
    res = runner.invoke(
        app, ["kg", "taxonomy", str(out), "--tags", str(tags), "--levels", "2,1",
              "--no-embed-titles", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    assert stats["distinct_tags"] == 5 and stats["tags"] == 6  # "bikes" -> "bike"
    assert stats["title_vectors"] is None and stats["attached"]["embedding"] == 0
    assert stats["attached"]["title"] >= 2 and stats["attached"]["alias"] >= 1
    bad = [
        (["kg", "taxonomy", str(out)], "exactly one of --run and --tags"),
        (["kg", "taxonomy", str(out), "--tags", str(tags), "--levels", "4,x"], "--levels"),
        (["kg", "taxonomy", str(out), "--tags", str(tags), "--levels", "2,4"], "levels"),
        (["kg", "taxonomy", str(out), "--tags", str(tags), "--encoder", "w2v"], "encoder.kind"),
        (["kg", "add", str(tmp_path), "--concepts", str(tags)], "no taxonomy"),
        (["kg", "boost", str(out), "--prompts", str(tmp_path / "none.txt")], "not a file"),
        (["kg", "boost", str(out), "--prompts", str(tags), "--beta", "-1"], "beta"),
    ]
    for args, message in bad:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert message in " ".join(res.output.split()), (args, res.output)


def test_select_writes_concepts_and_can_balance_the_selected_rows(kg, run, tmp_path):
    from curation.select import Recipe, Sampling, select
    from knowledge_graph.sampling import balanced_weights
    from knowledge_graph.weights import entropy
    from tests.helpers import profile

    profile(run)
    weights_step(run, WeightsConfig(kg=str(kg)))
    pool = {r["sample_id"]: r for r in read_table(run, "weights").to_pylist()}

    def rows(balance: str, where=()) -> list[dict]:
        recipe = Recipe(name=balance, where=where, sampling=Sampling(balance=balance))
        out = tmp_path / balance
        m = select(run, recipe, str(out))
        assert m["sampling"]["balance"] == balance
        return [r for s in m["shards"] for r in pq.read_table(out / s["path"]).to_pylist()]

    got = rows("weights")
    assert got and all(r["concepts"] == pool[r["sample_id"]]["concepts"] for r in got)
    assert all(r["sampling_weight"] == pool[r["sample_id"]]["sampling_weight"] for r in got)
    assert all(r["sampling_weight"] == 1.0 for r in rows("none"))
    subset = rows("concepts", where=("width >= 500",))  # a subset: balance it, not the pool
    assert 0 < len(subset) < len(got)
    w = np.array([r["sampling_weight"] for r in subset])
    lists = [r["concepts"] for r in subset]
    import pyarrow as pa

    want = balanced_weights(pa.array(lists, pa.list_(pa.int64())), str(kg))
    np.testing.assert_allclose(w, want)
    has = np.array([bool(c) for c in lists])
    assert w[has].mean() == pytest.approx(1.0) and (w > 0).all()
    flat = np.concatenate([c for c in lists if c])
    per = np.concatenate([[wi] * len(c) for wi, c in zip(w, lists, strict=True) if c])
    raw = np.bincount(flat)
    assert entropy(np.bincount(flat, weights=per)) > entropy(raw)  # flatter than the raw mix
    assert not np.allclose(w, [pool[r["sample_id"]]["sampling_weight"] for r in subset])


def test_prune_drops_concepts_an_image_cannot_show(tmp_path):
    titles = ["Golden retriever", "Eiffel Tower", "Violin", "Sunset", "Bicycle",
              "Democracy", "Inflation (economics)", "List of rivers", "1987",
              "Mercury"]  # fmt: skip
    pages = [
        page(i + 1, t, " ".join(f"[[{u}]]" for u in titles if u != t)) for i, t in enumerate(titles)
    ]
    pages[-1] = page(10, "Mercury", "'''Mercury''' may refer to: [[Violin]] {{disambiguation}}")
    kg = tmp_path / "kg"
    build_kg([write_dump(tmp_path / "g-pages-articles.xml", pages)], kg)
    runner = CliRunner()
    args = ["kg", "prune", str(kg), "--keep-fraction", "1", "--min-in-links", "0"]
    res = runner.invoke(app, [*args, "--generatability", "rules+head", "--json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    nodes = {r["title"]: r for r in pq.read_table(kg / "nodes").to_pylist()}
    kept = {t for t, r in nodes.items() if r["kept"]}
    assert kept == {"Golden retriever", "Eiffel Tower", "Violin", "Sunset", "Bicycle"}
    assert nodes["1987"]["generatability_reason"] == "rule:year"
    assert nodes["List of rivers"]["generatability_reason"] == "rule:list"
    assert nodes["Mercury"]["generatability_reason"] == "rule:disambiguation"
    assert nodes["Inflation (economics)"]["generatability_reason"] == "rule:qualifier"
    assert nodes["Democracy"]["generatability_reason"] == "head"
    assert (
        nodes["Democracy"]["generatability_score"] < 0.5 < nodes["Violin"]["generatability_score"]
    )
    assert stats["kept_by_pagerank"] == 10 and stats["kept"] == 5
    assert stats["removed_not_generatable"] == 5 and stats["judged"] == 10
    cache = list((kg / "_cache").glob("text_vectors-*.parquet"))
    assert len(cache) == 1 and pq.read_metadata(cache[0]).num_rows == 6  # rules decided 4
    before = cache[0].stat().st_mtime_ns
    res = runner.invoke(app, [*args, "--generatability", "rules+head", "--json"])
    assert res.exit_code == 0 and cache[0].stat().st_mtime_ns == before  # all from the cache
    res = runner.invoke(app, [*args, "--json"])  # without the filter the columns go away
    assert "generatable" not in pq.read_schema(kg / "nodes" / "00000.parquet").names
    for bad, message in (
        (["--generatability", "backend"], "--judge-model"),
        (["--generatability", "oracle"], "generatability.judge"),
        (["--judge-threshold", "0.7"], "needs --generatability"),
    ):
        res = runner.invoke(app, [*args, *bad])
        assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output


def test_taxonomy_and_weights_steps_inside_zfoundry_run(kg, tmp_path):
    import shutil

    from infra.config import ConfigError, from_dict
    from infra.storage import RunDir
    from pipelines.config import PipelineConfig
    from pipelines.steps import run_pipeline

    graph = tmp_path / "kg"
    shutil.copytree(kg, graph, ignore=shutil.ignore_patterns("concepts"))
    data = {
        "steps": ["ingest", "taxonomy", "weights"],
        "executor": {"kind": "local", "progress": False},
        "ingest": {"sources": [{"path": str(EXAMPLES / "data" / "coco25")}]},
        "taxonomy": {"kg": str(graph), "taxonomy": {"levels": [6, 2]}},
        "weights": {"kg": str(graph)},
    }
    run = RunDir(tmp_path / "run")
    results = run_pipeline(from_dict(PipelineConfig, data), run)
    assert results["taxonomy"]["distinct_tags"] == 66 and results["taxonomy"]["levels"]["2"] == 2
    assert results["weights"]["hierarchy"] and results["weights"]["tags_unmapped"] == 0
    again = run_pipeline(from_dict(PipelineConfig, data), run)  # same tags, same settings
    assert again["taxonomy"].get("skipped_step")
    with pytest.raises(ConfigError, match="taxonomy"):
        from_dict(PipelineConfig, {**data, "taxonomy": None})
    with pytest.raises(ConfigError, match="kg"):
        from_dict(PipelineConfig, {**data, "taxonomy": {"levels": [6, 2]}})


def test_pagerank_prior_gives_central_concepts_more_weight(kg, run, tmp_path):
    import shutil

    import pyarrow as pa

    from knowledge_graph.prune import PruneConfig, prune

    with pytest.raises(ValueError, match="not pruned"):
        weights_step(run, WeightsConfig(kg=str(kg), prior="pagerank"))
    graph = tmp_path / "kg"
    shutil.copytree(kg, graph)
    prune(graph, PruneConfig(keep_fraction=1.0, min_in_links=0))
    path = graph / "nodes" / "00000.parquet"
    nodes = pq.read_table(path)
    pr = np.full(nodes.num_rows, 0.5 / (nodes.num_rows - 1))
    pr[TITLES.index("Man")] = 0.5  # make "Man" the hub
    i = nodes.schema.get_field_index("pagerank")
    pq.write_table(nodes.set_column(i, "pagerank", pa.array(pr)), path)
    weights_step(run, WeightsConfig(kg=str(graph)))
    uniform = {r["sample_id"]: r for r in read_table(run, "weights").to_pylist()}
    stats = weights_step(run, WeightsConfig(kg=str(graph), prior="pagerank"))
    central = {r["sample_id"]: r for r in read_table(run, "weights").to_pylist()}
    assert stats["prior"] == "pagerank"
    man = TITLES.index("Man")
    with_man = [k for k, r in central.items() if man in r["concepts"]]
    assert len(with_man) == 5  # five captions mention a man
    for k in with_man:
        assert central[k]["sampling_weight"] > uniform[k]["sampling_weight"]
