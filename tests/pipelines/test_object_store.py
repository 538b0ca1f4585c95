"""s3:// inputs and run directories against a real local S3-compatible server (moto).

moto's server speaks the S3 HTTP API on 127.0.0.1; pyarrow's S3 filesystem talks to it
exactly as to AWS. Credentials and the endpoint travel inside the URIs, so Ray workers
rebuild the filesystem from the run directory's location alone.
"""

from __future__ import annotations

import json
import shutil
import socket

import pyarrow.fs as pafs
import pytest

from curation.select import Recipe, select
from infra import catalog
from infra.storage import RunDir, resolve_uri
from pipelines.config import IngestConfig
from tests.conftest import EXAMPLES
from tests.curation.test_webdataset import write_img2dataset_shard
from tests.helpers import profile

moto_server = pytest.importorskip("moto.server")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory, edge_dir):
    """A moto S3 server, bucket ``zfoundry``: in/pool/ (photos, sidecars, bad inputs), in/wds/."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    base = f"s3://testing:testing@zfoundry/{{}}?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    fs, _ = resolve_uri(base.format("x") + "&allow_bucket_creation=true")
    fs.create_dir("zfoundry")
    local = tmp_path_factory.mktemp("upload")
    shutil.copytree(EXAMPLES / "data" / "coco25", local / "pool" / "coco")
    shutil.copytree(edge_dir, local / "pool" / "edge")
    (local / "wds").mkdir()
    photos = sorted((EXAMPLES / "data" / "coco25").glob("*.jpg"))
    write_img2dataset_shard(local / "wds" / "00000.tar", 0, photos[:3])
    pafs.copy_files(
        str(local),
        "zfoundry/in",
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=fs,
    )
    yield base
    server.stop()


def _ingest(run: RunDir, base: str) -> dict:
    from curation.ingest import Source
    from pipelines.steps import ingest

    sources = [
        Source(path=base.format("in/pool"), name="pool"),
        Source(path=base.format("in/wds"), name="wds"),
    ]
    return ingest(run, IngestConfig(sources=sources, rows_per_shard=8), progress=False)


def test_pipeline_with_inputs_and_run_directory_in_s3(s3, tmp_path):
    run = RunDir(s3.format("runs/a"))
    stats = _ingest(run, s3)
    assert stats["in"] == 25 + 17 + 3  # .txt and .json sidecars are not samples
    pstats = profile(run)
    assert pstats["in"] == 45 and pstats["rejected"] == 6 and pstats["ok"] == 39
    con = catalog.connect(run)
    n = con.execute("SELECT count(*) FROM samples JOIN profiles USING (sample_id)").fetchone()[0]
    assert n == 45
    reasons = dict(con.execute("SELECT reason, count(*) FROM rejects GROUP BY reason").fetchall())
    assert reasons == {"empty_file": 1, "not_an_image": 2, "too_many_pixels": 1, "truncated": 2}
    out = s3.format("shards/a")
    manifest = select(run, Recipe(name="s3", where=("least(width, height) >= 256",)), out)
    fs, root = resolve_uri(out)
    with fs.open_input_stream(root + "/manifest.json") as f:
        assert json.loads(f.read()) == manifest
    assert manifest["totals"]["rows"] == 28  # 25 photos + the 3 in the tar
    assert "testing:testing" not in run.display
    stored = fs.get_file_info(pafs.FileSelector("zfoundry", recursive=True))
    for info in stored:  # settings, markers, stats, manifest: no credentials anywhere
        if info.type == pafs.FileType.File and info.path.endswith(".json"):
            with fs.open_input_stream(info.path) as f:
                assert b"testing:testing" not in f.read(), info.path


@pytest.mark.ray
def test_ray_executor_on_an_s3_run_equals_local(s3, ray_local):
    runs = {kind: RunDir(s3.format(f"runs/{kind}")) for kind in ("local", "ray")}
    for kind, run in runs.items():
        _ingest(run, s3)
        profile(run, kind)
    files = {}
    for kind, run in runs.items():
        files[kind] = {}
        for path in run.data_files("profiles") + run.data_files("rejects"):
            with run.fs.open_input_stream(path) as f:
                files[kind][path.rsplit("/", 2)[-2:][0] + "/" + path.rsplit("/", 1)[1]] = f.read()
    assert files["local"] == files["ray"] and len(files["local"]) > 6


def test_uris_in_a_parquet_column_are_read_lazily_from_s3(s3, monkeypatch):
    """The Parquet file lives in S3 and lists image paths relative to itself."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.ingest import Source
    from pipelines.steps import ingest

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # readers take credentials from env
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    names = sorted(p.name for p in (EXAMPLES / "data" / "coco25").glob("*.jpg"))[:4]
    table = pa.table({"path": [f"pool/coco/{n}" for n in names] + ["pool/coco/missing.jpg"]})
    fs, root = resolve_uri(s3.format("in/list.parquet"))
    with fs.open_output_stream(root) as f:
        pq.write_table(table, f)
    src = Source(path=s3.format("in/list.parquet"), image_column=None, uri_column="path")
    run = RunDir(s3.format("runs/lazy"))
    ingest(run, IngestConfig(sources=[src]), progress=False)
    con = catalog.connect(run)
    uris = [r[0] for r in con.execute("SELECT uri FROM samples ORDER BY key").fetchall()]
    assert uris[0].startswith("s3://zfoundry/in/pool/coco/") and "testing" not in uris[0]
    stats = profile(run)
    assert stats["ok"] == 4 and stats["reasons"] == {"read_failed": 1}


