"""The frozen encoders of a stage: examples -> what the transformer is fed.

Images go through the pipeline's Flux VAE (posterior mode, so a cache and a live run give the
same latents) or the identity ``pixel`` space; captions through the Qwen3 text encoder as the
reference pipeline applies it (chat template, penultimate hidden states, valid tokens only).
I2I examples are encoded as the editing (omni) pipeline does: the instruction as caption
pieces around one reference image, the source image's latents as the clean reference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from model.s3dit import first_line
from model.text_encoder import TextEncoder
from model.vae import VAE, PixelLatents
from trainer.config import EncoderConfig
from trainer.data import Example


@dataclass
class EncodedBatch:
    """One rank's batch in the transformer's input form (one task per batch)."""

    task: str
    latents: list[Tensor]  # clean target latents, (C, 1, h, w) each
    captions: list  # t2i: (L, D) per example; i2i: list of pieces (L_j, D) per example
    references: list[list[Tensor]] | None = None  # i2i: [(C, 1, h, w)] per example
    sample_ids: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.latents)


@contextlib.contextmanager
def _naming_the_pipeline(pipeline: str, part: str) -> Iterator[None]:
    """A checkpoint that cannot be found or loaded is a ``FileNotFoundError`` naming the
    config field, not the hub client's traceback."""
    try:
        yield
    except OSError as err:
        reason = first_line(err)
        raise FileNotFoundError(
            f"encoders.pipeline = {pipeline!r}: cannot load its {part} (a local Z-Image pipeline "
            f"folder, or a hub id already in the Hugging Face cache; nothing is downloaded with "
            f"HF_HUB_OFFLINE=1): {reason}"
        ) from err


class Encoders:
    def __init__(self, config: EncoderConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.config = config
        with _naming_the_pipeline(config.pipeline, "text encoder"):
            text = TextEncoder.from_pretrained(config.pipeline, device=device, dtype=dtype)
        if text.tokenizer.padding_side == "right":  # same features, much cheaper
            text.padding = "longest"  # (model.text_encoder)
        self.text = text
        if config.latent_space == "pixel":
            self.vae: VAE = PixelLatents().to(device)
        else:
            with _naming_the_pipeline(config.pipeline, "VAE"):
                self.vae = VAE.from_pretrained(config.pipeline, device=device, dtype=dtype)

    @property
    def caption_dim(self) -> int:
        return self.text.feat_dim

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels

    @torch.no_grad()
    def latents(self, images: list[Tensor]) -> list[Tensor]:
        """(3, H, W) images in [-1, 1] -> (C, 1, H/8, W/8) float32 latents."""
        out = []
        for image in images:
            z = self.vae.encode(image[None], sample=False)[0]
            out.append(z.float().unsqueeze(1))
        return out

    @torch.no_grad()
    def captions(self, texts: list[str], task: str) -> list:
        n = self.config.max_caption_tokens
        if task == "i2i":
            return [[p.float() for p in item] for item in self.text.encode_omni(texts, 1, n)]
        return [c.float() for c in self.text.encode(texts, n)]

    def encode(self, examples: list[Example]) -> EncodedBatch:
        task = examples[0].task
        refs = None
        if task == "i2i":
            refs = [[z] for z in self.latents([e.source for e in examples])]
        return EncodedBatch(
            task=task,
            latents=self.latents([e.image for e in examples]),
            captions=self.captions([e.text for e in examples], task),
            references=refs,
            sample_ids=tuple(e.sample_id for e in examples),
        )
