"""diffusers' ZImagePipeline and ZImageOmniPipeline run with S3DiT as their transformer and
give the reference's result. All components are tiny and built offline: a word-level
tokenizer from the ``tokenizers`` library with a chat template, a 2-layer Qwen3 text encoder,
a 2-level VAE and (omni) a 1-layer SigLIP 2 vision tower with its default image processor."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    ZImageOmniPipeline,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3Model,
    Siglip2ImageProcessor,
    Siglip2VisionConfig,
    Siglip2VisionModel,
)

from model import S3DiT
from tests.model.conftest import randomize

SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant"]
WORDS = [*SPECIAL, "a", "cat", "on", "red", "mat", "sits"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
TRANSFORMER = {
    "in_channels": 16,
    "dim": 64,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "cap_feat_dim": 32,
    "axes_dims": (8, 12, 12),
    "axes_lens": (256, 64, 64),
}


def tiny_components() -> dict:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", chat_template=CHAT_TEMPLATE
    )
    torch.manual_seed(0)
    text_config = Qwen3Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=len(WORDS),
        max_position_embeddings=128,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[32, 64],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    return {
        "tokenizer": tokenizer,
        "text_encoder": Qwen3Model(text_config).eval(),
        "vae": vae.eval(),
    }


@pytest.fixture(scope="module")
def components() -> dict:
    return tiny_components()


def _pair(**overrides) -> tuple[ZImageTransformer2DModel, S3DiT]:
    ref = ZImageTransformer2DModel(**TRANSFORMER, **overrides).eval()
    randomize(ref)
    ours = S3DiT(**TRANSFORMER, **overrides).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _generate(components: dict, transformer: torch.nn.Module, output_type: str):
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), transformer=transformer, **components
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        [
            "a cat sits on a red mat",
            "a red cat",
        ],  # + 2 empty negatives (CFG): 4 items, 3 caption lengths
        height=32,
        width=32,
        num_inference_steps=2,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(0),
        max_sequence_length=48,
        output_type=output_type,
    ).images


def test_zimage_pipeline_with_s3dit_equals_reference(components):
    ref, ours = _pair()
    expected = _generate(components, ref, "latent")
    got = _generate(components, ours, "latent")
    assert got.shape == (2, 16, 16, 16) and expected.std() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    images = _generate(components, ours, "np")
    assert images.shape == (2, 32, 32, 3)


def test_zimage_omni_pipeline_with_s3dit_equals_reference(components):
    """Editing with two reference images: clean/noisy tokens, SigLIP features, 4 captions."""
    torch.manual_seed(0)
    vision = Siglip2VisionConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2
    )
    extra = {
        "siglip": Siglip2VisionModel(vision).eval(),
        "siglip_processor": Siglip2ImageProcessor(patch_size=16, max_num_patches=16),
        # the omni pipeline encodes reference images in bf16
        "vae": copy.deepcopy(components["vae"]).to(torch.bfloat16),
    }
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for h, w in ((64, 96), (80, 64))
    ]
    results = []
    for transformer in _pair(siglip_feat_dim=24):
        pipe = ZImageOmniPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            transformer=transformer,
            **{**components, **extra},
        )
        pipe.set_progress_bar_config(disable=True)
        results.append(
            pipe(
                image=images,
                prompt="a cat on a red mat",
                height=32,
                width=32,
                num_inference_steps=2,
                guidance_scale=4.0,
                generator=torch.Generator().manual_seed(0),
                max_sequence_length=48,
                output_type="latent",
            ).images
        )
    expected, got = results
    assert got.shape == (1, 16, 16, 16) and expected.std() > 0.1
    # CFG with scale 4 multiplies model differences by up to 1 + 2 * 4 = 9
    torch.testing.assert_close(got, expected, atol=5e-5, rtol=0)
