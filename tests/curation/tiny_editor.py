"""A tiny, randomly initialised InstructPix2Pix pipeline saved like a real one, for the expert
editor slot: diffusers' own pipeline class, UNet (8 input channels: noise + image latents),
VAE and scheduler, a tiny CLIP text encoder and a byte-level BPE tokenizer trained here (no
downloads). Its edits are noise; what is tested is the loading and calling path."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import train_bpe_tokenizer

INSTRUCTIONS = ("make it snow", "turn the sky purple")


def save_tiny_instruct_pix2pix(path: Path) -> Path:
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    specials = ["<|endoftext|>", "<|im_end|>"]
    tokenizer = train_bpe_tokenizer(list(INSTRUCTIONS) * 4, specials, vocab_size=300,
                                    padding_side="right", chat_template="")  # fmt: skip
    tokenizer.model_max_length = 16
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=16,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
        attention_head_dim=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2)  # fmt: skip
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                                beta_schedule="scaled_linear")  # fmt: skip
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    pipe.save_pretrained(path)
    return path
