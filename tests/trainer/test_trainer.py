"""The local trainer on shards made by the curation pipeline: steps, metrics, checkpoints,
exact resume, the latent cache, bad input."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from model import S3DiT
from tests.trainer.conftest import stage
from trainer.checkpoint import latest_checkpoint
from trainer.data import Manifest, StageData
from trainer.trainer import Trainer


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_steps_write_metrics_checkpoints_and_a_loadable_export(toy, tmp_path):
    out = tmp_path / "out"
    summary = Trainer(stage(toy, out, steps=3, checkpoint_every=2)).fit(progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["samples_per_s"] > 0 and 0 <= r["padding_fraction"] < 1
               and r["model_tflops_per_s"] > 0 and "mfu" not in r for r in rows)  # fmt: skip
    assert rows[0]["lr"] == pytest.approx(1e-3 / 5)  # warm-up: step 1 of 5
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-0000002", "step-0000003"]  # fmt: skip
    assert summary["steps"] == 3 and summary["skipped"] == 0
    model = S3DiT.from_pretrained(out / "final" / "transformer")
    assert model.config.in_channels == 3 and model.config.cap_feat_dim == 32
    note = json.loads((out / "final" / "zfoundry_stage.json").read_text())
    assert note["latent_space"] == "pixel" and note["step"] == 3
    from diffusers import ZImageTransformer2DModel

    ZImageTransformer2DModel.from_pretrained(out / "final" / "transformer")  # diffusers loads it


def test_resume_continues_with_exactly_the_uninterrupted_losses(toy, tmp_path):
    full = tmp_path / "full"
    Trainer(stage(toy, full, steps=6)).fit(progress=False)
    part = tmp_path / "part"
    Trainer(stage(toy, part, steps=3)).fit(progress=False)  # "killed" after step 3's checkpoint
    summary = Trainer(stage(toy, part, steps=6)).fit(progress=False)
    assert summary["resumed_from"].endswith("step-0000003")
    assert _losses(part) == _losses(full)  # bit-identical on CPU
    a = torch.load(latest_checkpoint(full) / "state.pt", weights_only=True)["model"]
    b = torch.load(latest_checkpoint(part) / "state.pt", weights_only=True)["model"]
    for k in a:  # CPU kernels may sum in another order under load: equal to ~1 ulp
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_plan_is_seeded_mixes_tasks_by_ratio_and_balances_ranks(toy):
    manifest = Manifest.load(str(toy.manifest))
    cfg = stage(toy, "unused", data={"t2i_i2i_ratio": (3, 1), "samples_per_epoch": 800}).data
    data = StageData(manifest, cfg, seed=3, world_size=2)
    plan = data.plan(0)
    again = StageData(manifest, cfg, seed=3, world_size=2).plan(0)
    for a, b in zip(plan, again, strict=True):
        assert a.task == b.task
        assert all((x == y).all() for x, y in zip(a.batches, b.batches, strict=True))
    assert all(len(s.batches) == 2 and all(len(b) for b in s.batches) for s in plan)
    drawn = {t: sum(len(b) for s in plan if s.task == t for b in s.batches) for t in ("t2i", "i2i")}
    assert drawn["i2i"] / sum(drawn.values()) == pytest.approx(0.25, abs=0.05)
    tasks = data.index["task"]
    for s in plan:
        assert all((tasks[b] == s.task).all() for b in s.batches)
        assert all(data.index["tokens"][b].sum() <= cfg.token_budget for b in s.batches)
    assert [s.task for s in data.plan(1)] != [s.task for s in plan]


def test_captions_follow_the_probabilities_with_dropout(toy):
    manifest = Manifest.load(str(toy.manifest))
    cfg = stage(toy, "unused", data={"caption_dropout": 0.2, "t2i_i2i_ratio": (1, 0)}).data
    data = StageData(manifest, cfg, seed=0)
    kinds = [e.text_kind for s in data.plan(0)[:20] for e in data.load(s)[0]]
    dropped = kinds.count("dropout") / len(kinds)
    assert 0.1 < dropped < 0.3 and set(kinds) == {"dropout", "caption_alt"}


def test_i2i_examples_carry_the_source_image_and_instruction(toy):
    manifest = Manifest.load(str(toy.manifest))
    cfg = stage(toy, "unused", data={"caption_dropout": 0.0, "t2i_i2i_ratio": (0, 1)}).data
    data = StageData(manifest, cfg, seed=0)
    examples, skipped = data.load(data.plan(0)[0])
    assert examples and not skipped
    for e in examples:
        assert e.task == "i2i" and e.text.startswith("make the ") and e.source is not None
        assert e.source.shape == e.image.shape and not torch.equal(e.source, e.image)


def test_changed_shard_is_refused(toy, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(toy.manifest.parent, shards)
    table = pq.read_table(shards / "00000.parquet")
    pq.write_table(table.slice(1), shards / "00000.parquet")
    with pytest.raises(ValueError, match="sha256 differs from the manifest"):
        Manifest.load(str(shards / "manifest.json")).read_shard(0)


def test_undecodable_rows_are_skipped_and_logged(toy, tmp_path):
    """A shard row with corrupt image bytes: the step trains without it, skipped.jsonl names it."""
    import hashlib

    shards = tmp_path / "shards"
    shutil.copytree(toy.manifest.parent, shards)
    path = shards / "00000.parquet"
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[:40] = [b"\x89PNG broken"] * 40
    column = table.schema.get_field_index("image")
    table = table.set_column(column, "image", pa.array(images, pa.binary()))
    pq.write_table(table, path)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (shards / "manifest.json").write_text(json.dumps(manifest))
    bad = {r for r in table.column("sample_id").to_pylist()[:40]}
    cfg = stage(toy, tmp_path / "out", steps=6, manifest=str(shards / "manifest.json"))
    summary = Trainer(cfg).fit(progress=False)
    logged = [json.loads(x) for x in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert summary["steps"] == 6 and summary["skipped"] == len(logged) > 0
    assert {r["sample_id"] for r in logged} <= bad


def test_cache_trains_like_the_live_encoders(toy, tmp_path):
    from trainer.cache import build_cache

    live = stage(toy, tmp_path / "live", steps=3)
    counts = build_cache(Manifest.load(str(toy.manifest)), live.encoders, live.data,
                         tmp_path / "cache", progress=False)  # fmt: skip
    rows = json.loads(toy.manifest.read_text())["totals"]["rows"]
    assert counts["rows"] == rows and counts["errors"] == 0
    again = build_cache(Manifest.load(str(toy.manifest)), live.encoders, live.data,
                        tmp_path / "cache", progress=False)  # fmt: skip
    assert again["shards"] == 0 and again["skipped_shards"] == counts["shards"]
    Trainer(live).fit(progress=False)
    cached = stage(toy, tmp_path / "cached", steps=3, data={"cache": str(tmp_path / "cache")})
    Trainer(cached).fit(progress=False)
    assert _losses(tmp_path / "cached") == pytest.approx(_losses(tmp_path / "live"), rel=1e-4)
    other = stage(toy, tmp_path / "x", data={"cache": str(tmp_path / "cache"),
                                            "resolution": "tokens"})  # fmt: skip
    with pytest.raises(ValueError, match="resolution differ"):
        Trainer(other)


def test_gradient_checkpointing_switch_changes_no_loss(toy, tmp_path):
    """Applied from outside the model: the same losses (to float rounding) with and without."""
    from trainer.config import ModelConfig

    Trainer(stage(toy, tmp_path / "plain", steps=3)).fit(progress=False)
    model = ModelConfig(preset="debug", gradient_checkpointing=True)
    Trainer(stage(toy, tmp_path / "ckpt", steps=3, model=model)).fit(progress=False)
    assert _losses(tmp_path / "ckpt") == pytest.approx(_losses(tmp_path / "plain"), rel=1e-5)
