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


# --- Tiny diffusers-format Z-Image pipeline folders (model.sampler / model.pipeline / CLI) ---
# All five components (+ SigLIP 2 for editing) are built offline: a byte-level BPE tokenizer
# trained here with Qwen's special tokens and a Qwen3-style chat template, a 2-layer Qwen3, a
# 4-level VAE (images in multiples of 16 px, as the Flux VAE), a reference transformer with
# non-zero random weights and a static-shift (Turbo-like) scheduler.

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<think>",
    "</think>",
]
# Qwen3's template reduced to what matters here: turns, the generation prompt and the empty
# think block that `enable_thinking=False` would add (the pipeline passes True).
QWEN3_CHAT_TEMPLATE = (
    "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and "
    "enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
CORPUS = [
    "a cat sits on a red mat",
    "a small red house by the sea at night",
    "two dogs play in the snow, photo, 35 mm",
    "a poster with the words HELLO WORLD in bold letters",
    "make the sky blue and add a moon",
    "blurry, low quality, watermark, text",
]
PIPE_TRANSFORMER = {
    "in_channels": 16,
    "dim": 64,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "cap_feat_dim": 32,
    "axes_dims": (8, 12, 12),
    "axes_lens": (512, 64, 64),
}
SIGLIP_DIM = 24


def train_tokenizer(corpus: list[str] = CORPUS, vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on ``corpus`` with Qwen's special tokens."""
    from tests.helpers import train_bpe_tokenizer

    return train_bpe_tokenizer(corpus, SPECIAL_TOKENS, vocab_size=vocab_size,
                               padding_side="right", chat_template=QWEN3_CHAT_TEMPLATE)  # fmt: skip


def tiny_text_encoder(vocab_size: int):
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(1)
    config = Qwen3Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
    )
    return Qwen3Model(config).eval()


def tiny_vae():
    """4 levels (downsample 8): images in multiples of 16 px, as with the Flux VAE."""
    from diffusers import AutoencoderKL

    torch.manual_seed(2)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 16, 16, 16],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    ).eval()


def tiny_siglip():
    from transformers import Siglip2ImageProcessor, Siglip2VisionConfig, Siglip2VisionModel

    torch.manual_seed(3)
    config = Siglip2VisionConfig(
        hidden_size=SIGLIP_DIM, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2
    )
    processor = Siglip2ImageProcessor(patch_size=16, max_num_patches=16)
    return Siglip2VisionModel(config).eval(), processor


def tiny_pipeline_components(omni: bool = False) -> dict:
    """Components for ``ZImagePipeline(**c)`` (``ZImageOmniPipeline`` with ``omni``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tokenizer = train_tokenizer()
    transformer = ZImageTransformer2DModel(
        **PIPE_TRANSFORMER, siglip_feat_dim=SIGLIP_DIM if omni else None
    ).eval()
    randomize(transformer, seed=4)
    components = {
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "vae": tiny_vae(),
        "text_encoder": tiny_text_encoder(len(tokenizer)),
        "tokenizer": tokenizer,
        "transformer": transformer,
    }
    if omni:
        components["siglip"], components["siglip_processor"] = tiny_siglip()
    return components


@pytest.fixture(scope="session")
def zimage_dir(tmp_path_factory):
    """A saved tiny text-to-image Z-Image pipeline folder (model_index.json + 5 components)."""
    from diffusers import ZImagePipeline

    path = tmp_path_factory.mktemp("zimage") / "pipeline"
    ZImagePipeline(**tiny_pipeline_components()).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def omni_dir(tmp_path_factory):
    """The same with an omni transformer and the SigLIP 2 components (editing)."""
    from diffusers import ZImageOmniPipeline

    path = tmp_path_factory.mktemp("zimage_omni") / "pipeline"
    ZImageOmniPipeline(**tiny_pipeline_components(omni=True)).save_pretrained(path)
    return path
