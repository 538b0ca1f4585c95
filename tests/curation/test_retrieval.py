"""search / voids / prune over a run's vectors, through the CLI and the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curation.retrieval import load_vectors, run_prune, run_voids, search_run
from curation.select import Recipe, select
from pipelines.cli import app
from tests.conftest import EXAMPLES

runner = CliRunner()
PHOTOS = sorted((EXAMPLES / "data" / "coco25").glob("*.jpg"))


def test_image_search_finds_the_planted_image_first(embedded_run):
    run, _ = embedded_run
    samples = {r["key"]: r["sample_id"] for r in _samples(run)}
    for photo in PHOTOS[:5]:
        hits = search_run(run, image=photo, k=3)
        assert hits[0]["sample_id"] == samples[photo.name]
        assert hits[0]["sim"] == pytest.approx(1.0, abs=2e-3)
        assert hits[0]["sim"] > hits[1]["sim"]


def test_the_index_is_cached_and_rebuilt_only_when_vectors_change(embedded_run):
    run, _ = embedded_run
    search_run(run, text="a dog", k=2)
    meta = Path(run.root) / "_index" / "index.json"
    stamp = meta.stat().st_mtime_ns
    search_run(run, text="a cat", k=2)
    assert meta.stat().st_mtime_ns == stamp
    assert json.loads(meta.read_text())["fingerprint"] == load_vectors(run).fingerprint


def test_search_cli_json(embedded_run):
    run, _ = embedded_run
    res = runner.invoke(app, ["search", run.root, "--image", str(PHOTOS[3]), "-k", "2", "--json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.output)
    assert hits[0]["key"] == f"coco25/{PHOTOS[3].name}" and len(hits) == 2
    bad = runner.invoke(app, ["search", run.root])
    assert bad.exit_code == 2 and "exactly one" in bad.output


def test_voids_rank_every_concept_sparsest_first(embedded_run):
    run, _ = embedded_run
    rows = run_voids(run, ["a", "b c", "d e f"], threshold=-1.0, k=10)
    assert sorted(r["concept"] for r in rows) == ["a", "b c", "d e f"]
    assert all(r["count"] == 10 for r in rows)  # every neighbour passes cosine >= -1
    rows = run_voids(run, ["a", "b c"], threshold=0.999, k=10)
    assert all(r["count"] == 0 for r in rows)
    assert [r["max_sim"] for r in rows] == sorted(r["max_sim"] for r in rows)


def test_prune_by_failure_images_lists_them_and_recipes_can_exclude_them(embedded_run, tmp_path):
    run, _ = embedded_run
    table = run_prune(run, images=PHOTOS[:2], k=1)
    ids = {r["key"]: r["sample_id"] for r in _samples(run)}
    assert set(table.column("sample_id").to_pylist()) == {ids[p.name] for p in PHOTOS[:2]}
    recipe = Recipe(name="x", where=("sample_id NOT IN (SELECT sample_id FROM prune)",))
    kept = select(run, recipe, str(tmp_path / "out"))
    assert kept["totals"]["rows"] == kept["totals"]["profiled_ok"] - 2


def _samples(run):
    from tests.helpers import read_table

    return read_table(run, "samples").to_pylist()


def test_embed_score_dedup_prune_select_in_one_pipeline(tmp_path, edge_dir):
    import shutil

    pool = tmp_path / "pool"
    shutil.copytree(EXAMPLES / "data" / "coco25", pool)
    (tmp_path / "fail.txt").write_text("a photo with six fingers\n")
    (tmp_path / "r.toml").write_text(
        'name = "clean"\nwhere = ["dedup.keep", "sample_id NOT IN (SELECT sample_id FROM prune)"]\n'
    )
    (tmp_path / "p.toml").write_text(
        'steps = ["ingest", "profile", "embed", "score", "dedup", "prune", "select"]\n'
        '[executor]\nkind = "local"\n[[ingest.sources]]\npath = "pool"\n'
        "[dedup]\nk = 10\nthreshold = 0.999\n"
        '[prune]\nfailures = "fail.txt"\nk = 3\n'
        '[select]\nrecipe = "r.toml"\nout = "shards"\n'
    )
    res = runner.invoke(app, ["run", str(tmp_path / "p.toml"), "--run", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "run" / "shards" / "manifest.json").read_text())
    dedup = json.loads((tmp_path / "run" / "stats" / "dedup.json").read_text())
    assert manifest["totals"]["rows"] == dedup["kept"] - 3 + _kept_among_pruned(tmp_path / "run")


def _kept_among_pruned(run_dir) -> int:
    from infra import catalog
    from infra.storage import RunDir

    con = catalog.connect(RunDir(run_dir))
    return (
        3
        - con.execute(
            "SELECT count(*) FROM prune JOIN dedup USING (sample_id) WHERE dedup.keep"
        ).fetchone()[0]
    )
