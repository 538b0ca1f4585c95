"""Flow-matching Euler sampling for S3-DiT: the reference ``ZImagePipeline`` loop, packed.

Conventions (diffusers 0.42 ``pipeline_z_image*.py`` with ``FlowMatchEulerDiscreteScheduler``):

* ``sigma`` is the noise level: ``x_sigma = sigma * noise + (1 - sigma) * x0``; 1 = pure noise.
* Schedule: ``N`` base sigmas ``linspace(1, 1/N, N)`` (float32), then shifted, either statically,
  ``s * sigma / (1 + (s - 1) * sigma)`` (Z-Image-Turbo's ``scheduler/``: ``s = 3``), or by
  resolution (``use_dynamic_shifting``): ``e^mu / (e^mu + 1/sigma - 1)`` with
  ``mu = calculate_shift(image tokens)``; optionally stretched to end at ``shift_terminal``;
  then a final 0 is appended. Image-to-image starts ``strength_start(N, strength)`` steps in.
* Model time: the scheduler's timestep ``T = 1000 sigma`` and the transformer gets
  ``t = (1000 - T) / 1000`` (about ``1 - sigma``: 1 = clean), computed in float32 exactly so.
  Its output is the flow ``x0 - noise``; the Euler step is ``x += (sigma_next - sigma) * -pred``.
* Guidance ``g`` (the reference's ``guidance_scale``): ``pred = cond + g (cond - uncond)``; CFG is
  on for ``g > 0`` (so ``g = 1`` is already "twice the difference"). ``cfg_normalization = k > 0``
  rescales ``pred`` to at most ``k`` times the norm of ``cond`` (per image, over all its
  elements); ``cfg_truncation = c`` drops the unconditional pass at steps whose ``t > c``.

Each step runs one packed batch: the conditional items and, with CFG, the unconditional ones
(``S3DiT.forward_packed``). The pack (caption, reference and SigLIP streams, indices) is built
once per batch shape; each step only writes the new latents' patches and ``t`` into it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.packing import PackedBatch, patchify
from model.s3dit import S3DiT

SCHEDULER_CLASS = "FlowMatchEulerDiscreteScheduler"


@dataclass(frozen=True, kw_only=True)
class SamplingPreset:
    """Default steps and guidance of one released model family."""

    steps: int
    """Euler steps (= transformer evaluations per image, twice that with CFG)."""
    guidance: float
    """``pred = cond + guidance * (cond - uncond)``; 0 switches CFG off."""
    cfg_normalization: float = 0.0
    cfg_truncation: float = 1.0


SAMPLING_PRESETS: dict[str, SamplingPreset] = {
    # Z-Image-Turbo (distilled): 8 evaluations, no CFG. Its model card's "9 steps" predate
    # diffusers' linspace(1, 1/N, N) default sigmas and gave the same 8 evaluations.
    "turbo": SamplingPreset(steps=8, guidance=0.0),
    # Z-Image (base, undistilled): ZImagePipeline's default 50 steps with CFG 4
    # (the pipeline's own default guidance_scale is 5.0).
    "base": SamplingPreset(steps=50, guidance=4.0),
}


def get_preset(name: str) -> SamplingPreset:
    if name not in SAMPLING_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(SAMPLING_PRESETS)}")
    return SAMPLING_PRESETS[name]


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """``mu``: linear in the number of image tokens, ``base_shift`` at ``base_seq_len`` tokens
    and ``max_shift`` at ``max_seq_len`` (Flux's / the reference's formula)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)


_UNSUPPORTED = (
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "invert_sigmas",
    "stochastic_sampling",
)


