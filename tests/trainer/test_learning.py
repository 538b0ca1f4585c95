"""Proof that the trainer learns (not a smoke test): the debug S3-DiT, trained on CPU on the
synthetic shapes data set *after it went through curation* (ingest -> profile -> edit pairs ->
select -> shards), draws the colour named by captions whose colour/shape/position combination
it never saw, as scored from the generated pixels by ``trainer.synthetic``'s checker.

Latent space: the identity ``pixel`` space (8x8 pixel means, ``model.vae.PixelLatents``), so no
autoencoder has to be trained or downloaded and what the model draws is the pixels themselves.
Text encoder: a tiny random Qwen3 with a tokenizer trained on the captions (its features differ
per word, which is all the transformer needs). The longer run is ``bench/learning.py``.
"""

from __future__ import annotations

import os

import pytest
import torch

from model import S3DiT, ZFoundryPipeline
from tests.trainer.conftest import make_toy, stage
from trainer.cache import build_cache
from trainer.data import Manifest
from trainer.synthetic import CHANCE_COLOUR, accuracy
from trainer.trainer import Trainer

STEPS, BUDGET, LR, SAMPLING_STEPS, GUIDANCE = 400, 4096, 3e-3, 20, 2.0


def generate(pipeline_dir, transformer, specs) -> list:
    """One image per held-out spec (grouped by size), seeds 0..n-1 per size."""
    pipe = ZFoundryPipeline.from_pretrained(pipeline_dir, transformer=transformer,
                                            latent_space="pixel")  # fmt: skip
    images, order = [], []
    for size in sorted({(s.width, s.height) for s in specs}):
        group = [s for s in specs if (s.width, s.height) == size]
        out = pipe([s.caption() for s in group], negative_prompt="", steps=SAMPLING_STEPS,
                   guidance=GUIDANCE, width=size[0], height=size[1],
                   seed=list(range(len(group))), progress=False)  # fmt: skip
        images += out.images
        order += group
    return images, order


@pytest.fixture
def all_cores():
    """Earlier in-process stages may have left torch at 1 thread (EmbedStage sets its workers'
    thread count); this test is ~1.4x faster on both cores of a 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    yield
    torch.set_num_threads(before)


@pytest.mark.timeout(600)
def test_trained_model_draws_held_out_colours_untrained_does_not(tmp_path, all_cores):
    toy = make_toy(tmp_path / "data", n=400)
    config = stage(toy, tmp_path / "out", steps=STEPS, log_every=50,
                   data={"token_budget": BUDGET, "cache": str(tmp_path / "cache")},
                   optim={"lr": LR, "warmup_steps": 20})  # fmt: skip
    manifest = Manifest.load(str(toy.manifest))  # encoders run once, not every epoch
    build_cache(manifest, config.encoders, config.data, tmp_path / "cache", progress=False)
    summary = Trainer(config).fit(progress=False)
    assert summary["steps"] == STEPS
    images, specs = generate(toy.pipeline, tmp_path / "out" / "final" / "transformer",
                             toy.info.heldout)  # fmt: skip
    trained = accuracy(images, specs)

    torch.manual_seed(config.seed)  # the trainer's initialisation, untrained
    S3DiT.from_preset("debug", cap_feat_dim=32, in_channels=3).save_pretrained(tmp_path / "init")
    images, specs = generate(toy.pipeline, tmp_path / "init", toy.info.heldout)
    untrained = accuracy(images, specs)
    print(f"held-out colour accuracy: trained {trained}, untrained {untrained}")
    assert trained["colour"] >= 0.6, trained
    assert untrained["colour"] <= CHANCE_COLOUR + 0.1, untrained
