"""``ZFoundryPipeline``: Z-Image sampling with S3-DiT -- text-to-image, image-to-image and
reference-image editing -- equal to diffusers' ``ZImagePipeline``, ``ZImageImg2ImgPipeline`` and
``ZImageOmniPipeline`` for the same inputs and seeds (tests/model/test_sampler.py).

    pipe = ZFoundryPipeline.from_pretrained("Z-Image-Turbo/", dtype=torch.bfloat16, device="cuda")
    out = pipe("a cat on a red mat", preset="turbo", height=1024, width=768, seed=42)
    out.images[0].save("cat.png")

Seeds: image ``i`` of a call gets its own ``torch.Generator("cpu").manual_seed(seeds[i])``
(``seed=s`` means ``s, s+1, ...``) and its initial noise is drawn exactly as the reference
draws it with ``generator=[...]`` (float32, on the CPU), so a text-to-image or editing image
does not depend on the rest of its batch. Image-to-image encodes each input image with the
generator of the first output that uses it, as the reference does.

Differences from the reference pipelines: a negative prompt without guidance raises (the
reference ignores it); with several input images and ``num_images > 1``, image-to-image pairs
input ``i`` with prompt ``i`` (the reference tiles the inputs, pairing them with other prompts);
``height``/``width`` given with an input image resize it (the reference fails); caption
features are cast to the transformer's dtype; no LoRA, callbacks or ``latents=`` input.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from model.s3dit import S3DiT, first_line, read_json_object
from model.sampler import Conditioning, FlowSchedule, denoise, get_preset, strength_start
from model.text_encoder import MAX_LENGTH, TextEncoder
from model.vae import VAE, ImageInput, PixelLatents
from model.vision import VisionEncoder, crop_reference, resize_reference

COMPONENTS = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")
EDIT_COMPONENTS = ("siglip", "siglip_processor")
OUTPUTS = ("pil", "np", "pt", "latent")


class ComponentError(ValueError):
    """A pipeline component that cannot be loaded: ``component`` (``transformer``, ``VAE``...)
    from ``folder``; the message gives the reason, naming the file where known."""

    def __init__(self, component: str, folder: Path, reason: str) -> None:
        self.component, self.folder = component, folder
        super().__init__(f"cannot load the {component} from {folder}: {reason}")


@contextlib.contextmanager
def _loading(component: str, folder: Path, *more: Path) -> Iterator[None]:
    """Loading ``component`` from ``folder`` (and ``more`` folders): its JSON configs must be
    JSON objects, and the loaders' ``OSError`` / ``ValueError`` become a ``ComponentError``,
    not a hub client's traceback."""
    try:
        for part in (folder, *more):
            for config in sorted(part.glob("*config.json")):
                read_json_object(config)
        yield
    except (OSError, ValueError) as err:
        reason = first_line(err)
        raise ComponentError(component, folder, reason.removeprefix(f"{folder}{os.sep}")) from err


@dataclass
class SampleOutput:
    images: list[Image.Image] | np.ndarray | Tensor | None  # None for output="latent"
    latents: Tensor  # (B, C, h, w) float32 final latents
    seeds: list[int]


