"""Shared fixtures for the trainer tests: the synthetic shapes data set curated into shards
(ingest -> profile -> edit pairs -> select) and a tiny text-encoder folder (a Qwen3 config with
random weights and a tokenizer trained here on the data set's captions: no downloads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from curation.edit_pairs import import_pairs
from curation.select import Recipe, Sampling, select
from tests.helpers import ingest_folders, profile
from tests.model.conftest import tiny_text_encoder, train_tokenizer
from trainer.config import DataConfig, EncoderConfig, ModelConfig, OptimConfig, StageConfig
from trainer.flow import TimestepConfig
from trainer.synthetic import DatasetInfo, write_dataset

BUCKETS = ((64, 64), (96, 64))


@dataclass(frozen=True)
class Toy:
    info: DatasetInfo
    run: object
    manifest: Path
    pipeline: Path


def text_encoder_folder(path: Path, texts: list[str]) -> Path:
    """``path/text_encoder`` (tiny random Qwen3), ``path/tokenizer`` (BPE trained on texts) and
    ``path/scheduler`` (flow-matching Euler, no shift): a Z-Image pipeline folder without VAE,
    enough for the pixel latent space."""
    tokenizer = train_tokenizer(texts, vocab_size=400)
    tiny_text_encoder(len(tokenizer)).save_pretrained(path / "text_encoder")
    tokenizer.save_pretrained(path / "tokenizer")
    from diffusers import FlowMatchEulerDiscreteScheduler  # for sampling the trained models

    FlowMatchEulerDiscreteScheduler(shift=1.0).save_pretrained(path / "scheduler")
    return path


def make_toy(root: Path, n: int, seed: int = 0) -> Toy:
    info = write_dataset(root / "synthetic", n=n, seed=seed)
    run = ingest_folders(root / "run", info.images_dir, rows_per_shard=128)
    profile(run)
    import_pairs(run, str(info.out_dir / "pairs.jsonl"))
    sampling = Sampling(resolution_buckets=BUCKETS)
    select(run, Recipe(name="toy", rows_per_shard=128, sampling=sampling), str(root / "shards"))
    texts = [s.caption() for s in (*info.train_specs, *info.heldout)]
    texts += (info.out_dir / "pairs.jsonl").read_text().splitlines()
    pipeline = text_encoder_folder(root / "encoders", texts)
    return Toy(info, run, root / "shards" / "manifest.json", pipeline)


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Toy:
    return make_toy(tmp_path_factory.mktemp("toy"), n=160)


def stage(toy: Toy, out: Path, **changes) -> StageConfig:
    """A small stage on the toy manifest: debug S3-DiT in the pixel latent space."""
    data = {"token_budget": 1024, **changes.pop("data", {})}
    optim = {"lr": 1e-3, "warmup_steps": 5, "ema_decay": 0.99, **changes.pop("optim", {})}
    base = {
        "name": "toy",
        "manifest": str(toy.manifest),
        "out": out,
        "steps": 4,
        "log_every": 1,
        "model": ModelConfig(preset="debug"),
        "encoders": EncoderConfig(pipeline=str(toy.pipeline), latent_space="pixel"),
        "data": DataConfig(**data),
        "timesteps": TimestepConfig(shift="1"),
        "optim": OptimConfig(**optim),
    }
    return StageConfig(**{**base, **changes})
