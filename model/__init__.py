"""The S3-DiT transformer (state-dict compatible with diffusers' ZImageTransformer2DModel),
encoders and the flow-matching sampler (issues 8-9).

    from model import S3DiT, PRESETS
    model = S3DiT.from_preset("debug")
    out = model(latents, t, caption_feats, return_dict=False)[0]      # reference-style call
    packed = model.pack(latents, t, caption_feats)                     # training API
    pred = model.forward_packed(packed)                                # (N_target, p*p*C)
"""

from model.packing import PackedBatch, TokenStream, pack_batch, patchify, unpack, unpatchify
from model.presets import PRESETS
from model.s3dit import S3DiT

__all__ = [
    "PRESETS",
    "PackedBatch",
    "S3DiT",
    "TokenStream",
    "pack_batch",
    "patchify",
    "unpack",
    "unpatchify",
]
