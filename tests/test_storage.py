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
