"""The S3-DiT transformer (state-dict compatible with diffusers' ZImageTransformer2DModel),
encoders and the flow-matching sampler (issues 8-9).

    from model import S3DiT, PRESETS
    model = S3DiT.from_preset("debug")
    out = model(latents, t, caption_feats, return_dict=False)[0]      # reference-style call
    packed = model.pack(latents, t, caption_feats)                     # training API
    pred = model.forward_packed(packed)                                # (N_target, p*p*C)

    pipe = ZFoundryPipeline.from_pretrained("Z-Image-Turbo/")          # sampling (issue 9)
    image = pipe("a cat", preset="turbo", seed=0).images[0]            # docs/sampling_images.md
"""

from model.packing import PackedBatch, TokenStream, pack_batch, patchify, unpack, unpatchify
from model.pipeline import SampleOutput, ZFoundryPipeline
from model.presets import PRESETS
from model.s3dit import S3DiT
from model.sampler import SAMPLING_PRESETS, Conditioning, FlowSchedule, denoise
from model.text_encoder import TextEncoder
from model.vae import VAE, PixelLatents
from model.vision import VisionEncoder

__all__ = [
    "PRESETS",
    "SAMPLING_PRESETS",
    "VAE",
    "Conditioning",
    "FlowSchedule",
    "PackedBatch",
    "PixelLatents",
    "S3DiT",
    "SampleOutput",
    "TextEncoder",
    "TokenStream",
    "VisionEncoder",
    "ZFoundryPipeline",
    "denoise",
    "pack_batch",
    "patchify",
    "unpack",
    "unpatchify",
]
