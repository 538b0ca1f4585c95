"""Shared helpers for the S3-DiT tests: a tiny reference model with non-zero random weights
and seeded plain / omni batches."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import ZImageTransformer2DModel

from model import S3DiT

TINY = {
    "all_patch_size": (2, 1),
    "all_f_patch_size": (1, 1),
    "in_channels": 16,  # 2*2*16 = 64 = the reference's width for empty omni image slots
    "dim": 64,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "cap_feat_dim": 24,
    "siglip_feat_dim": 20,
    "axes_dims": (8, 12, 12),
    "axes_lens": (256, 64, 64),
}


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Re-initialise every parameter (zero-initialised ones included) with a seeded normal,
    scaled by 1/sqrt(fan_in) for matrices so activations stay O(1); 1 + 0.1 N for norms."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 2 and "pad_token" not in name:
                p.copy_(noise / math.sqrt(p.shape[1]))
            elif "norm" in name or name.startswith(("cap_embedder.0", "siglip_embedder.0")):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(noise if "pad_token" in name else 0.1 * noise)


@pytest.fixture(scope="module")
def pair() -> tuple[ZImageTransformer2DModel, S3DiT]:
    """(reference, ours) with identical non-zero random weights, eval mode, fp32."""
    ref = ZImageTransformer2DModel(**TINY).eval()
    randomize(ref)
    ours = S3DiT(**TINY).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def plain_batch(lengths: list[int], sizes: list[tuple[int, int]], seed: int = 0, cap_dim: int = 24):
    gen = torch.Generator().manual_seed(seed)
    x = [torch.randn(16, 1, h, w, generator=gen) for h, w in sizes]
    caps = [torch.randn(n, cap_dim, generator=gen) for n in lengths]
    t = torch.rand(len(sizes), generator=gen)
    return x, t, caps


def omni_batch(seed: int = 0):
    """Item 0: 2 reference images + target (4 captions, SigLIP for the references);
    item 1: 1 reference + target (3 captions). Caption lengths not multiples of 32."""
    gen = torch.Generator().manual_seed(seed)

    def lat(h: int, w: int) -> torch.Tensor:
        return torch.randn(16, 1, h, w, generator=gen)

    def txt(n: int) -> torch.Tensor:
        return torch.randn(n, 24, generator=gen)

    def sig(h: int, w: int) -> torch.Tensor:
        return torch.randn(h, w, 20, generator=gen)

    x = [[lat(8, 8), lat(6, 10), lat(8, 6)], [lat(4, 4), lat(10, 8)]]
    caps = [[txt(5), txt(37), txt(20), txt(4)], [txt(9), txt(33), txt(3)]]
    siglip = [[sig(3, 4), sig(5, 5), None], [sig(4, 4), None]]
    noise = [[0, 0, 1], [0, 1]]
    t = torch.rand(2, generator=gen)
    return {"x": x, "t": t, "cap_feats": caps, "siglip_feats": siglip, "image_noise_mask": noise}
