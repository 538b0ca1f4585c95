"""``trainer.flops``: the analytic FLOP count of a forward pass against PyTorch's own counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from model import S3DiT
from tests.model.conftest import omni_batch, plain_batch
from trainer.flops import forward_flops, peak_flops, train_step_flops


@pytest.mark.parametrize("omni", [False, True])
def test_forward_flops_match_pytorchs_counter(omni):
    torch.manual_seed(0)
    model = S3DiT.from_preset("debug", cap_feat_dim=24, siglip_feat_dim=20 if omni else None)
    model.attention_backend = "sdpa"  # one attention call per group of equal lengths
    if omni:
        packed = model.pack(**omni_batch())  # references, SigLIP tokens, noisy + clean
    else:
        packed = model.pack(*plain_batch([7, 40, 3], [(8, 8), (12, 6), (4, 4)]))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.forward_packed(packed)
    counted = counter.get_flop_counts()["Global"]
    matmuls = sum(v for k, v in counted.items() if "addmm" not in str(k))  # mm + attention
    ours = forward_flops(model, packed)
    # ours = the bias-free matmuls and attention exactly, plus the embedders and the final
    # layer; left out: adaLN modulation and the timestep MLP (per sample, not per token)
    assert matmuls <= ours <= counter.get_total_flops()
    assert ours >= 0.95 * counter.get_total_flops()
    assert train_step_flops(model, packed) == 3 * ours


def test_peak_is_only_known_for_gpus():
    assert peak_flops(torch.device("cpu")) is None
