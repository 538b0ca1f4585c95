"""FLOPs of a training step of the S3-DiT and model FLOPs utilisation (MFU).

``forward_flops(model, packed)`` counts the matrix multiplications of one forward pass over a
packed batch, as ``S3DiT.forward_packed`` computes them: every per-token linear layer (patch
and caption embedders, the attention and feed-forward projections of every block, the final
layer on the target tokens) at 2 FLOPs per weight per token, and attention at
``4 * dim * L^2`` per sequence of length ``L`` per block (``Q K^T`` and ``A V``). Tokens are the
packed token slots, segment pads included (``padding_fraction`` in the metrics says how many
are pads). The per-sample adaLN modulation, norms, RoPE and the timestep MLP are left out
(they are linear in the batch size, not in tokens). A training step is 3x the forward (the
backward pass costs two forwards), the convention of the PaLM paper's MFU (appendix B);
activation checkpointing's recompute is not counted.

``peak_flops(device)`` is the dense bf16 tensor-core peak of known GPUs (vendor data sheets),
or None. ``tests/trainer/test_flops.py`` checks ``forward_flops`` against PyTorch's own
``FlopCounterMode`` on the debug model.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

# Dense bf16 peak FLOP/s (no sparsity) from the vendors' data sheets.
PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,  # the SXM part's device name
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
}


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of a CUDA device, by name; None when unknown or not CUDA."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16, key=len, reverse=True):  # most specific first
        if key in name:
            return PEAK_BF16[key]
    return None


_WEIGHTS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def _linear_weights(module: nn.Module) -> int:
    """Weights of the per-token linear layers of a module (adaLN modulation excluded)."""
    if module not in _WEIGHTS:
        _WEIGHTS[module] = sum(m.weight.numel() for name, m in module.named_modules()
                               if isinstance(m, nn.Linear) and "adaLN" not in name)  # fmt: skip
    return _WEIGHTS[module]


def _lengths(cu_seqlens: torch.Tensor) -> list[int]:
    return (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()


def forward_flops(model, packed) -> float:
    """Matmul FLOPs of ``model.forward_packed(packed)`` (see the module docstring)."""
    dim = model.config.dim
    key = f"{packed.patch_size}-{packed.f_patch_size}"
    streams = [(packed.image, model.all_x_embedder[key], model.noise_refiner),
               (packed.caption, model.cap_embedder, model.context_refiner)]  # fmt: skip
    if packed.siglip is not None:
        streams.append((packed.siglip, model.siglip_embedder, model.siglip_refiner))
    total = 0.0
    for stream, embedder, refiner in streams:
        tokens = int(stream.pad_mask.numel())
        squares = sum(n * n for n in _lengths(stream.cu_seqlens))
        total += 2 * _linear_weights(embedder) * tokens
        for block in refiner:
            total += 2 * _linear_weights(block) * tokens + 4 * dim * squares
    tokens = int(packed.unified_index.numel())
    squares = sum(n * n for n in _lengths(packed.unified_cu_seqlens))
    for block in model.layers:
        total += 2 * _linear_weights(block) * tokens + 4 * dim * squares
    total += 2 * _linear_weights(model.all_final_layer[key]) * int(packed.target_in_unified.numel())
    return total


def train_step_flops(model, packed) -> float:
    """Forward + backward: 3x the forward."""
    return 3 * forward_flops(model, packed)
