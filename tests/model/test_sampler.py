"""``ZFoundryPipeline`` (S3-DiT + ``model.sampler``) against diffusers' Z-Image pipelines, all
loaded from the same tiny saved pipeline folder: same prompts, seeds, sizes, steps and CFG give
the same latents (to float32 noise of the two transformers) and the same images (spec: within
2/255 per pixel; reached: ~1e-5). The schedule is compared bit for bit with the scheduler's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    ZImageImg2ImgPipeline,
    ZImageOmniPipeline,
    ZImagePipeline,
)
from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift as reference_shift
from PIL import Image

from model.pipeline import ZFoundryPipeline
from model.sampler import FlowSchedule, strength_start

LATENT_ATOL = 5e-5  # reached: ~1e-5 (S3-DiT vs the reference transformer, fp32, CFG x5)
PIXEL_ATOL = 2 / 255  # the bound; reached: ~1e-5


def _gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def reference_run(pipe, **kwargs) -> tuple[np.ndarray, torch.Tensor]:
    """(images as np in [0, 1], final latents) of a diffusers pipeline call."""
    final = {}

    def keep(_pipe, _i, _t, tensors):
        final["latents"] = tensors["latents"]
        return {}

    images = pipe(**kwargs, output_type="np", callback_on_step_end=keep).images
    return images, final["latents"]


def assert_same(ours, images: np.ndarray, latents: torch.Tensor) -> None:
    assert ours.images.shape == images.shape and ours.latents.shape == latents.shape
    assert latents.std() > 0.5 and images.std() > 0.05  # non-trivial outputs
    torch.testing.assert_close(ours.latents, latents, atol=LATENT_ATOL, rtol=0)
    assert np.abs(ours.images - images).max() <= PIXEL_ATOL


@pytest.fixture(scope="module")
def pipes(zimage_dir):
    ref = ZImagePipeline.from_pretrained(zimage_dir)
    ref.set_progress_bar_config(disable=True)
    return ref, ZFoundryPipeline.from_pretrained(zimage_dir)


SCHEDULES = [
    ({"shift": 3.0}, 8, 1024),  # Z-Image-Turbo's scheduler/
    ({"shift": 3.0}, 50, 1024),
    ({"shift": 6.0}, 5, 64),
    ({"use_dynamic_shifting": True}, 30, 256),  # resolution-dependent shift
    ({"use_dynamic_shifting": True}, 30, 4096),
    ({"use_dynamic_shifting": True, "time_shift_type": "linear", "max_shift": 2.0}, 9, 1600),
    ({"shift": 2.0, "shift_terminal": 0.1}, 12, 1024),
]


@pytest.mark.parametrize(("config", "steps", "seq_len"), SCHEDULES)
def test_schedule_is_the_schedulers(config, steps, seq_len):
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    cfg = scheduler.config
    mu = reference_shift(  # as ZImagePipeline calls it
        seq_len, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift
    )
    base = torch.linspace(1.0, 1 / steps, steps).tolist()  # the pipeline's default sigmas
    scheduler.set_timesteps(sigmas=base, mu=mu)
    ours = FlowSchedule.from_config(dict(cfg))
    assert ours.mu(seq_len) == mu
    sigmas = ours.sigmas(steps, seq_len)
    assert torch.equal(sigmas, scheduler.sigmas)
    assert torch.equal(ours.model_times(sigmas), (1000 - scheduler.timesteps) / 1000)
    assert sigmas[0] == 1 and sigmas[-1] == 0 and (sigmas.diff() < 0).all()


@pytest.mark.parametrize(("steps", "strength"), [(8, 0.6), (10, 0.3), (5, 1.0), (50, 0.75)])
def test_strength_start_is_the_img2img_pipelines(steps, strength):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=torch.linspace(1.0, 1 / steps, steps).tolist())
    holder = type("P", (), {"scheduler": scheduler})()
    timesteps, n = ZImageImg2ImgPipeline.get_timesteps(holder, steps, strength, "cpu")
    assert n == steps - strength_start(steps, strength) == len(timesteps)


def test_schedule_rejects_what_it_does_not_implement():
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        FlowSchedule.from_config({"use_karras_sigmas": True})
    with pytest.raises(ValueError, match="DDIMScheduler"):
        FlowSchedule.from_config({"_class_name": "DDIMScheduler"})
    with pytest.raises(ValueError, match="strength"):
        strength_start(8, 0.0)


CASES = {
    # turbo-like: no CFG, two prompts, non-square
    "no-cfg": (
        {"guidance": 0.0},
        ["a cat sits on a red mat", "a red house by the sea"],
        1,
        80,
        128,
    ),
    # CFG with negative prompts (one per prompt)
    "cfg-negative": (
        {"guidance": 4.0, "negative": ["blurry, low quality", "text"]},
        ["a cat sits on a red mat", "two dogs play in the snow"],
        1,
        128,
        80,
    ),
    # CFG with the reference's renormalisation and truncation, 2 images of one prompt
    "cfg-norm-trunc": (
        {"guidance": 5.0, "cfg_normalization": 1.0, "cfg_truncation": 0.5},
        ["a poster with the words HELLO WORLD"],
        2,
        96,
        96,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_text_to_image_matches_zimage_pipeline(pipes, case):
    ref, ours = pipes
    opts, prompts, per_prompt, height, width = CASES[case]
    guidance, negative = opts["guidance"], opts.get("negative")
    extra = {k: opts[k] for k in ("cfg_normalization", "cfg_truncation") if k in opts}
    seeds = list(range(11, 11 + len(prompts) * per_prompt))
    images, latents = reference_run(
        ref,
        prompt=list(prompts),  # the reference rewrites its prompt list in place
        negative_prompt=list(negative) if negative else None,
        height=height,
        width=width,
        num_inference_steps=4,
        guidance_scale=guidance,
        num_images_per_prompt=per_prompt,
        generator=_gens(seeds),
        **extra,
    )
    got = ours(
        prompts,
        negative_prompt=negative,
        height=height,
        width=width,
        steps=4,
        guidance=guidance,
        num_images=per_prompt,
        seed=11,
        output="np",
        progress=False,
        **extra,
    )
    assert got.seeds == seeds
    assert_same(got, images, latents)
    assert not np.allclose(got.images[0], got.images[1], atol=0.01)  # per-image noise


def test_dynamic_shift_matches_zimage_pipeline(pipes):
    ref, ours = pipes
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    dynamic = ZImagePipeline(**{**ref.components, "scheduler": scheduler})
    dynamic.set_progress_bar_config(disable=True)
    images, latents = reference_run(
        dynamic,
        prompt=["a small red house"],
        height=64,
        width=112,
        num_inference_steps=3,
        guidance_scale=2.0,
        generator=_gens([5]),
    )
    mine = ZFoundryPipeline(
        ours.transformer,
        FlowSchedule.from_config(dict(scheduler.config)),
        ours.text_encoder,
        ours.vae,
    )
    got = mine("a small red house", height=64, width=112, steps=3, guidance=2.0, seed=5,
               output="np", progress=False)  # fmt: skip
    assert_same(got, images, latents)


def test_sampler_equals_reference_exactly_with_the_same_transformer(pipes):
    """With S3-DiT inside ZImagePipeline the rest is compared alone: caption encoding, noise,
    packed CFG batch (built once), schedule, guidance, renormalisation, truncation, Euler steps
    and decoding agree bit for bit."""
    ref, ours = pipes
    hybrid = ZImagePipeline(**{**ref.components, "transformer": ours.transformer})
    hybrid.set_progress_bar_config(disable=True)
    prompts, negatives = ["a cat sits on a red mat", "a red house"], ["blurry", "text, watermark"]
    kwargs = {"height": 64, "width": 96, "cfg_normalization": 1.2, "cfg_truncation": 0.8}
    images, latents = reference_run(
        hybrid,
        prompt=list(prompts),
        negative_prompt=list(negatives),
        num_inference_steps=5,
        guidance_scale=3.0,
        generator=_gens([1, 2]),
        **kwargs,
    )
    got = ours(prompts, negative_prompt=negatives, steps=5, guidance=3.0, seed=1, output="np",
               progress=False, **kwargs)  # fmt: skip
    assert torch.equal(got.latents, latents)
    assert np.array_equal(got.images, images)
    embeds = hybrid.encode_prompt(list(prompts), negative_prompt=list(negatives))
    precomputed = ours(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], steps=5,
                       guidance=3.0, seed=1, output="latent", progress=False, **kwargs)  # fmt: skip
    assert precomputed.images is None and torch.equal(precomputed.latents, latents)


def test_image_of_a_batch_equals_the_single_run_with_its_seed(pipes):
    _, ours = pipes
    prompts = ["a cat sits on a red mat", "two dogs play in the snow, photo"]
    kwargs = {"height": 64, "width": 64, "steps": 3, "guidance": 3.0, "output": "latent"}
    batch = ours(prompts, seed=40, progress=False, **kwargs).latents
    for i, prompt in enumerate(prompts):
        single = ours(prompt, seed=40 + i, progress=False, **kwargs).latents
        torch.testing.assert_close(batch[i : i + 1], single, atol=1e-5, rtol=0)


def test_image_to_image_matches_img2img_pipeline(pipes):
    ref, ours = pipes
    img2img = ZImageImg2ImgPipeline(**ref.components)
    img2img.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (85, 130, 3), dtype=np.uint8))  # -> 128 x 80
    prompts = ["a cat sits on a red mat", "a red house by the sea"]
    images, latents = reference_run(
        img2img,
        prompt=list(prompts),
        negative_prompt=["blurry", "blurry"],
        image=init,
        strength=0.6,
        num_inference_steps=5,
        guidance_scale=3.0,
        generator=_gens([3, 4]),
    )
    got = ours(prompts, negative_prompt="blurry", image=init, strength=0.6, steps=5,
               guidance=3.0, seed=3, output="np", progress=False)  # fmt: skip
    assert got.images.shape == (2, 80, 128, 3)
    assert_same(got, images, latents)


@pytest.fixture(scope="module")
def omni_pipes(omni_dir):
    ref = ZImageOmniPipeline.from_pretrained(omni_dir)
    ref.set_progress_bar_config(disable=True)
    ref.vae.to(torch.bfloat16)  # the omni pipeline encodes reference images in bf16
    ours = ZFoundryPipeline.from_pretrained(omni_dir)
    ours.vae.to(torch.bfloat16)
    rng = np.random.default_rng(1)  # one reference gets cropped: 100 x 70 -> 96 x 64
    sizes = ((70, 100), (80, 64))
    refs = [Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)) for hw in sizes]
    return ref, ours, refs


EDIT = {"steps": 3, "guidance": 4.0, "seed": 5}


def test_editing_matches_omni_pipeline(omni_pipes):
    """Two reference images, CFG with a negative prompt, SigLIP features, noisy/clean tokens."""
    ref, ours, refs = omni_pipes
    images, latents = reference_run(
        ref,
        image=list(refs),
        prompt=["make the sky blue and add a moon"],
        negative_prompt=["blurry"],
        num_inference_steps=3,
        guidance_scale=4.0,
        generator=_gens([5]),
    )
    got = ours("make the sky blue and add a moon", negative_prompt="blurry", references=refs,
               output="np", progress=False, **EDIT)  # fmt: skip
    assert got.images.shape == images.shape == (1, 80, 64, 3)  # the last reference's size
    assert latents.std() > 0.5
    torch.testing.assert_close(got.latents, latents, atol=LATENT_ATOL, rtol=0)
    # The bf16 VAE turns ~1e-5 latent differences into bf16 rounding flips (up to ~10/255 in
    # these random-weight pixels), so pixels are compared on the same latents here, and end to
    # end in the next test.
    assert np.array_equal(ours.vae.postprocess(ours.vae.decode(latents), "np"), images)


def test_editing_equals_omni_pipeline_exactly_with_the_same_transformer(omni_pipes):
    """S3-DiT inside ZImageOmniPipeline: caption pieces, reference-image preparation, VAE
    encoding, SigLIP features, packing and the loop agree bit for bit, images included."""
    ref, ours, refs = omni_pipes
    hybrid = ZImageOmniPipeline(**{**ref.components, "transformer": ours.transformer})
    hybrid.set_progress_bar_config(disable=True)
    images, latents = reference_run(
        hybrid,
        image=list(refs),
        prompt=["make the sky blue"],
        negative_prompt=["blurry"],
        num_inference_steps=3,
        guidance_scale=4.0,
        generator=_gens([5]),
    )
    got = ours("make the sky blue", negative_prompt="blurry", references=refs, output="np",
               progress=False, **EDIT)  # fmt: skip
    assert torch.equal(got.latents, latents)
    assert np.array_equal(got.images, images)


def test_bad_inputs_raise_naming_the_value(pipes):
    _, ours = pipes
    with pytest.raises(ValueError, match="height=100 must be a positive multiple of 16"):
        ours("a cat", height=100, width=64, steps=1, progress=False)
    with pytest.raises(ValueError, match="negative prompt needs guidance"):
        ours("a cat", negative_prompt="dog", height=64, width=64, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"strength=1\.5"):
        ours("a cat", image=Image.new("RGB", (64, 64)), strength=1.5, steps=2, progress=False)
    with pytest.raises(ValueError, match="editing needs the vision component"):
        ours("a cat", references=[Image.new("RGB", (64, 64))], steps=1, progress=False)
    with pytest.raises(ValueError, match="3 seeds for 2 images"):
        ours(["a", "b"], seed=[1, 2, 3], height=64, width=64, steps=1, progress=False)
