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


CURRICULUM = """
out = "run"
backend = "{backend}"

[ray]
num_workers = 2
poll_interval_s = 0.2

[defaults]
manifest = "{manifest}"
steps = 4
log_every = 1
checkpoint_every = 2
encoders = {{ pipeline = "{pipeline}", latent_space = "pixel" }}
timesteps = {{ shift = "1" }}
optim = {{ lr = 1e-3, warmup_steps = 2, ema_decay = 0.99 }}

[[stages]]
name = "lowres"                      # text-to-image only
data = {{ token_budget = 1024, t2i_i2i_ratio = [1, 0] }}

[[stages]]
name = "omni"                        # text-to-image and editing pairs, 4:1
data = {{ token_budget = 1024 }}
"""


def write_curriculum(toy: Toy, root: Path, backend: str = "ray") -> Path:
    """A two-stage curriculum (lowres -> omni) on the toy shards, writing to ``root/run``."""
    root.mkdir(parents=True, exist_ok=True)
    text = CURRICULUM.format(backend=backend, manifest=toy.manifest, pipeline=toy.pipeline)
    (root / "curriculum.toml").write_text(text)
    return root / "curriculum.toml"


@dataclass(frozen=True)
class DDPRuns:
    grads: Path  # rank 0's gradient of one step (tests/trainer/test_parallel.py)
    curriculum: Path  # the curriculum trained by the same two ranks (the Ray backend's reference)
    fsdp: Path  # its first stage under FSDP2, stopped after step 2 and resumed to the end


def _spawned(rank: int, world: int, init_file: str, grad_config, grad_out: str, cur: str,
             fsdp_out: str) -> None:  # fmt: skip
    import os
    from dataclasses import replace

    import torch
    import torch.distributed as dist

    from trainer.curriculum import load_curriculum
    from trainer.trainer import FSDP_ON_GLOO, Trainer, step_generator

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)  # as each Ray worker with cpus_per_worker = 1
        trainer = Trainer(grad_config, rank=rank, world_size=world)
        step = trainer.next_step()
        examples, _ = trainer.data.load(step, rank)
        batch = trainer.encoders.encode(examples)
        loss = trainer.forward_backward_step(batch, step_generator(grad_config.seed, 0, rank))
        if rank == 0:
            grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()
                     if p.grad is not None}  # fmt: skip
            torch.save({"grads": grads, "loss": float(loss), "n": len(examples)}, grad_out)
        stages = load_curriculum(cur).stages
        for config in stages:  # Trainer.fit on two ranks, no Ray
            Trainer(config, rank=rank, world_size=world).fit(progress=False)
        os.environ[FSDP_ON_GLOO] = "1"  # (test_parallel compares it with DDP)
        for steps in (2, stages[0].steps):  # sharded checkpoints: gathered, then re-sharded
            fsdp = replace(stages[0], out=Path(fsdp_out), steps=steps, data_parallel="fsdp")
            Trainer(fsdp, rank=rank, world_size=world).fit(progress=False)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="session")
def ddp_runs(toy, tmp_path_factory) -> DDPRuns:
    """Two gloo processes (torch.multiprocessing, no Ray): one DDP step for the gradient test,
    the two-stage curriculum with ``Trainer.fit`` on both ranks, then its first stage again
    under FSDP2 (stopped and resumed)."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("ddp")
    grad_config = stage(toy, root / "grad", data={"token_budget": 2048, "caption_dropout": 0.0})
    cur = write_curriculum(toy, root / "curriculum", backend="local")
    args = (
        2,
        str(root / "init"),
        grad_config,
        str(root / "rank0.pt"),
        str(cur),
        str(root / "fsdp"),
    )
    mp.spawn(_spawned, args=args, nprocs=2, join=True)
    return DDPRuns(grads=root / "rank0.pt", curriculum=cur, fsdp=root / "fsdp")


def assert_final_samples(final: Path, toy: Toy, png: Path, size: tuple[int, int]) -> None:
    """``zfoundry sample`` draws a ``size`` image from a stage's exported ``final/`` (the toy
    pipeline folder: pixel latent space)."""
    from PIL import Image
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["sample", "--checkpoint", str(final), "--base",
                                      str(toy.pipeline), "--prompt", "a red circle", "--size",
                                      f"{size[0]}x{size[1]}", "--steps", "2", "--out", str(png),
                                      "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Image.open(png).size == size