class ZFoundryPipeline:
    """Components: our ``S3DiT``, the scheduler's ``FlowSchedule`` and optional encoders."""

    def __init__(
        self,
        transformer: S3DiT,
        schedule: FlowSchedule,
        text_encoder: TextEncoder | None = None,
        vae: VAE | None = None,
        vision: VisionEncoder | None = None,
    ) -> None:
        self.transformer = transformer.eval()
        self.schedule = schedule
        self.text_encoder = text_encoder
        self.vae = vae
        self.vision = vision

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        transformer: str | Path | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        vision: bool | None = None,
        text_padding: str = "max_length",
        latent_space: str = "vae",
    ) -> ZFoundryPipeline:
        """From a diffusers-format Z-Image pipeline folder (or a hub id already in the cache).

        ``transformer``: another transformer folder (config.json + safetensors, e.g. a zfoundry
        training checkpoint) replacing ``path/transformer``. ``vision``: load ``siglip/`` and
        ``siglip_processor/`` (needed for editing); by default when the folder has them.
        ``text_padding``: ``max_length`` (the reference's, bit-identical) or ``longest``
        (cheaper for short prompts, see ``model.text_encoder``). ``latent_space="pixel"``: a
        transformer trained in the identity latent space (``PixelLatents``; no ``vae/`` needed).
        A missing component folder is a ``FileNotFoundError``; one that cannot be loaded (bad
        JSON config, truncated weights) a ``ComponentError`` naming it and the file.
        """
        if latent_space not in ("vae", "pixel"):
            raise ValueError(f"latent_space={latent_space!r}: 'vae' or 'pixel'")
        root = _local_folder(path)
        skip = {"transformer"} if transformer is not None else set()
        skip |= {"vae"} if latent_space == "pixel" else set()
        need = [c for c in COMPONENTS if c not in skip]
        missing = [f"{c}/" for c in need if not (root / c).is_dir()]
        has_vision = all((root / c).is_dir() for c in EDIT_COMPONENTS)
        if vision and not has_vision:
            missing += [f"{c}/" for c in EDIT_COMPONENTS if not (root / c).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{root} lacks {', '.join(missing)}; a diffusers Z-Image pipeline folder has "
                f"model_index.json and {', '.join(f'{c}/' for c in COMPONENTS)} "
                f"(+ {', '.join(f'{c}/' for c in EDIT_COMPONENTS)} for editing)"
            )
        transformer_dir = Path(transformer) if transformer is not None else root / "transformer"
        if not (transformer_dir / "config.json").is_file():
            raise FileNotFoundError(f"no transformer config.json in {transformer_dir}")
        with _loading("transformer", transformer_dir):
            model = S3DiT.from_pretrained(transformer_dir, dtype=dtype).to(device)
        kwargs = {"dtype": dtype, "device": device}
        with _loading("scheduler", root / "scheduler"):
            schedule = FlowSchedule.from_pretrained(root)
        with _loading("text encoder", root / "text_encoder", root / "tokenizer"):
            text_encoder = TextEncoder.from_pretrained(root, padding=text_padding, **kwargs)
        if latent_space == "pixel":
            vae = PixelLatents().to(device)
        else:
            with _loading("VAE", root / "vae"):
                vae = VAE.from_pretrained(root, **kwargs)
        encoder = None
        if has_vision if vision is None else vision:
            with _loading("SigLIP encoder", *(root / c for c in EDIT_COMPONENTS)):
                encoder = VisionEncoder.from_pretrained(root, **kwargs)
        return cls(model, schedule, text_encoder=text_encoder, vae=vae, vision=encoder)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (16 for the Flux VAE)."""
        return self.vae.multiple if self.vae is not None else 16

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        negative_prompt: str | list[str] | None = None,
        preset: str = "turbo",
        steps: int | None = None,
        guidance: float | None = None,
        cfg_normalization: float | None = None,
        cfg_truncation: float | None = None,
        height: int | None = None,
        width: int | None = None,
        seed: int | list[int] | None = 0,
        num_images: int = 1,
        image: ImageInput | None = None,
        strength: float = 0.6,
        references: list[Image.Image] | None = None,
        sigmas: list[float] | None = None,
        max_sequence_length: int = MAX_LENGTH,
        prompt_embeds: list[Tensor] | list[list[Tensor]] | None = None,
        negative_prompt_embeds: list[Tensor] | list[list[Tensor]] | None = None,
        output: str = "pil",
        progress: bool = True,
    ) -> SampleOutput:
        """Generate ``num_images`` images per prompt.

        ``preset`` (``turbo``: 8 steps, no CFG; ``base``: 50 steps, CFG 4) supplies whatever of
        ``steps``, ``guidance``, ``cfg_normalization``, ``cfg_truncation`` is not given (see
        ``model.sampler``). ``image`` + ``strength``: image-to-image. ``references``: editing
        with reference images (needs the SigLIP components and an omni transformer). Default
        size: the input image's (rounded down to multiples of 16), else the last reference's,
        else 1024 x 1024. ``output``: ``pil``, ``np``, ``pt`` or ``latent`` (no decoding).
        """
        settings = get_preset(preset)
        steps = settings.steps if steps is None else steps
        guidance = settings.guidance if guidance is None else guidance
        norm = settings.cfg_normalization if cfg_normalization is None else cfg_normalization
        trunc = settings.cfg_truncation if cfg_truncation is None else cfg_truncation
        if guidance < 0 or num_images < 1:
            raise ValueError(f"guidance={guidance} must be >= 0, num_images={num_images} >= 1")
        if image is not None and references:
            raise ValueError("pass either image (image-to-image) or references (editing)")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds")
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}: choose from {OUTPUTS}")
        if image is not None and not 0 < strength <= 1:
            raise ValueError(f"strength={strength} must be in (0, 1]")
        n_prompts = len(prompt_embeds) if prompt is None else len(_as_list(prompt, "prompt"))
        batch = n_prompts * num_images
        seeds = _seeds(seed, batch)
        refs = self._references(references, height, width) if references else None
        if refs is not None:
            height, width = height or refs[1][-1].height, width or refs[1][-1].width
        init = None
        if image is not None:
            init = self._require("vae", "image-to-image").preprocess(image, height, width)
            height, width = init.shape[-2:]
        height, width = height or 1024, width or 1024
        self._check_size(height, width)
        cond, uncond = self._conditioning(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
            guidance > 0, num_images, refs, max_sequence_length,
        )  # fmt: skip
        h, w = 2 * (height // self.multiple), 2 * (width // self.multiple)
        sig = self.schedule.sigmas(steps, (h // 2) * (w // 2), sigmas)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        shape = (batch, self.transformer.config.in_channels, h, w)
        if init is None:
            latents = _noise(shape, generators, torch.float32)
        else:
            sig = sig[strength_start(len(sig) - 1, strength) :]
            dtype = _first(cond.captions).dtype
            latents = self._img2img_latents(init, sig[0], generators, shape, dtype, num_images)
        latents = denoise(
            self.transformer, latents.to(self.device), sig, cond, uncond,
            guidance=guidance, cfg_normalization=norm, cfg_truncation=trunc,
            num_train_timesteps=self.schedule.num_train_timesteps, progress=progress,
        )  # fmt: skip
        if output == "latent":
            return SampleOutput(None, latents, seeds)
        decoded = self._require("vae", "decoding").decode(latents)
        return SampleOutput(self.vae.postprocess(decoded, output), latents, seeds)

    def _require(self, name: str, purpose: str):
        component = getattr(self, name)
        if component is None:
            raise ValueError(f"{purpose} needs the {name} component, which this pipeline lacks")
        return component

    def _check_size(self, height: int, width: int) -> None:
        m = self.multiple
        for name, value in (("height", height), ("width", width)):
            if value < m or value % m:
                raise ValueError(f"{name}={value} must be a positive multiple of {m}")

    def _conditioning(
        self, prompt, negative, embeds, negative_embeds, cfg, num_images, refs, max_length
    ) -> tuple[Conditioning, Conditioning | None]:
        """Caption features (+ reference latents and SigLIP grids), repeated per image."""
        n_refs = None if refs is None else len(refs[0])
        if prompt is not None:
            embeds = self._encode(_as_list(prompt, "prompt"), n_refs, max_length)
        if not cfg and (negative is not None or negative_embeds is not None):
            raise ValueError("a negative prompt needs guidance > 0 (CFG is off)")
        if cfg and negative_embeds is None:
            negatives = [""] * len(embeds) if negative is None else _as_list(negative, "negative")
            if len(negatives) == 1 < len(embeds):
                negatives *= len(embeds)
            if len(negatives) != len(embeds):
                raise ValueError(f"{len(negatives)} negative prompts for {len(embeds)} prompts")
            negative_embeds = self._encode(negatives, n_refs, max_length)
        extra = {}
        if refs is not None:
            latents, grids = self._reference_inputs(*refs)
            batch = len(embeds) * num_images
            extra = {"references": [latents] * batch, "siglip": [grids] * batch}

        def each(feats: list) -> list:
            return [f for f in feats for _ in range(num_images)]

        cond = Conditioning(each(embeds), **extra)
        return cond, Conditioning(each(negative_embeds), **extra) if cfg else None

    def _encode(self, texts: list[str], n_refs: int | None, max_length: int) -> list:
        encoder = self._require("text_encoder", "encoding prompts")
        if n_refs is None:
            return encoder.encode(texts, max_length)
        return encoder.encode_omni(texts, n_refs, max_length)

    def _references(self, images, height, width) -> tuple[list[Image.Image], list[Image.Image]]:
        """(SigLIP inputs, VAE inputs) of the reference images."""
        self._require("vision", "editing")
        if self.transformer.siglip_embedder is None:
            raise ValueError("editing needs an omni transformer (siglip_feat_dim set)")
        resized = [resize_reference(im, height, width) for im in images]
        return resized, [crop_reference(im, self.multiple) for im in resized]

    def _reference_inputs(self, resized, cropped) -> tuple[list[Tensor], list[Tensor]]:
        vae = self._require("vae", "editing")
        latents = []
        for im in cropped:  # the reference rounds the pixels to bf16 before the VAE
            x = vae.preprocess(im).to(torch.bfloat16)
            latents.append(vae.encode(x, sample=False)[0].unsqueeze(1).float())  # (C, 1, h, w)
        return latents, self.vision.encode(resized)

    def _img2img_latents(self, init, sigma, generators, shape, dtype, num_images) -> Tensor:
        """The input image(s) encoded (posterior samples) and noised to ``sigma``."""
        n = init.shape[0]
        if n != 1 and n * num_images != shape[0]:
            prompts = shape[0] // num_images
            raise ValueError(f"{n} input images for {prompts} prompts: give one, or one per prompt")
        latents = self.vae.encode(init.to(dtype), generators[:n], sample=True)
        latents = latents.repeat_interleave(shape[0] // n, dim=0)
        noise = _noise(shape, generators, dtype).to(latents.device)
        sigma = sigma.to(latents.device, latents.dtype)
        return sigma * noise + (1.0 - sigma) * latents


def _noise(shape: tuple, generators: list[torch.Generator], dtype: torch.dtype) -> Tensor:
    """One draw per image from its own CPU generator, as diffusers' ``randn_tensor``."""
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=dtype) for g in generators])


def _seeds(seed: int | list[int] | None, batch: int) -> list[int]:
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    if isinstance(seed, int):
        return [seed + i for i in range(batch)]
    if len(seed) != batch:
        raise ValueError(f"{len(seed)} seeds for {batch} images")
    return list(seed)


def _as_list(texts: str | list[str], name: str) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name} must be a string or a non-empty list of strings")
    return texts


def _first(captions: list) -> Tensor:
    return captions[0][0] if isinstance(captions[0], list) else captions[0]


def _local_folder(path: str | Path) -> Path:
    if Path(path).is_dir():
        return Path(path)
    if Path(path).exists() or str(path).count("/") != 1:
        raise FileNotFoundError(f"{path} is not a pipeline folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path)))
    except Exception as err:  # offline, unknown repo, ...
        raise FileNotFoundError(f"{path}: no such folder, and the hub id failed: {err}") from err
