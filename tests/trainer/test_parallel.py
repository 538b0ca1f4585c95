"""Data parallelism on CPU: two gloo processes (DDP, applied from outside the model) give the
gradient of the global mean loss over both ranks' samples, exactly what one process computes
on the union of the two batches -- although the ranks hold different numbers of samples.
The two processes are started by the ``ddp_runs`` fixture (tests/trainer/conftest.py)."""

from __future__ import annotations

import json

import torch

from model import S3DiT
from tests.trainer.conftest import stage
from trainer.data import StageData
from trainer.trainer import Trainer, step_generator


def test_ddp_gradients_equal_one_process_on_the_union_of_the_batches(toy, tmp_path, ddp_runs):
    config = stage(toy, tmp_path / "out", data={"token_budget": 2048, "caption_dropout": 0.0})
    ddp = torch.load(ddp_runs.grads, weights_only=True)  # the two ranks' step, rank 0's grads

    ref = Trainer(config)  # one process, the 2-rank plan, both ranks' batches
    ref.data = StageData(ref.manifest, config.data, seed=config.seed, world_size=2)
    step = ref.next_step()
    losses = []
    for rank in (0, 1):
        batch = ref.encoders.encode(ref.data.load(step, rank)[0])
        losses.append(ref.per_sample_losses(batch, step_generator(config.seed, 0, rank)))
    sizes = [len(x) for x in losses]
    assert sizes[0] == ddp["n"] and sizes[0] != sizes[1]  # unequal ranks: the hard case
    total = torch.cat(losses).mean()
    total.backward()
    assert abs(ddp["loss"] - float(total.detach())) < 1e-6
    grads = {n: p.grad for n, p in ref.model.named_parameters() if p.grad is not None}
    assert grads.keys() == ddp["grads"].keys()
    for name, grad in grads.items():
        scale = grad.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(ddp["grads"][name] / scale, grad / scale, atol=1e-5, rtol=0,
                                   msg=name)  # fmt: skip


def test_fsdp2_on_two_ranks_equals_ddp_and_resumes_exactly(ddp_runs):
    """FSDP2 (``fully_shard`` per block, then the root) on the same two ranks: the stage's
    losses equal DDP's, although it stopped after step 2 (sharded state gathered into a full
    checkpoint) and resumed (re-sharded). The CPU run only checks the plumbing: training with
    FSDP2 is for CUDA (``StageConfig.data_parallel``)."""

    def losses(out):
        rows = (out / "metrics.jsonl").read_text().splitlines()
        return [(json.loads(r)["step"], json.loads(r)["loss"]) for r in rows]

    ddp = ddp_runs.curriculum.parent / "run" / "lowres"
    assert [s for s, _ in losses(ddp_runs.fsdp)] == [1, 2, 3, 4]
    assert losses(ddp_runs.fsdp) == losses(ddp)
    state = torch.load(ddp_runs.fsdp / "checkpoints" / "step-0000004" / "state.pt",
                       weights_only=True)  # fmt: skip
    assert state["world_size"] == 2 and state["optimizer_format"] == "fqn"
    exported = S3DiT.from_pretrained(ddp_runs.fsdp / "final" / "transformer").state_dict()
    reference = S3DiT.from_pretrained(ddp / "final" / "transformer").state_dict()
    for name, value in exported.items():  # the full EMA weights, as DDP exports them
        torch.testing.assert_close(value, reference[name], atol=1e-6, rtol=0)
