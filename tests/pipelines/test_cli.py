"""The zfoundry CLI: the quickstart end to end, resume, query, status, config errors."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.edge_cases import edge_cases
from pipelines.cli import app
from tests.conftest import EXAMPLES

runner = CliRunner()
N_BAD = sum(c.expected_error is not None for c in edge_cases())
N_ALL = 25 + len(edge_cases())


@pytest.fixture
def quickstart(quickstart_run):
    return quickstart_run[:2]


def test_quickstart_accounts_for_every_row(quickstart_run):
    run_dir, output, first_stats = quickstart_run
    stats = first_stats["profile"]
    assert stats["executor"] == "ray"
    assert stats["in"] == N_ALL and stats["rejected"] == N_BAD and stats["ok"] == N_ALL - N_BAD
    manifest = json.loads((run_dir / "shards" / "quickstart" / "manifest.json").read_text())
    assert 0 < manifest["totals"]["rows"] <= 25
    # weights against the shipped demo concept graph, re-balanced over the selected rows
    weights = json.loads((run_dir / "stats" / "weights.json").read_text())
    assert weights["in"] == N_ALL and weights["hierarchy"] and weights["tags_mapped"] > 0
    assert manifest["sampling"]["balance"] == "concepts"
    shards = [
        pq.read_table(run_dir / "shards" / "quickstart" / s["path"]) for s in manifest["shards"]
    ]
    rows = [r for t in shards for r in t.to_pylist()]
    assert any(r["concepts"] for r in rows) and len({r["sampling_weight"] for r in rows}) > 1
    assert "rejects by reason" in output and "manifest" in output and "too_many_pixels" in output


def test_rerun_resumes_without_recomputing(quickstart):
    run_dir, _ = quickstart
    res = runner.invoke(
        app,
        ["run", str(EXAMPLES / "quickstart.toml"), "--run", str(run_dir), "--executor", "local"],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((run_dir / "stats" / "profile.json").read_text())["shards_run"] == 0
    assert json.loads((run_dir / "stats" / "ingest.json").read_text())["shards_run"] == 0


def test_query_sees_every_table_as_a_view(quickstart):
    run_dir, _ = quickstart
    sql = "SELECT reason, count(*) AS n FROM rejects GROUP BY reason ORDER BY reason"
    res = runner.invoke(app, ["query", str(run_dir), sql, "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert sum(r["n"] for r in rows) == N_BAD
    assert {r["reason"] for r in rows} == {c.expected_error for c in edge_cases()} - {None}
    bad = runner.invoke(app, ["query", str(run_dir), "SELECT nope FROM profiles"])
    assert bad.exit_code == 2 and "nope" in bad.output


def test_status_lists_complete_tables(quickstart):
    run_dir, _ = quickstart
    res = runner.invoke(app, ["status", str(run_dir)])
    assert res.exit_code == 0
    for table in ("samples", "profiles", "rejects"):
        assert table in res.output


def test_select_command_writes_a_new_selection(quickstart, tmp_path):
    run_dir, _ = quickstart
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "tiny"\nwhere = ["least(width, height) < 256"]\n')
    res = runner.invoke(
        app, ["select", str(run_dir), "--recipe", str(recipe), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["stage"] == "tiny" and m["totals"]["rows"] == N_ALL - N_BAD - 25


@pytest.mark.parametrize(
    "command", [[], ["run"], ["ingest"], ["profile"], ["select"], ["query"], ["status"]]
)
def test_every_command_has_help(command):
    res = runner.invoke(app, [*command, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_unknown_key_fails_at_load_naming_file_and_key(tmp_path):
    text = (EXAMPLES / "quickstart.toml").read_text().replace("border_width", "border_widht")
    bad = tmp_path / "examples" / "bad.toml"
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    bad.write_text(text)
    res = runner.invoke(app, ["run", str(bad), "--run", str(tmp_path / "run")])
    assert res.exit_code == 2
    assert "bad.toml" in res.output and "profile.border_widht" in res.output
    assert not (tmp_path / "run").exists()  # failed before touching the run


def test_cli_override_is_validated(tmp_path):
    args = ["run", str(EXAMPLES / "quickstart.toml"), "--run", str(tmp_path / "r")]
    res = runner.invoke(app, [*args, "--set", "profile.jpeg_quality=200"])
    assert res.exit_code == 2 and "jpeg_quality" in res.output and "200" in res.output


def test_step_commands_ingest_then_profile_on_ray(tmp_path, edge_dir, ray_local):
    run_dir = str(tmp_path / "run")
    res = runner.invoke(app, ["ingest", str(edge_dir), "--run", run_dir, "--rows-per-shard", "4"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["profile", run_dir, "--executor", "ray", "--set", "jpeg_quality=80"])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "run" / "stats" / "profile.json").read_text())
    assert stats["executor"] == "ray" and stats["shards"] == 5 and stats["rejected"] == N_BAD
    settings = json.loads((tmp_path / "run" / "profiles" / "_settings.json").read_text())
    assert settings["jpeg_quality"] == 80
    res = runner.invoke(
        app, ["profile", run_dir, "--executor", "local", "--set", "jpeg_quality=90"]
    )
    assert res.exit_code == 2 and "other settings" in res.output
