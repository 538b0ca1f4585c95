"""The encoder wrappers (``model.text_encoder``, ``model.vae``, ``model.vision``) against what
diffusers' Z-Image pipelines compute with the same tiny components."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ZImageOmniPipeline, ZImagePipeline
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from model.text_encoder import TextEncoder, omni_pieces
from model.vae import VAE, pixel_multiple
from model.vision import VisionEncoder, crop_reference, resize_reference

PROMPTS = ["a cat sits on a red mat", "a poster with the words HELLO WORLD in bold letters", ""]


@pytest.fixture(scope="module")
def ref(zimage_dir):
    return ZImagePipeline.from_pretrained(zimage_dir)


@pytest.fixture(scope="module")
def text(zimage_dir):
    return TextEncoder.from_pretrained(zimage_dir)


def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_chat_template_is_applied_as_the_reference(text):
    chat = text.chat("a cat")
    assert chat == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    assert "<think>" not in chat  # enable_thinking=True: no empty think block
    assert chat == omni_pieces("a cat", 0)[0]  # the omni pipeline's hand-written form


@pytest.mark.parametrize("max_length", [512, 12])
@pytest.mark.parametrize("padding", ["max_length", "longest"])
def test_caption_features_match_zimage_pipeline(ref, text, max_length, padding):
    """Penultimate layer, valid tokens only, truncation. Padded to max_length as the reference:
    bit-identical; padded to the longest prompt: the causal encoder gives the same features."""
    expected, _ = ref.encode_prompt(
        list(PROMPTS), do_classifier_free_guidance=False, max_sequence_length=max_length
    )
    text.padding = padding
    got = text.encode(PROMPTS, max_length=max_length)
    longest = len(text.tokenizer(text.chat(PROMPTS[1])).input_ids)
    assert [len(g) for g in got] == [len(e) for e in expected]
    assert max(len(g) for g in got) == min(max_length, longest)
    assert len(got[2]) > 0  # an empty prompt still has its template tokens
    assert all(g.shape[1] == text.feat_dim == 32 for g in got)
    for g, e in zip(got, expected, strict=True):
        if padding == "max_length":
            assert torch.equal(g, e)
        else:
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_omni_caption_pieces_match_omni_pipeline(omni_dir):
    ref = ZImageOmniPipeline.from_pretrained(omni_dir)
    text = TextEncoder.from_pretrained(omni_dir)
    expected = ref._encode_prompt(["make the sky blue"], num_condition_images=2)
    got = text.encode_omni("make the sky blue", num_references=2)
    assert len(got) == 1 and len(got[0]) == len(expected[0]) == 4  # n + 2 pieces
    for g, e in zip(got[0], expected[0], strict=True):
        assert torch.equal(g, e)


def test_vae_latents_and_pixels_as_the_pipeline(ref, zimage_dir):
    vae = VAE.from_pretrained(zimage_dir)
    assert (vae.downsample, vae.multiple, pixel_multiple(zimage_dir)) == (8, 16, 16)
    processor = VaeImageProcessor(vae_scale_factor=16)
    image = _image(85, 130)  # not a multiple of 16: rounded down to 128 x 80 and resized
    x = vae.preprocess(image)
    assert torch.equal(x, processor.preprocess(image))
    z = vae.encode(x, sample=False)
    mode = ref.vae.encode(x).latent_dist.mode()
    torch.testing.assert_close(z, (mode - 0.1159) * 0.3611, atol=1e-6, rtol=0)
    decoded = vae.decode(z)
    # the same module on the same latents; only oneDNN's summation order may differ (a
    # fresh venv measured 1.3e-5 on 1 of 30720 values)
    torch.testing.assert_close(
        decoded, ref.vae.decode(mode, return_dict=False)[0], atol=1e-4, rtol=1e-5
    )
    pil = vae.postprocess(decoded)
    assert pil[0].size == (128, 80)
    assert np.array_equal(np.asarray(pil[0]), np.asarray(processor.postprocess(decoded)[0]))
    sampled = [vae.encode(x, [torch.Generator().manual_seed(1)]) for _ in range(2)]
    assert torch.equal(*sampled) and not torch.equal(sampled[0], z)  # seeded posterior draws
    with pytest.raises(ValueError, match="multiples of 16"):
        vae.preprocess(torch.rand(1, 3, 40, 64))


def test_vae_tiling_decodes_large_latents(zimage_dir):
    """Tiles of 64 px (the tiny VAE's sample_size): the tiled path runs and blends tiles."""
    vae = VAE.from_pretrained(zimage_dir)
    z = torch.randn(1, 16, 20, 24, generator=torch.Generator().manual_seed(0))
    plain = vae.decode(z)
    vae.enable_tiling()
    tiled = vae.decode(z)
    assert tiled.shape == plain.shape == (1, 3, 160, 192)
    assert not torch.equal(tiled, plain)
    small = torch.randn(1, 16, 8, 8)  # one tile: identical to untiled
    tiled_small = vae.decode(small)
    vae.enable_tiling(False)
    torch.testing.assert_close(tiled_small, vae.decode(small))


def test_siglip_features_and_reference_images_as_omni_pipeline(omni_dir):
    ref = ZImageOmniPipeline.from_pretrained(omni_dir)
    vision = VisionEncoder.from_pretrained(omni_dir)
    assert vision.feat_dim == 24
    image = _image(70, 100)
    expected = ref.prepare_siglip_embeds([image], 1, torch.device("cpu"), torch.float32)[0][0]
    got = vision.encode([image])[0]
    assert got.shape == expected.shape and got.shape[:2] == (3, 5)  # (h, w) patch grid
    assert torch.equal(got, expected)
    cropped = crop_reference(image, 16)
    expected_px = ref.image_processor.preprocess(image, height=64, width=96, resize_mode="crop")
    assert torch.equal(VAE.from_pretrained(omni_dir).preprocess(cropped), expected_px)
    big = _image(1000, 1100)  # > 1024^2 px: resized to that area (or height * width)
    assert resize_reference(big).size == ref.image_processor._resize_to_target_area(big).size
    target = ref.image_processor._resize_to_target_area(big, 512 * 512)
    assert resize_reference(big, 512, 512).size == target.size == (536, 488)
    with pytest.raises(ValueError, match="both sides must be >= 64"):
        resize_reference(_image(40, 100))
