"""Named S3-DiT sizes: ``S3DiT.from_preset(name, **overrides)``.

Every preset is a full set of ``S3DiT.__init__`` (= diffusers ``ZImageTransformer2DModel``)
config arguments.

* ``z-image-6b``: the released Z-Image (Turbo/Base) transformer config: dim 3840, 30 layers,
  30 heads of 128 (the report's prose says 32; the released code and weights have 30),
  FFN ``int(3840 / 3 * 8)`` = 10240, Qwen3-4B caption features (2560), Flux-VAE latents (16
  channels), RoPE axes 32/48/48 with lengths 1536/512/512 (the released config; the
  reference class's default ``axes_lens`` is 1024/512/512). 6,154,908,736 parameters.
* ``mid``: 0.17B (165,097,280) for CPU/GPU benchmarks: dim 1024, 8 layers, 8 heads of 128.
* ``debug``: tiny (590,816 parameters, half of them the fixed-width timestep MLP) for tests
  and CI: dim 64, 2 layers + 1 refiner layer per stream, 2 heads of 32.

Omni (editing) variants add ``siglip_feat_dim`` (1152 for SigLIP 2 so400m) as an override.
"""

from __future__ import annotations

from typing import Any

_COMMON: dict[str, Any] = {
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "in_channels": 16,
    "norm_eps": 1e-5,
    "qk_norm": True,
    "siglip_feat_dim": None,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    "z-image-6b": {
        **_COMMON,
        "dim": 3840,
        "n_layers": 30,
        "n_refiner_layers": 2,
        "n_heads": 30,
        "n_kv_heads": 30,
        "cap_feat_dim": 2560,
        "axes_dims": (32, 48, 48),
        "axes_lens": (1536, 512, 512),
    },
    "mid": {
        **_COMMON,
        "dim": 1024,
        "n_layers": 8,
        "n_refiner_layers": 2,
        "n_heads": 8,
        "n_kv_heads": 8,
        "cap_feat_dim": 2560,
        "axes_dims": (32, 48, 48),
        "axes_lens": (1536, 512, 512),
    },
    "debug": {
        **_COMMON,
        "dim": 64,
        "n_layers": 2,
        "n_refiner_layers": 1,
        "n_heads": 2,
        "n_kv_heads": 2,
        "cap_feat_dim": 32,
        "axes_dims": (8, 12, 12),
        "axes_lens": (1536, 512, 512),
    },
}