def test_video_pairs_from_clips_in_s3_equal_local_and_store_no_credentials(s3, tmp_path):
    """Videos and frame folders listed and read from S3 (the MP4 through pyarrow's
    random-access file) give the same clips and frames as the local copy; stored URIs carry
    the endpoint but no credentials, and the stage reads with the root's."""
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from curation.pairs.stage import PairsConfig, VideoPairs
    from curation.pairs.video import Clip, ClipError, list_clips, sample_frames
    from infra.storage import with_credentials
    from pipelines.executors import get_executor
    from pipelines.steps import clips_step, video_stage
    from tests.curation.videos import Segment, write_frames, write_video

    photo = Image.open(EXAMPLES / "data" / "coco25" / "000000099053.jpg")
    local = tmp_path / "videos"
    for folder in ("day", ".cache"):
        (local / folder).mkdir(parents=True)
    write_video(local / "day" / "pan.mp4", [Segment(photo, "pan", 12)])
    write_frames(local / "day" / "zoom", [Segment(photo, "zoom", 6)])
    write_video(local / ".cache" / "hidden.mp4", [Segment(photo, "static", 2)])
    (local / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(2048))
    fs, _ = resolve_uri(s3.format("x"))
    pafs.copy_files(str(local), "zfoundry/videos", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)  # fmt: skip
    root = s3.format("videos")

    remote, here = list_clips(root), list_clips(local)
    assert [(c.clip_id, c.kind, len(c.frames)) for c in remote] == [
        (c.clip_id, c.kind, len(c.frames)) for c in here]  # fmt: skip
    assert len(remote) == 3  # broken.mp4, day/pan.mp4, day/zoom; hidden folders skipped
    assert all(u.startswith("s3://zfoundry/videos/") and "testing" not in u and
               "endpoint_override" in u for c in remote for u in (c.uri, *c.frames))  # fmt: skip
    for r, h in zip(remote, here, strict=True):
        auth = lambda u: with_credentials(u, root)  # noqa: E731
        readable = Clip(r.clip_id, auth(r.uri), r.kind, tuple(map(auth, r.frames)))
        if h.uri.endswith("broken.mp4"):
            for clip in (readable, h):
                with pytest.raises(ClipError) as err:
                    sample_frames(clip, 4)
                assert err.value.code == "unreadable"
            continue
        got, want = sample_frames(readable, 4), sample_frames(h, 4)
        assert [(f.index, f.time_s) for f in got] == [(f.index, f.time_s) for f in want]
        assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image))
                   for a, b in zip(got, want, strict=True))  # fmt: skip

    run = RunDir(s3.format("runs/video"))
    video = VideoPairs(videos=root, frames_per_clip=6, band=(0.985, 0.9995), model="zf-tiny-clip")
    assert clips_step(run, video)["in"] == 3
    stats = get_executor("local", progress=False).run_stage(
        video_stage(run, PairsConfig(video=video)), run
    )
    assert (stats["in"], stats["ok"]) == (3, 2) and stats["reasons"] == {"unreadable": 1}
    for table in ("clips", "edit_pairs", "rejects"):
        for path in run.data_files(table):
            for row in pq.read_table(path, filesystem=run.fs).to_pylist():
                text = json.dumps(row, default=lambda b: "<bytes>")
                assert "testing" not in text and "s3://zfoundry/videos/" in text, table
