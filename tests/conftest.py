"""Shared fixtures: a local Ray instance per session, run directories, sample data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHARED_DATA = Path(os.environ.get("ZFOUNDRY_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) for every test that needs it."""
    ray = pytest.importorskip("ray")
    from pipelines.executors.ray_data import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory, ray_local):
    """The README's main job on the default (Ray) executor, once: (run directory, printed
    output, each step's counters as first written -- later tests re-run steps locally)."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    run_dir = tmp_path_factory.mktemp("qs") / "run"
    res = CliRunner().invoke(app, ["run", str(EXAMPLES / "quickstart.toml"), "--run", str(run_dir)])
    assert res.exit_code == 0, res.output
    stats = {p.stem: json.loads(p.read_text()) for p in (run_dir / "stats").glob("*.json")}
    return run_dir, res.output, stats


@pytest.fixture(scope="session")
def edge_dir(tmp_path_factory) -> Path:
    from curation.edge_cases import write_edge_cases

    out = tmp_path_factory.mktemp("edge_cases")
    write_edge_cases(out)
    return out


@pytest.fixture(scope="session")
def coco_dir() -> Path:
    path = SHARED_DATA / "coco-mini"
    if not path.is_dir():
        pytest.skip(f"shared sample data not found at {path}")
    return path


@pytest.fixture(scope="session")
def embedded_run(tmp_path_factory, edge_dir):
    """The bundled photos + bad-input corpus, profiled and embedded (tiny CLIP), once."""
    from curation.stages.embed import EmbedImagesStage, EmbedTextStage
    from pipelines.executors import get_executor
    from tests.helpers import ingest_folders, profile

    run = ingest_folders(
        tmp_path_factory.mktemp("embedded"),
        EXAMPLES / "data" / "coco25",
        edge_dir,
        rows_per_shard=8,
    )
    profile(run)
    ex = get_executor("local", progress=False)
    stats = ex.run_stage(EmbedImagesStage(), run), ex.run_stage(EmbedTextStage(), run)
    return run, stats
