"""Data parallelism on CPU: two gloo processes (DDP, applied from outside the model) give the
gradient of the global mean loss over both ranks' samples, exactly what one process computes
on the union of the two batches -- although the ranks hold different numbers of samples.
The two processes are started by the ``ddp_runs`` fixture (tests/trainer/conftest.py)."""

from __future__ import annotations

import torch

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