@dataclass(frozen=True, kw_only=True)
class FlowSchedule:
    """The sigma schedule of a ``FlowMatchEulerDiscreteScheduler`` config (``scheduler/``)."""

    num_train_timesteps: int = 1000
    shift: float = 1.0
    """Static shift ``s`` (used when ``use_dynamic_shifting`` is false); Turbo: 3.0."""
    use_dynamic_shifting: bool = False
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    time_shift_type: str = "exponential"
    """Resolution-dependent shift: ``exponential`` (e^mu) or ``linear`` (mu)."""
    shift_terminal: float | None = None
    """When set, the shifted schedule is stretched to end at this sigma."""

    def __post_init__(self) -> None:
        if self.time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type={self.time_shift_type!r}: exponential or linear")
        if self.shift <= 0 or self.num_train_timesteps <= 0:
            raise ValueError(f"shift={self.shift} and num_train_timesteps must be > 0")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FlowSchedule:
        """From a scheduler config dict; options this sampler does not implement raise."""
        name = config.get("_class_name", SCHEDULER_CLASS)
        if name != SCHEDULER_CLASS:
            raise ValueError(f"scheduler {name!r} is not supported; expected {SCHEDULER_CLASS}")
        unsupported = [key for key in _UNSUPPORTED if config.get(key)]
        if unsupported:
            raise ValueError(f"scheduler options not supported by model.sampler: {unsupported}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names and v is not None})

    @classmethod
    def from_pretrained(cls, path: str | Path, subfolder: str = "scheduler") -> FlowSchedule:
        """From ``path/subfolder/scheduler_config.json`` (a diffusers pipeline folder)."""
        file = Path(path) / subfolder / "scheduler_config.json"
        if not file.is_file():
            raise FileNotFoundError(f"no scheduler config at {file}")
        return cls.from_config(json.loads(file.read_text()))

    def mu(self, image_seq_len: int) -> float:
        return calculate_shift(
            image_seq_len,
            self.base_image_seq_len,
            self.max_image_seq_len,
            self.base_shift,
            self.max_shift,
        )

    def sigmas(self, steps: int, image_seq_len: int, base: list[float] | None = None) -> Tensor:
        """(steps + 1,) float32: the shifted sigmas of ``steps`` Euler steps, then 0.

        ``base`` replaces the default ``linspace(1, 1/steps, steps)`` (the reference's
        ``sigmas=`` argument); ``image_seq_len`` (image tokens) matters only with dynamic shift.
        The arithmetic is float32 numpy in the scheduler's order, so values are bit-identical.
        """
        if base is None:
            if steps < 1:
                raise ValueError(f"steps={steps}: need at least one step")
            base = torch.linspace(1.0, 1.0 / steps, steps).tolist()
        s = np.asarray(base, dtype=np.float32)
        if self.use_dynamic_shifting:
            mu = self.mu(image_seq_len)
            lead = math.exp(mu) if self.time_shift_type == "exponential" else mu
            s = lead / (lead + (1 / s - 1))
        else:
            s = self.shift * s / (1 + (self.shift - 1) * s)
        if self.shift_terminal:
            rest = 1 - s
            s = 1 - rest / (rest[-1] / (1 - self.shift_terminal))
        return torch.cat([torch.from_numpy(np.asarray(s)).to(torch.float32), torch.zeros(1)])

    def model_times(self, sigmas: Tensor) -> Tensor:
        """The transformer's t of each step of ``sigmas`` (n+1 values -> n), float32."""
        n = self.num_train_timesteps
        return (n - sigmas[:-1] * n) / n


def strength_start(steps: int, strength: float) -> int:
    """Image-to-image: how many of ``steps`` are skipped (the reference's ``get_timesteps``)."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength={strength} must be in (0, 1]")
    start = int(max(steps - min(steps * strength, steps), 0))
    if steps - start < 1:
        raise ValueError(f"strength={strength} with {steps} steps leaves no step to run")
    return start


def guide(cond: Tensor, uncond: Tensor, scale: float, normalization: float = 0.0) -> Tensor:
    """CFG for one image: ``cond + scale (cond - uncond)``, with the optional norm cap."""
    pred = cond + scale * (cond - uncond)
    if normalization > 0:
        cap = torch.linalg.vector_norm(cond) * float(normalization)
        norm = torch.linalg.vector_norm(pred)
        if norm > cap:
            pred = pred * (cap / norm)
    return pred


@dataclass(frozen=True)
class Conditioning:
    """What the transformer sees of a batch besides the noisy latents, one entry per image.

    Text-to-image: ``captions[i]`` is a (L, cap_dim) tensor. Editing (omni): ``captions[i]`` is
    the list of (L_j, cap_dim) caption pieces, ``references[i]`` the clean reference latents
    (C, 1, h, w) and ``siglip[i]`` their (h', w', D) SigLIP grids (``None`` for none).
    """

    captions: list[Tensor] | list[list[Tensor]]
    references: list[list[Tensor]] | None = None
    siglip: list[list[Tensor] | None] | None = None

    def items(self, latent: Tensor) -> tuple[list, list, list | None, list | None]:
        """(x, captions, siglip, noise mask) in ``S3DiT.pack``'s form, ``latent`` as target."""
        if self.references is None:
            return [latent] * len(self.captions), list(self.captions), None, None
        x = [[*refs, latent] for refs in self.references]
        sig = self.siglip or [None] * len(x)
        sig = [None if s is None else [*s, None] for s in sig]
        mask = [[0] * len(refs) + [1] for refs in self.references]
        return x, list(self.captions), sig, mask


class PackedDenoiser:
    """The transformer on one packed batch of ``len(conds)`` copies of the images (conditional,
    then unconditional), packed once; each call writes new latents and ``t`` into the pack."""

    def __init__(self, transformer: S3DiT, conds: list[Conditioning], latent_shape: tuple):
        self.transformer = transformer
        self.copies = len(conds)
        param = next(transformer.parameters())
        self.dtype, self.device = param.dtype, param.device
        c, h, w = latent_shape
        placeholder = torch.zeros(c, 1, h, w, dtype=self.dtype, device=self.device)
        x, caps, sig, mask = [], [], [], []
        for cond in conds:
            items = self._cast(cond.items(placeholder))
            x += items[0]
            caps += items[1]
            sig += items[2] or []
            mask += items[3] or []
        t = torch.zeros(len(x), device=self.device)
        self.packed: PackedBatch = transformer.pack(
            x, t, caps, siglip_feats=sig or None, image_noise_mask=mask or None
        )
        self.static_cache: dict = {}  # refined caption / SigLIP tokens, the same every step

    def _cast(self, value):
        """Tensors in nested lists (or None) -> the transformer's dtype and device."""
        if isinstance(value, list | tuple):
            return [self._cast(v) for v in value]
        if isinstance(value, Tensor):
            return value.to(self.device, self.dtype)
        return value

    def __call__(self, latents: Tensor, t: Tensor) -> list[Tensor]:
        """latents (B, C, H, W), t (B,) -> predictions (C, 1, H, W) for B * copies items."""
        p, pf = self.packed.patch_size, self.packed.f_patch_size
        x = latents.to(self.dtype).unsqueeze(2)  # (B, C, 1, H, W)
        tokens = torch.cat([patchify(xi, p, pf) for xi in x]).repeat(self.copies, 1)
        image = self.packed.image
        image = replace(image, feats=image.feats.index_copy(0, self.packed.target_rows, tokens))
        packed = replace(self.packed, t=t.repeat(self.copies), image=image)
        out = self.transformer.forward_packed(packed, static_cache=self.static_cache)
        return self.transformer.unpack(packed, out)


def denoise(
    transformer: S3DiT,
    latents: Tensor,
    sigmas: Tensor,
    cond: Conditioning,
    uncond: Conditioning | None = None,
    *,
    guidance: float = 0.0,
    cfg_normalization: float = 0.0,
    cfg_truncation: float = 1.0,
    num_train_timesteps: int = 1000,
    progress: bool = True,
) -> Tensor:
    """Euler-integrate ``latents`` (B, C, H, W) from ``sigmas[0]`` to ``sigmas[-1]`` -> float32.

    ``uncond`` (the negative prompts, same layout as ``cond``) is needed for ``guidance > 0``.
    """
    from tqdm.auto import tqdm

    if guidance < 0:
        raise ValueError(f"guidance={guidance} must be >= 0")
    if guidance > 0 and uncond is None:
        raise ValueError("guidance > 0 needs the unconditional (negative prompt) inputs")
    batch = latents.shape[0]
    sigmas = sigmas.to(latents.device)
    n = num_train_timesteps
    times = (n - sigmas[:-1] * n) / n  # the model's t per step (reference: (1000 - T) / 1000)
    denoisers: dict[bool, PackedDenoiser] = {}
    latents = latents.float()
    for i, t_norm in enumerate(tqdm(times.tolist(), disable=not progress, desc="sampling")):
        scale = guidance if guidance > 0 and not t_norm > cfg_truncation else 0.0
        cfg = scale > 0
        if cfg not in denoisers:
            conds = [cond, uncond] if cfg else [cond]
            denoisers[cfg] = PackedDenoiser(transformer, conds, tuple(latents.shape[1:]))
        out = denoisers[cfg](latents, times[i].expand(batch))
        if cfg:
            pred = [guide(out[j].float(), out[batch + j].float(), scale, cfg_normalization)
                    for j in range(batch)]  # fmt: skip
        else:
            pred = [o.float() for o in out]
        pred = torch.stack(pred).squeeze(2)  # (B, C, H, W)
        latents = latents + (sigmas[i + 1] - sigmas[i]) * -pred
    return latents
