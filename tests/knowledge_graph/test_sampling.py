"""``zfoundry weights``: tags from captions, mapping to a knowledge graph, weights/ table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from knowledge_graph.build import write_graph
from pipelines.cli import app
from tests.conftest import EXAMPLES
from tests.helpers import ingest_folders, read_table


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return ingest_folders(tmp_path_factory.mktemp("w"), EXAMPLES / "data" / "coco25")


def test_weights_with_and_without_a_graph(run, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["weights", run.root, "--json"])
    assert res.exit_code == 0, res.output
    flat = json.loads(res.stdout)
    table = read_table(run, "weights").to_pylist()
    samples = read_table(run, "samples")
    assert len(table) == samples.num_rows == flat["in"] == 25  # every sample once
    w = np.array([r["sampling_weight"] for r in table])
    assert (w > 0).all() and w.mean() == pytest.approx(1.0)
    assert all(r["tags"] for r in table)  # every bundled photo has a caption with a noun
    assert all(r["concepts"] == [] for r in table)  # no graph: no node ids
    # a graph with a few COCO concepts (titles as Wikipedia writes them)
    titles = ["Person", "Dog", "Pizza", "Giraffe", "Train", "Umbrella", "Table (furniture)"]
    write_graph(tmp_path / "kg", titles, [0, 1], [1, 2])
    res = runner.invoke(app, ["weights", run.root, "--kg", str(tmp_path / "kg"), "--json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    table = read_table(run, "weights").to_pylist()
    assert stats["tags_mapped"] + stats["tags_unmapped"] == stats["tags"] == flat["tags"]
    mapped = {titles[c] for r in table for c in r["concepts"]}
    assert mapped and mapped <= set(titles)
    for r in table:  # a node appears only when one of the sample's tags names it
        names = {titles[c].lower() for c in r["concepts"]}
        assert names <= set(r["tags"]), r
    w = np.array([r["sampling_weight"] for r in table])
    has = np.array([bool(r["concepts"]) for r in table])
    assert w[has].mean() == pytest.approx(1.0) and (w[~has] == 1.0).all()


def test_weights_step_inside_zfoundry_run(tmp_path):
    from infra.config import from_dict
    from infra.storage import RunDir
    from pipelines.config import PipelineConfig
    from pipelines.steps import run_pipeline

    titles = ["Person", "Dog", "Pizza", "Giraffe"]
    write_graph(tmp_path / "kg", titles, [0], [1])
    cfg = from_dict(
        PipelineConfig,
        {
            "steps": ["ingest", "weights"],
            "executor": {"kind": "local", "progress": False},
            "ingest": {"sources": [{"path": str(EXAMPLES / "data" / "coco25")}]},
            "weights": {"kg": str(tmp_path / "kg"), "bm25": {"alpha": 0.5}},
        },
    )
    run = RunDir(tmp_path / "run")
    results = run_pipeline(cfg, run)
    assert results["weights"]["in"] == 25 and results["weights"]["tags_mapped"] > 0
    assert read_table(run, "weights").num_rows == 25
