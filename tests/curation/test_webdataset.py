"""WebDataset / img2dataset tar shards: captions and metadata survive ingest."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import pytest

from curation.ingest import Source, iter_samples
from tests.conftest import EXAMPLES
from tests.helpers import ingest_folders, profile, read_table

PHOTOS = sorted((EXAMPLES / "data" / "coco25").glob("*.jpg"))


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tf.addfile(info, io.BytesIO(data))


def write_img2dataset_shard(path: Path, start: int, photos: list[Path]) -> list[str]:
    """An img2dataset-style shard: KEY.jpg, KEY.txt, KEY.json per sample."""
    keys = []
    with tarfile.open(path, "w") as tf:
        for i, photo in enumerate(photos):
            key = f"{start + i:09d}"
            keys.append(key)
            meta = {"url": f"http://example.com/{key}.jpg", "key": key, "status": "success"}
            if i == 1:  # caption only inside the json, as img2dataset can write it
                meta["caption"] = f"json caption {key}"
            else:
                _add(tf, f"{key}.txt", f"caption {key}".encode())
            _add(tf, f"{key}.jpg", photo.read_bytes())
            _add(tf, f"{key}.json", json.dumps(meta).encode())
    return keys


@pytest.fixture
def wds(tmp_path):
    root = tmp_path / "wds"
    root.mkdir()
    write_img2dataset_shard(root / "00000.tar", 0, PHOTOS[:3])
    write_img2dataset_shard(root / "00001.tar", 3, PHOTOS[3:5])
    (root / "00000.parquet").write_bytes(b"img2dataset writes these too")  # ignored: not a tar
    (root / "00000_stats.json").write_text("{}")
    return root


def test_tar_members_become_samples_with_captions_and_keys(tmp_path, wds):
    assert Source(path=str(wds)).resolved_kind == "webdataset"
    run = ingest_folders(tmp_path / "run", wds)
    rows = {r["key"]: r for r in read_table(run, "samples").to_pylist()}
    assert sorted(rows) == [
        f"0000{s}.tar/{k:09d}.jpg" for s, k in [(0, 0), (0, 1), (0, 2), (1, 3), (1, 4)]
    ]
    first = rows["00000.tar/000000000.jpg"]
    assert first["caption_alt"] == "caption 000000000"
    assert first["image"] == PHOTOS[0].read_bytes()
    meta = json.loads(first["meta"])
    assert meta["__key__"] == "000000000" and meta["__url__"] == str(wds / "00000.tar")
    assert meta["url"] == "http://example.com/000000000.jpg" and meta["status"] == "success"
    assert rows["00000.tar/000000001.jpg"]["caption_alt"] == "json caption 000000001"
    assert first["uri"] == f"{wds / '00000.tar'}#000000000.jpg"
    stats = profile(run)
    assert stats["ok"] == 5 and stats["rejected"] == 0


def test_a_cut_off_tar_keeps_complete_members_and_warns(tmp_path, caplog):
    shard = tmp_path / "cut" / "00000.tar"
    shard.parent.mkdir()
    write_img2dataset_shard(shard, 0, PHOTOS[:4])
    data = shard.read_bytes()
    sizes = [p.stat().st_size for p in PHOTOS[:4]]
    cut = 3 * 512 + sizes[0] + sizes[1] + 4 * 512 + sizes[2] // 2  # inside the 3rd photo
    shard.write_bytes(data[:cut])
    with caplog.at_level(logging.WARNING):
        rows = list(iter_samples(Source(path=str(shard.parent))))
    keys = [r["key"] for r in rows]
    assert "00000.tar/000000000.jpg" in keys and "00000.tar/000000002.jpg" not in keys
    assert all(
        r["image"] == PHOTOS[int(r["key"][-5])].read_bytes()
        for r in rows
        if r["key"].endswith(".jpg")
    )
    assert any("cut off or damaged" in rec.message for rec in caplog.records)
