"""Ingest: every non-sidecar file is a sample; ids are stable; Parquet sources by bytes or URI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.ingest import Source, make_sample_id
from infra.storage import RunDir
from pipelines.config import IngestConfig
from pipelines.steps import ingest
from tests.conftest import EXAMPLES
from tests.helpers import by_key, ingest_folders, profile, read_table

PHOTOS = sorted((EXAMPLES / "data" / "coco25").glob("*.jpg"))


@pytest.fixture
def pool(tmp_path):
    root = tmp_path / "pool"
    (root / "sub").mkdir(parents=True)
    shutil.copy(PHOTOS[0], root / "a.jpg")
    (root / "a.txt").write_text("  a caption \n")
    (root / "a.json").write_text(json.dumps({"license": "CC BY 2.0", "n": 3}))
    shutil.copy(PHOTOS[1], root / "sub" / "b.jpg")
    (root / "sub" / "b.json").write_text("{not json")
    (root / "notes.txt").write_text("a lone text file is a sample too")
    (root / "c.png").write_bytes(b"")
    return root


def test_folder_sidecars_and_row_accounting(tmp_path, pool):
    run = ingest_folders(tmp_path / "run", pool)
    rows = by_key(run, "samples")
    assert sorted(rows) == ["a.jpg", "c.png", "notes.txt", "sub/b.jpg"]
    a = rows["a.jpg"]
    assert a["caption_alt"] == "a caption"
    assert json.loads(a["meta"]) == {"license": "CC BY 2.0", "n": 3}
    assert a["image"] == PHOTOS[0].read_bytes()
    assert a["uri"] == str((pool / "a.jpg").resolve())
    b_meta = json.loads(rows["sub/b.jpg"]["meta"])
    assert "invalid JSON" in b_meta["_sidecar_error"] and b_meta["_sidecar_raw"] == "{not json"
    assert rows["notes.txt"]["caption_alt"] is None
    assert rows["c.png"]["image"] == b""


def test_sample_ids_are_stable_across_runs_and_locations(tmp_path, pool):
    first = by_key(ingest_folders(tmp_path / "r1", pool), "samples")
    moved = tmp_path / "elsewhere" / "pool"
    shutil.copytree(pool, moved)
    second = by_key(ingest_folders(tmp_path / "r2", moved), "samples")
    assert {k: r["sample_id"] for k, r in first.items()} == {
        k: r["sample_id"] for k, r in second.items()
    }
    assert first["a.jpg"]["sample_id"] == make_sample_id("pool", "a.jpg")


def test_resumed_ingest_keeps_finished_shards(tmp_path, pool):
    run = ingest_folders(tmp_path / "run", pool, rows_per_shard=2)
    first = [p for p in run.data_files("samples")]
    (tmp_path / "run" / "samples" / "_00001.done.json").unlink()
    (tmp_path / "run" / "samples" / "_SUCCESS.json").unlink()
    before = {p: Path(p).read_bytes() for p in first}
    mtime0 = (tmp_path / "run" / "samples" / "00000.parquet").stat().st_mtime_ns
    cfg = IngestConfig(sources=[Source(path=pool, name="pool")], rows_per_shard=2)
    stats = ingest(run, cfg, progress=False)
    assert stats["shards_run"] == 1 and stats["shards_skipped"] == 1
    assert (tmp_path / "run" / "samples" / "00000.parquet").stat().st_mtime_ns == mtime0
    assert {p: Path(p).read_bytes() for p in run.data_files("samples")} == before


def test_parquet_source_bytes_struct_and_uri(tmp_path):
    data = [p.read_bytes() for p in PHOTOS[:3]]
    table = pa.table(
        {
            "id": ["x", "y", "z"],
            "image": [data[0], None, None],
            "hf": [{"bytes": data[0], "path": None}] * 3,
            "url": [None, str(PHOTOS[1]), "missing.jpg"],  # relative: next to the file
            "text": ["one", "two", None],
            "score": [0.5, 0.7, 0.9],
        }
    )
    pq.write_table(table, tmp_path / "pool.parquet")
    src = Source(
        path=tmp_path / "pool.parquet",
        image_column="image",
        uri_column="url",
        caption_column="text",
        key_column="id",
    )
    run = RunDir(tmp_path / "run")
    ingest(run, IngestConfig(sources=[src]), progress=False)
    rows = by_key(run, "samples")
    assert rows["x"]["image"] == data[0] and rows["y"]["image"] is None
    assert rows["y"]["uri"] == str(PHOTOS[1])
    assert rows["z"]["uri"] == str((tmp_path / "missing.jpg").resolve())
    assert rows["x"]["caption_alt"] == "one"
    assert json.loads(rows["y"]["meta"]) == {"id": "y", "score": 0.7}  # no binary columns
    profile(run)
    prof = by_key(run, "profiles")
    assert prof["x"]["error"] is None
    assert prof["y"]["error"] is None  # read lazily from its URI
    assert prof["y"]["content_sha256"] == hashlib.sha256(data[1]).hexdigest()
    assert prof["z"]["error"] == "read_failed"

    hf = Source(path=tmp_path / "pool.parquet", name="hf", image_column="hf")
    run2 = RunDir(tmp_path / "run2")
    ingest(run2, IngestConfig(sources=[hf]), progress=False)
    assert [r["image"] for r in read_table(run2, "samples").to_pylist()] == [data[0]] * 3


def test_duplicate_keys_are_refused(tmp_path):
    pq.write_table(pa.table({"k": ["a", "a"], "image": [b"1", b"2"]}), tmp_path / "d.parquet")
    src = Source(path=tmp_path / "d.parquet", key_column="k")
    with pytest.raises(ValueError, match="occurs twice"):
        ingest(RunDir(tmp_path / "run"), IngestConfig(sources=[src]), progress=False)


def test_shared_coco_pool_by_uri_with_uncaptioned_images(tmp_path, coco_dir):
    """The 159 shared COCO photos via a Parquet of URIs; 80 have no caption."""
    meta = json.loads((coco_dir / "captions_val2017.json").read_text())
    first_caption = {}
    for a in sorted(meta["annotations"], key=lambda a: a["id"]):
        first_caption.setdefault(a["image_id"], a["caption"].strip())
    images = sorted(meta["images"], key=lambda i: i["file_name"])
    names = sorted(p.name for p in (coco_dir / "images").glob("*.jpg"))
    by_name = {i["file_name"]: i for i in images}
    table = pa.table(
        {
            "uri": [str(coco_dir / "images" / n) for n in names],
            "caption": [
                first_caption.get(by_name[n]["id"]) if n in by_name else None for n in names
            ],
        }
    )
    pq.write_table(table, tmp_path / "coco.parquet")
    src = Source(path=tmp_path / "coco.parquet", image_column=None, uri_column="uri")
    run = RunDir(tmp_path / "run")
    stats = ingest(run, IngestConfig(sources=[src], rows_per_shard=64), progress=False)
    assert stats["in"] == len(names) == 159
    assert stats["with_caption"] == 79
    pstats = profile(run)
    assert pstats["ok"] == 159 and pstats["rejected"] == 0
    prof = read_table(run, "profiles")
    assert min(prof.column("width").to_pylist()) > 100
