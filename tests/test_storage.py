"""Run-directory bookkeeping: markers, atomic writes, URI handling."""

from __future__ import annotations

from infra.storage import RunDir, join_uri, redact, resolve_uri, shard_name


def test_markers_past_five_digits_keep_their_index(tmp_path):
    run = RunDir(tmp_path)
    for i in (9_999, 10_000, 99_999, 100_000, 100_001, 1_234_567):
        run.write_json(run.marker_path("t", i), {"shard": i})
    done = run.completed("t")
    assert sorted(done) == [9_999, 10_000, 99_999, 100_000, 100_001, 1_234_567]
    assert all(m["shard"] == i for i, m in done.items())
    assert shard_name(100_000) == "100000.parquet"


def test_uri_helpers_keep_options_and_hide_credentials():
    uri = "s3://KEY:SECRET@bucket/runs/r1?endpoint_override=h:9000&scheme=http"
    assert join_uri(uri, "stats", "x.json") == (
        "s3://KEY:SECRET@bucket/runs/r1/stats/x.json?endpoint_override=h:9000&scheme=http"
    )
    assert "SECRET" not in redact(uri) and redact(uri).startswith("s3://***@bucket/runs/r1")
    fs, path = resolve_uri(uri)
    assert path == "bucket/runs/r1" and fs.type_name == "s3"
    assert redact("/local/path") == "/local/path"


def test_stored_uris_drop_credentials_and_a_reader_gives_them_back():
    import pyarrow.fs as pafs

    from infra.storage import public_uri, with_credentials

    root = "s3://K:S@bucket/videos?endpoint_override=h:9000&scheme=http"
    fs, path = resolve_uri(root)
    stored = public_uri(fs, path + "/a b#1.mp4", root)
    assert stored == "s3://bucket/videos/a b#1.mp4?endpoint_override=h:9000&scheme=http"
    assert public_uri(pafs.LocalFileSystem(), "/data/a.mp4", root) == "/data/a.mp4"
    back = with_credentials(stored, root)
    assert back == "s3://K:S@bucket/videos/a b#1.mp4?endpoint_override=h:9000&scheme=http"
    assert resolve_uri(back)[1] == "bucket/videos/a b#1.mp4"
    for other in ("s3://other/x.mp4", "gs://bucket/x.mp4", "/local/x.mp4", "s3://U:P@bucket/x"):
        assert with_credentials(other, root) == other  # another bucket/scheme, or has its own
    assert with_credentials(stored, "s3://bucket/videos") == stored  # no credentials to give


def test_a_repeated_image_is_stored_once_and_unique_images_stay_plain(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from infra.storage import write_parquet_atomic

    rng = np.random.default_rng(0)
    images = [rng.bytes(300_000) for _ in range(8)]  # 2.4 MB distinct: over the 1 MB default
    fs, root = resolve_uri(tmp_path)
    repeated = pa.table({"pair_id": [str(i) for i in range(32)],
                         "target_image": [images[i % 8] for i in range(32)]})  # fmt: skip
    unique = pa.table({"sample_id": [str(i) for i in range(8)], "image": images})
    sizes = {}
    for name, table in (("repeated", repeated), ("unique", unique)):
        info = write_parquet_atomic(fs, f"{root}/{name}.parquet", table)
        assert pq.read_table(tmp_path / f"{name}.parquet").equals(table)
        sizes[name] = info["bytes"]
        meta = pq.ParquetFile(tmp_path / f"{name}.parquet").metadata.row_group(0).column(1)
        assert (meta.dictionary_page_offset is not None) == (name == "repeated")
    assert sizes["repeated"] < 1.05 * sizes["unique"]  # 32 values, 8 distinct: stored once each
