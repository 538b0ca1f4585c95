"""Select: recipe predicates -> curated shards + manifest, with no image decoded."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest

from curation.select import Recipe, Sampling, select
from infra.config import ConfigError, from_dict
from infra.tables import SHARD
from tests.conftest import EXAMPLES
from tests.helpers import ingest_folders, profile, read_table


@pytest.fixture(scope="module")
def run(tmp_path_factory, edge_dir):
    r = ingest_folders(
        tmp_path_factory.mktemp("run"), EXAMPLES / "data" / "coco25", edge_dir, rows_per_shard=7
    )
    profile(r)
    return r


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def test_shards_hold_exactly_the_rows_the_predicates_keep(run, tmp_path):
    recipe = Recipe(name="t", where=("least(width, height) >= 256", "jpeg_bpp >= 0.15"))
    m = select(run, recipe, str(tmp_path / "out"))
    prof = read_table(run, "profiles").to_pylist()
    want = sorted(
        r["sample_id"]
        for r in prof
        if r["error"] is None and min(r["width"], r["height"]) >= 256 and r["jpeg_bpp"] >= 0.15
    )
    assert 0 < len(want) < 25
    rows = [
        row for s in m["shards"] for row in pq.read_table(tmp_path / "out" / s["path"]).to_pylist()
    ]
    assert [r["sample_id"] for r in rows] == want  # ordered by sample_id
    samples = {r["sample_id"]: r for r in read_table(run, "samples").to_pylist()}
    for r in rows:
        assert r["image"] == samples[r["sample_id"]]["image"]
        assert r["caption_alt"] == samples[r["sample_id"]]["caption_alt"]
        assert r["task"] == "t2i" and r["sampling_weight"] == 1.0
    assert m["totals"]["rows"] == len(want)
    assert [f["rows"] for f in m["funnel"]][-1] == len(want)
    assert m["totals"]["profiled_ok"] == sum(r["error"] is None for r in prof)


def test_manifest_checksums_schema_and_sampling(run, tmp_path):
    sampling = Sampling(caption_probs={"caption_alt": 1.0}, resolution_buckets=((256, 256),))
    recipe = Recipe(name="lowres", where=("width >= 256",), rows_per_shard=4, sampling=sampling)
    out = tmp_path / "out"
    m = select(run, recipe, str(out))
    assert m["stage"] == "lowres" and m["format"] == "zfoundry.manifest/1"
    assert all(s["rows"] == 4 for s in m["shards"][:-1]) and 1 <= m["shards"][-1]["rows"] <= 4
    for s in m["shards"]:
        data = (out / s["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
        assert pq.read_schema(out / s["path"]).names == SHARD.names
    assert m["sampling"]["t2i_i2i_ratio"] == [4, 1]
    assert m["recipe"]["where"] == ["width >= 256"]
    assert _manifest(out) == m


def test_threshold_change_reruns_select_only_and_is_deterministic(run, tmp_path, monkeypatch):
    from PIL import Image

    def no_decoding(*a, **k):
        raise AssertionError("select must not decode images")

    monkeypatch.setattr(Image, "open", no_decoding)
    out = tmp_path / "out"
    loose = select(run, Recipe(name="s", where=("sharpness >= 0",), rows_per_shard=5), str(out))
    first = {p.name: p.read_bytes() for p in out.glob("*.parquet")}
    strict = select(run, Recipe(name="s", where=("sharpness >= 1500",), rows_per_shard=5), str(out))
    assert strict["totals"]["rows"] < loose["totals"]["rows"]
    assert sorted(p.name for p in out.glob("*.parquet")) == [s["path"] for s in strict["shards"]]
    select(run, Recipe(name="s", where=("sharpness >= 0",), rows_per_shard=5), str(out))
    assert {p.name: p.read_bytes() for p in out.glob("*.parquet")} == first


def test_rejected_samples_are_never_selected(run, tmp_path):
    m = select(run, Recipe(name="all"), str(tmp_path / "out"))
    prof = read_table(run, "profiles")
    assert m["totals"]["rows"] == prof.column("error").null_count == 36


def test_a_bad_predicate_is_named(run, tmp_path):
    recipe = Recipe(name="x", where=("width > 0", "jpeg_bp >= 0.3"))
    with pytest.raises(ConfigError, match=r"r\.toml: where\[1\]: 'jpeg_bp >= 0.3'.*jpeg_bp"):
        select(run, recipe, str(tmp_path / "out"), recipe_source="r.toml")


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"name": "x", "sampling": {"caption_probs": {"caption_alt": 0.5}}}, "caption_probs"),
        ({"name": "x", "sampling": {"resolution_buckets": [[250, 256]]}}, "resolution_buckets"),
        ({"name": "x", "rows_per_shard": 0}, "rows_per_shard"),
        ({"name": "x", "wehre": ["width > 1"]}, "wehre"),
    ],
)
def test_bad_recipes_fail_at_load(data, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(Recipe, data, source="r.toml")
