"""Regressions for defects found in review: each test failed before its fix."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.ingest import Source, iter_samples
from curation.select import Recipe, select
from curation.stages.profile import ProfileStage
from infra.storage import RunDir
from pipelines.config import IngestConfig
from pipelines.executors.base import RunConflict
from pipelines.steps import ingest
from tests.conftest import EXAMPLES
from tests.helpers import ingest_folders, profile, read_table

PHOTOS = sorted((EXAMPLES / "data" / "coco25").glob("*.jpg"))


def _pool(root, n):
    root.mkdir(parents=True, exist_ok=True)
    for p in PHOTOS[:n]:
        shutil.copy(p, root / p.name)
    return root


def test_resume_after_the_source_changed_is_refused(tmp_path):
    pool = _pool(tmp_path / "pool", 6)
    run = ingest_folders(tmp_path / "run", pool, rows_per_shard=2)
    (tmp_path / "run" / "samples" / "_00002.done.json").unlink()  # as if killed
    (tmp_path / "run" / "samples" / "_SUCCESS.json").unlink()
    shutil.copy(PHOTOS[10], pool / "000000000000.jpg")  # sorts first: every shard shifts
    with pytest.raises(RunConflict, match="sources changed"):
        ingest(run, IngestConfig(sources=[Source(path=pool, name="pool")], rows_per_shard=2))


def test_one_folder_spelled_two_ways_is_one_source(tmp_path, monkeypatch):
    pool = _pool(tmp_path / "pool", 2)
    monkeypatch.chdir(tmp_path)
    run = RunDir(tmp_path / "run")
    ingest(run, IngestConfig(sources=[Source(path="pool", name="p")]), progress=False)
    ingest(run, IngestConfig(sources=[Source(path=f"./{pool.name}/", name="p")]), progress=False)


def test_reshard_after_deleting_samples_leaves_no_stale_profiles(tmp_path):
    pool = _pool(tmp_path / "pool", 6)
    run = ingest_folders(tmp_path / "run", pool, rows_per_shard=2)
    profile(run)
    shutil.rmtree(tmp_path / "run" / "samples")  # what the RunConflict message advises
    run = ingest_folders(tmp_path / "run", pool, rows_per_shard=3)
    stats = profile(run)
    assert stats["shards"] == 2 and stats["in"] == 6
    ids = read_table(run, "profiles").column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == 6
    m = select(run, Recipe(name="x"), str(tmp_path / "out"))
    assert m["totals"]["rows"] == 6


def test_select_refuses_an_incomplete_profiles_table(tmp_path):
    run = ingest_folders(tmp_path / "run", _pool(tmp_path / "pool", 6), rows_per_shard=2)
    profile(run)
    (tmp_path / "run" / "profiles" / "_00002.done.json").unlink()  # killed mid-shard
    with pytest.raises(FileNotFoundError, match="incomplete"):
        select(run, Recipe(name="x"), str(tmp_path / "out"))


def test_uri_only_rows_changed_since_profiling_are_dropped_and_counted(tmp_path):
    pool = _pool(tmp_path / "pool", 3)
    run = RunDir(tmp_path / "run")
    src = Source(path=pool, name="p", inline=False)
    ingest(run, IngestConfig(sources=[src]), progress=False)
    profile(run)
    Image.new("RGB", (16, 16)).save(pool / PHOTOS[0].name, "JPEG")  # replaced after profiling
    (pool / PHOTOS[1].name).unlink()
    m = select(run, Recipe(name="x"), str(tmp_path / "out"))
    assert m["totals"]["rows"] == 1
    assert m["totals"]["dropped"] == {"changed_since_profile": 1, "unreadable": 1}
    shard = pq.read_table(tmp_path / "out" / m["shards"][0]["path"])
    assert shard.column("image")[0].as_py() == PHOTOS[2].read_bytes()


@pytest.mark.parametrize("size", [(70_000, 4), (4, 66_000)])
def test_images_longer_than_jpeg_allows_get_full_metrics(size):
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    row = ProfileStage().profile_one("x", "x", buf.getvalue())
    assert row["error"] is None and (row["width"], row["height"]) == size
    assert 0 < row["jpeg_bpp"] < 1


def test_a_stray_tar_in_a_folder_is_not_silently_taken_for_webdataset(tmp_path):
    pool = _pool(tmp_path / "pool", 3)
    (pool / "old").mkdir()
    with tarfile.open(pool / "old" / "backup.tar", "w"):
        pass
    with pytest.raises(ValueError, match="kind"):
        Source(path=pool)
    rows = list(iter_samples(Source(path=pool, kind="folder")))
    assert len(rows) == 4  # 3 photos + the tar as a sample of its own


def test_hf_image_cell_with_only_a_path_is_read_lazily(tmp_path):
    shutil.copy(PHOTOS[0], tmp_path / "a.jpg")
    cells = [{"bytes": None, "path": "a.jpg"}]
    pq.write_table(pa.table({"image": cells}), tmp_path / "ds.parquet")
    run = RunDir(tmp_path / "run")
    ingest(run, IngestConfig(sources=[Source(path=tmp_path / "ds.parquet")]), progress=False)
    assert profile(run)["ok"] == 1


def test_tar_members_differing_only_in_case_and_damaged_tars_are_reported(tmp_path):
    root = tmp_path / "wds"
    root.mkdir()
    with tarfile.open(root / "00000.tar", "w") as tf:
        for name in ("k1.jpg", "k1.JPG", "k1.txt"):
            data = b"caption" if name.endswith("txt") else PHOTOS[0].read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (root / "00001.tar").write_bytes(b"this is not a tar archive at all" * 40)
    warnings: list[str] = []
    rows = list(iter_samples(Source(path=root), warnings))
    assert sorted(r["key"] for r in rows) == ["00000.tar/k1.JPG", "00000.tar/k1.jpg"]
    assert all(r["caption_alt"] == "caption" for r in rows)
    assert len(warnings) == 1 and "00001.tar" in warnings[0]


def test_cli_override_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    from infra.config import load_toml
    from pipelines.config import SelectConfig

    (tmp_path / "pipe").mkdir()
    (tmp_path / "cwd").mkdir()
    (tmp_path / "pipe" / "r.toml").write_text('name = "pipe"\n')
    (tmp_path / "cwd" / "r.toml").write_text('name = "cwd"\n')
    (tmp_path / "pipe" / "p.toml").write_text('[select]\nrecipe = "r.toml"\n')
    monkeypatch.chdir(tmp_path / "cwd")
    cfg = load_toml(
        SelectConfig,
        tmp_path / "pipe" / "p.toml",
        section="select",
        overrides={"recipe": "r.toml"},
        relative_paths=True,
    )
    assert cfg.recipe == tmp_path / "cwd" / "r.toml"


def test_a_bad_recipe_fails_when_the_pipeline_loads(tmp_path):
    from infra.config import ConfigError
    from pipelines.config import load_pipeline

    (tmp_path / "r.toml").write_text('name = "x"\nwher = ["width > 1"]\n')
    (tmp_path / "p.toml").write_text('steps = ["profile"]\n[select]\nrecipe = "r.toml"\n')
    with pytest.raises(ConfigError, match="wher"):
        load_pipeline(tmp_path / "p.toml")


def test_missing_heads_and_graphs_fail_when_the_pipeline_loads(tmp_path):
    from infra.config import ConfigError
    from pipelines.config import load_pipeline

    (tmp_path / "kg" / "edges").mkdir(parents=True)  # not a graph: no nodes/
    for section, said in (('[score]\naigc = "heads/aigc.safetensors"', "score.aigc"),
                          ('[weights]\nkg = "kg"', "weights.kg")):  # fmt: skip
        (tmp_path / "p.toml").write_text(f'steps = ["profile"]\n{section}\n')
        with pytest.raises(ConfigError, match=said) as err:
            load_pipeline(tmp_path / "p.toml")
        assert str(tmp_path) in str(err.value)  # the path, resolved against the file


def test_a_failed_start_leaves_no_settings_that_refuse_the_fixed_rerun(tmp_path):
    from pipelines.executors.base import RunConflict, guard_settings

    run = RunDir(tmp_path / "run")
    guard_settings(run, "scores", {"aigc": "bad.pt"})  # then the head failed to load
    guard_settings(run, "scores", {"aigc": "good.pt"})  # nothing was written: replaced
    assert json.loads((tmp_path / "run" / "scores" / "_settings.json").read_text()) == {
        "aigc": "good.pt"}  # fmt: skip
    run.write_json(run.marker_path("scores", 0), {"shard": 0})  # a shard made with them
    with pytest.raises(RunConflict, match="other settings"):
        guard_settings(run, "scores", {"aigc": "other.pt"})
    guard_settings(run, "edit_pairs", {"n": 1}, "video")  # per prefix: 00000.parquet is not
    (tmp_path / "run" / "edit_pairs" / "00000.parquet").write_bytes(b"")  # a video shard
    guard_settings(run, "edit_pairs", {"n": 2}, "video")


def test_credentials_never_reach_stored_settings(tmp_path):
    from pipelines.executors.base import guard_settings

    run = RunDir(tmp_path / "run")
    guard_settings(run, "samples", {"sources": [{"path": "s3://AK:SECRET@b/in?scheme=http"}]})
    stored = (tmp_path / "run" / "samples" / "_settings.json").read_text()
    assert "SECRET" not in stored and "s3://***@b/in" in stored
    assert json.loads(stored)
