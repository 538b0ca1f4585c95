"""Executors: local and Ray Data give identical tables; completed shards are never redone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from curation.stages.profile import ProfileStage
from pipelines.executors.base import RunConflict, StageInputMissing
from tests.conftest import EXAMPLES
from tests.helpers import ingest_folders, profile, read_table


@pytest.fixture(scope="module")
def pool(tmp_path_factory, edge_dir):
    root = tmp_path_factory.mktemp("pool")
    shutil.copytree(EXAMPLES / "data" / "coco25", root / "coco")
    shutil.copytree(edge_dir, root / "edge")
    return root


def _files(run, table):
    return {p.rsplit("/", 1)[1]: Path(p).read_bytes() for p in run.data_files(table)}


@pytest.mark.ray
def test_local_and_ray_executors_write_identical_tables(tmp_path, pool, ray_local):
    local = ingest_folders(tmp_path / "local", pool / "coco", pool / "edge", rows_per_shard=6)
    on_ray = ingest_folders(tmp_path / "ray", pool / "coco", pool / "edge", rows_per_shard=6)
    assert _files(local, "samples") == _files(on_ray, "samples")
    s_local = profile(local, "local")
    s_ray = profile(on_ray, "ray")
    assert s_ray["executor"] == "ray" and s_ray["shards_run"] == s_local["shards_run"] == 7
    for table in ("profiles", "rejects"):
        assert _files(local, table) == _files(on_ray, table), table
    assert read_table(local, "profiles").equals(read_table(on_ray, "profiles"))
    for key in ("in", "ok", "rejected", "reasons"):
        assert s_local[key] == s_ray[key]


def test_interrupted_profile_resumes_only_unfinished_shards(tmp_path, pool):
    run = ingest_folders(tmp_path / "run", pool / "coco", pool / "edge", rows_per_shard=6)
    profile(run)
    clean = {t: _files(run, t) for t in ("profiles", "rejects")}
    table_dir = tmp_path / "run" / "profiles"
    # What a kill mid-shard leaves: shard 3 written half-way without its marker, shard 5 and
    # the table marker never written, and a stray temp file.
    (table_dir / "_00003.done.json").unlink()
    (table_dir / "00003.parquet").write_bytes(b"partial")
    (table_dir / "_00005.done.json").unlink()
    (table_dir / "00005.parquet").unlink()
    (table_dir / "_SUCCESS.json").unlink()
    (table_dir / "_tmp-deadbeef-00004.parquet").write_bytes(b"junk")
    kept = {i: (table_dir / f"{i:05d}.parquet").stat().st_mtime_ns for i in (0, 1, 2, 4, 6)}

    stats = profile(run)
    assert stats["shards_run"] == 2 and stats["shards_skipped"] == 5
    assert stats["in"] == 42 and stats["ok"] + stats["rejected"] == 42
    assert {t: _files(run, t) for t in ("profiles", "rejects")} == clean
    assert {i: (table_dir / f"{i:05d}.parquet").stat().st_mtime_ns for i in kept} == kept
    again = profile(run)
    assert again["shards_run"] == 0


def test_changed_settings_on_an_existing_run_are_refused(tmp_path, pool):
    run = ingest_folders(tmp_path / "run", pool / "edge", rows_per_shard=6)
    profile(run, jpeg_quality=75)
    profile(run, jpeg_quality=75, batch_rows=3)  # batch size does not change outputs
    with pytest.raises(RunConflict, match="jpeg_quality"):
        profile(run, jpeg_quality=90)


def test_profile_needs_a_complete_samples_table(tmp_path):
    from infra.storage import RunDir
    from pipelines.executors import get_executor

    with pytest.raises(StageInputMissing, match="samples"):
        get_executor("local", progress=False).run_stage(ProfileStage(), RunDir(tmp_path / "r"))


def test_completion_is_keyed_by_input_content(tmp_path, pool):
    import pyarrow.parquet as pq

    from infra.storage import shard_name

    run = ingest_folders(tmp_path / "run", pool / "edge", rows_per_shard=6)
    profile(run)
    before = run.completed("profiles")
    table = pq.read_table(run.path("samples", shard_name(1)))
    table = table.set_column(
        table.schema.get_field_index("caption_alt"), "caption_alt", [["changed"] * len(table)]
    )
    info = run.write_parquet("samples", shard_name(1), table)  # what a re-ingest would do
    run.write_json(run.marker_path("samples", 1), {"shard": 1, **info})
    stats = profile(run)
    assert stats["shards_run"] == 1
    after = run.completed("profiles")
    assert after[1]["input_sha256"] == info["sha256"] != before[1]["input_sha256"]
    assert {i: m for i, m in after.items() if i != 1} == {i: m for i, m in before.items() if i != 1}


def test_two_runs_are_byte_identical(tmp_path, pool):
    runs = [ingest_folders(tmp_path / f"r{i}", pool / "edge", rows_per_shard=4) for i in (1, 2)]
    for r in runs:
        profile(r)
    for table in ("samples", "profiles", "rejects"):
        assert _files(runs[0], table) == _files(runs[1], table)
