"""The flow-matching objective, in the time convention of the released Z-Image models.

The report (section 4.2) writes the interpolation with ``x1`` the clean latent, ``x0`` noise::

    x_t = t * x1 + (1 - t) * x0,        target  v = x1 - x0,        t in [0, 1], 1 = clean

which is exactly what the transformer is fed and predicts at inference (``model.sampler``: the
model gets ``t = 1 - sigma`` and outputs ``x_clean - noise``; the Euler step moves by
``(sigma_next - sigma) * -pred``). ``tests/trainer/test_flow.py`` checks the sign: one Euler step
of the sampler with the exact target lands on the clean latent.

Timesteps. ``sigma = 1 - t`` (the noise level) is drawn logit-normal, ``sigma = sigmoid(m + s z)``
with ``z ~ N(0, 1)`` (SD3, Esser et al. 2024, section 3.1 "logit-normal sampling"; ``m``, ``s``
configurable), then shifted towards noise by the resolution-dependent shift of SD3 section 5.3.2,
in the form diffusers' ``FlowMatchEulerDiscreteScheduler`` applies at inference
(``time_shift``, exponential)::

    sigma' = e^mu / (e^mu + 1 / sigma - 1),     mu = calculate_shift(image tokens)

with Flux's linear ``calculate_shift`` (``mu`` = 0.5 at 256 image tokens, 1.15 at 4096; the same
function the reference pipeline uses for ``use_dynamic_shifting``). ``shift = <number>`` uses a
static ``e^mu = shift`` instead (``shift = 1`` is no shift). Larger images need more noise to
destroy the same amount of structure, hence the shift grows with the token count.

Loss: per sample, the mean squared error over its target tokens; then the mean over samples
(each sample counts the same whatever its resolution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from infra.config import require


@dataclass(frozen=True, kw_only=True)
class TimestepConfig:
    """How training timesteps are drawn."""

    logit_mean: float = 0.0
    """Mean ``m`` of the logit-normal noise level ``sigma = sigmoid(m + s z)``."""
    logit_std: float = 1.0
    """Std ``s`` of the logit-normal (``s > 0``)."""
    shift: str = "dynamic"
    """``dynamic`` (resolution-dependent, ``e^mu`` with ``mu = calculate_shift(tokens)``) or a
    number as a string (static shift, e.g. ``"3.0"``; ``"1"`` = none)."""
    base_shift: float = 0.5
    """``mu`` at ``base_seq_len`` image tokens (dynamic shift)."""
    max_shift: float = 1.15
    """``mu`` at ``max_seq_len`` image tokens (dynamic shift)."""
    base_seq_len: int = 256
    """Image tokens where ``mu = base_shift``."""
    max_seq_len: int = 4096
    """Image tokens where ``mu = max_shift``."""

    def __post_init__(self) -> None:
        require(self.logit_std > 0, "logit_std", self.logit_std, "must be > 0")
        require(self.max_seq_len > self.base_seq_len, "max_seq_len", self.max_seq_len,
                "must be > base_seq_len")  # fmt: skip
        if self.shift != "dynamic":
            try:
                value = float(self.shift)
            except ValueError:
                value = -1.0
            require(value > 0, "shift", self.shift, "must be 'dynamic' or a positive number")

    def shift_factor(self, image_tokens: int) -> float:
        """``e^mu`` for a sample with ``image_tokens`` target tokens."""
        if self.shift != "dynamic":
            return float(self.shift)
        from model.sampler import calculate_shift  # (lazy: model imports diffusers)

        mu = calculate_shift(
            image_tokens, self.base_seq_len, self.max_seq_len, self.base_shift, self.max_shift
        )
        return math.exp(mu)


def shift_sigma(sigma: Tensor, factor: Tensor | float) -> Tensor:
    """``factor * sigma / (1 + (factor - 1) * sigma)`` (= ``e^mu / (e^mu + 1/sigma - 1)``)."""
    return factor * sigma / (1 + (factor - 1) * sigma)


def sample_times(
    image_tokens: list[int], config: TimestepConfig, generator: torch.Generator
) -> Tensor:
    """Model times ``t = 1 - sigma'`` (B,) float32, one per sample, from ``generator``."""
    z = torch.randn(len(image_tokens), generator=generator)
    sigma = torch.sigmoid(config.logit_mean + config.logit_std * z)
    factors = torch.tensor([config.shift_factor(n) for n in image_tokens])
    return (1.0 - shift_sigma(sigma, factors)).float()


def interpolate(clean: Tensor, noise: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
    """(x_t, v): ``x_t = t * clean + (1 - t) * noise``, ``v = clean - noise`` (t = 1 clean)."""
    return t * clean + (1 - t) * noise, clean - noise


def per_sample_loss(pred: list[Tensor], target: list[Tensor]) -> Tensor:
    """Mean squared error of each sample over its own elements -> (B,) float32."""
    return torch.stack(
        [(p.float() - v.float()).pow(2).mean() for p, v in zip(pred, target, strict=True)]
    )
