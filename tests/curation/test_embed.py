"""Embed stages: one normalised vector per decodable sample, computed once, same on Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curation.clip import TINY, load_clip, tiny_checkpoint
from infra.storage import RunDir
from tests.helpers import read_table


def matrix(table: pa.Table) -> np.ndarray:
    col = table.column("embedding").combine_chunks()
    return np.asarray(col.flatten()).reshape(len(col), -1).astype(np.float32)


@pytest.fixture(scope="module")
def embedded(embedded_run):
    return embedded_run


def test_one_normalised_vector_per_decodable_sample(embedded):
    run, (stats, _) = embedded
    vectors = read_table(run, "vectors")
    profiles = read_table(run, "profiles").to_pylist()
    ok = sorted(r["sample_id"] for r in profiles if r["error"] is None)
    assert sorted(vectors.column("sample_id").to_pylist()) == ok
    assert vectors.schema.field("embedding").type == pa.list_(pa.float16(), 64)
    assert np.allclose(np.linalg.norm(matrix(vectors), axis=1), 1.0, atol=2e-3)
    assert set(vectors.column("model").to_pylist()) == {f"{TINY}:seed0"}
    failed = len(profiles) - len(ok)
    assert stats["skipped"] == failed == 6 and stats["ok"] == len(ok) and stats["rejected"] == 0


def test_caption_vectors_only_for_captioned_decodable_samples(embedded):
    run, (_, text_stats) = embedded
    text = read_table(run, "text_vectors")
    samples = {r["sample_id"]: r for r in read_table(run, "samples").to_pylist()}
    errors = {r["sample_id"]: r["error"] for r in read_table(run, "profiles").to_pylist()}
    want = sorted(s for s, r in samples.items() if r["caption_alt"] and errors[s] is None)
    assert sorted(text.column("sample_id").to_pylist()) == want and len(want) == 25
    assert text_stats["skipped"] == len(samples) - 25


def test_distinct_photos_get_distinct_vectors(embedded):
    run, _ = embedded
    coco = {
        r["sample_id"] for r in read_table(run, "samples").to_pylist() if r["source"] == "coco25"
    }
    vectors = read_table(run, "vectors")
    keep = [i for i, s in enumerate(vectors.column("sample_id").to_pylist()) if s in coco]
    m = matrix(vectors.take(keep))
    assert len(m) == 25
    sims = m @ m.T
    assert (sims[~np.eye(len(m), dtype=bool)] < 0.9999).all()


def test_tiny_checkpoint_loads_through_the_checkpoint_path(tmp_path, monkeypatch):
    path = tiny_checkpoint()
    a = load_clip(TINY, None)
    b = load_clip(TINY, str(path))
    for (ka, va), (kb, vb) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert ka == kb and np.array_equal(va.numpy(), vb.numpy())
    with pytest.raises(ValueError, match=r"missing\.pt' cannot be loaded"):  # names the weights
        load_clip(TINY, str(tmp_path / "missing.pt"))


@pytest.mark.ray
def test_ray_actor_pool_gives_identical_vectors(embedded, quickstart_run):
    """The quickstart embedded the same photos and bad-input corpus with the same shard size
    on a Ray actor pool; the edge cases' ids differ (another source name), the photos' not."""
    run, (local, _) = embedded
    qs_dir, _, qs_stats = quickstart_run
    ray = qs_stats["embed"]
    assert ray["executor"] == "ray" and (ray["in"], ray["skipped"]) == (
        local["in"],
        local["skipped"],
    )
    vectors = [read_table(r, "vectors").to_pylist() for r in (run, RunDir(qs_dir))]
    ours, theirs = ({r["sample_id"]: r for r in rows} for rows in vectors)
    photos = [r["sample_id"] for r in read_table(run, "samples").to_pylist()
              if r["source"] == "coco25"]  # fmt: skip
    assert len(photos) == 25 and all(ours[s] == theirs[s] for s in photos)
