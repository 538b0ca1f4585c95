"""Small torch heads that score an image from its stored CLIP image embedding.

Each head maps ``(B, D)`` embeddings to ``(B,)`` raw outputs (a score for regressors, a logit
for classifiers); :meth:`Head.predict` gives the value written to the head's
``output_column`` (the score, or ``sigmoid(logit)``). Which embedding a head expects (CLIP
model, pretrained tag, dim, normalisation) is recorded by :class:`curation.heads.io.FeatureContract`
next to the weights, not here.

Published checkpoints load unchanged (CONVENTIONS.md 10):

* ``AestheticMLP`` is the LAION improved-aesthetic-predictor MLP
  (``sac+logos+ava1-l14-linearMSE.pth``).
* ``LinearProbe`` is UnivFD's ``fc`` (Ojha et al. 2023); its released ``fc_weights.pth`` uses
  the bare keys ``weight`` / ``bias``, which :meth:`LinearProbe.convert_state_dict` (also run
  as a load-state-dict pre-hook) maps to ``fc.weight`` / ``fc.bias``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = [
    "HEADS",
    "AestheticMLP",
    "Head",
    "LinearProbe",
    "MLPClassifier",
    "get_head",
    "head_class",
    "register_head",
]

KINDS = ("regressor", "classifier")


class Head(nn.Module):
    """Base of the scoring heads: constructor kwargs round-trip through :meth:`config`."""

    kind: ClassVar[str]
    """``"regressor"`` (trained with MSE, outputs a score) or ``"classifier"`` (BCE, logits)."""
    output_column: ClassVar[str]
    """Scores-table column the head's :meth:`predict` values go to."""

    input_size: int

    def config(self) -> dict[str, Any]:
        """Constructor kwargs (JSON-serialisable) that rebuild this module's shapes."""
        return {"input_size": self.input_size}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Values for ``output_column``: the score (regressor) or the probability (classifier)."""
        out = self(x)  # (B,)
        return torch.sigmoid(out) if self.kind == "classifier" else out

    @classmethod
    def convert_state_dict(cls, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a published key layout onto this module's keys (identity by default)."""
        return dict(state)

    @classmethod
    def config_from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Constructor kwargs implied by a (converted) state dict: ``input_size`` from the
        first weight matrix's shape. Returns ``{}`` when that key is absent, so the strict
        load reports the missing/unexpected keys instead."""
        with torch.device("meta"):
            template = cls()
        first = next(k for k, v in template.state_dict().items() if v.ndim == 2)
        weight = state.get(first)
        if weight is None or weight.ndim != 2:
            return {}
        return {"input_size": int(weight.shape[1])}


class AestheticMLP(Head):
    """LAION improved-aesthetic-predictor, layer for layer (no activations, as published).

    Expects L2-normalised CLIP ViT-L/14 (OpenAI) image features, as the LAION predictor
    does; on the published weights scores fall roughly in 1-10. Keys: ``layers.{0,2,4,6,7}``.
    """

    kind: ClassVar[str] = "regressor"
    output_column: ClassVar[str] = "aesthetic"

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)  # (B, D) -> (B,)


class LinearProbe(Head):
    """UnivFD's linear probe (Ojha et al. 2023): one ``nn.Linear(D, 1)`` named ``fc`` on frozen
    CLIP ViT-L/14 features; outputs logits (``predict`` = sigmoid = P(AI-generated)).

    Note: UnivFD trained ``fc`` on raw ``encode_image`` features (not L2-normalised), so its
    released ``fc_weights.pth`` needs un-normalised embeddings to reproduce its calibration.
    """

    kind: ClassVar[str] = "classifier"
    output_column: ClassVar[str] = "aigc_prob"

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.input_size = input_size
        self.fc = nn.Linear(input_size, 1)
        self.register_load_state_dict_pre_hook(_univfd_pre_hook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).squeeze(-1)  # (B, D) -> (B,)

    @classmethod
    def convert_state_dict(cls, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """UnivFD's ``{"weight", "bias"}`` -> ``{"fc.weight", "fc.bias"}``; other layouts as is."""
        if set(state) == {"weight", "bias"}:
            return {f"fc.{k}": v for k, v in state.items()}
        return dict(state)


def _univfd_pre_hook(module, state_dict, prefix, *args) -> None:
    """Let ``probe.load_state_dict(fc_weights)`` take UnivFD's bare keys (renamed in place)."""
    bare = {f"{prefix}weight", f"{prefix}bias"}
    if bare <= set(state_dict) and not any(k.startswith(f"{prefix}fc.") for k in state_dict):
        for key in ("weight", "bias"):
            state_dict[f"{prefix}fc.{key}"] = state_dict.pop(f"{prefix}{key}")


class MLPClassifier(Head):
    """``[Linear -> ReLU -> Dropout] * len(hidden) -> Linear(., 1)``; outputs logits.

    The NSFW head. LAION's CLIP-based-NSFW-Detector is an AutoKeras model of this shape family
    (Dense/ReLU/Dropout stack with a sigmoid unit on ViT-L/14 embeddings); using it would need
    a one-off Keras-to-torch conversion (transpose each Dense kernel, fold any input
    normalisation layer into the first Linear). zfoundry instead trains/loads its own torch head
    with this documented contract: keys ``layers.{3i}.weight/bias`` for hidden block ``i`` and
    ``layers.{3 * len(hidden)}`` for the output unit.
    """

    kind: ClassVar[str] = "classifier"
    output_column: ClassVar[str] = "nsfw_prob"

    def __init__(
        self, input_size: int = 768, hidden: tuple[int, ...] = (1024, 256), dropout: float = 0.1
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {dropout!r}")
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden: must be a non-empty tuple of positive sizes, got {hidden!r}")
        self.input_size, self.hidden, self.dropout = (
            input_size,
            tuple(int(h) for h in hidden),
            dropout,
        )
        blocks: list[nn.Module] = []
        width = input_size
        for h in self.hidden:
            blocks += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.layers = nn.Sequential(*blocks, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)  # (B, D) -> (B,)

    def config(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "hidden": list(self.hidden), "dropout": self.dropout}

    @classmethod
    def config_from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """``input_size`` and ``hidden`` from the ``layers.{i}.weight`` matrices, in order."""
        found = {
            int(m.group(1)): v
            for k, v in state.items()
            if (m := re.fullmatch(r"layers\.(\d+)\.weight", k)) and v.ndim == 2
        }
        if not found:
            return {}
        weights = [found[i] for i in sorted(found)]
        config: dict[str, Any] = {"input_size": int(weights[0].shape[1])}
        if len(weights) > 1:
            config["hidden"] = tuple(int(w.shape[0]) for w in weights[:-1])
        return config


HEADS: dict[str, type[Head]] = {
    "aesthetic": AestheticMLP,
    "aigc": LinearProbe,
    "nsfw": MLPClassifier,
}


def register_head(name: str, cls: type[Head]) -> None:
    """Add a head class under ``name``; raises ValueError if the name is taken or ``cls`` lacks
    a valid ``kind`` / ``output_column``."""
    if name in HEADS:
        raise ValueError(f"head {name!r} is already registered (as {HEADS[name].__name__})")
    kind = getattr(cls, "kind", None)
    if kind not in KINDS:
        raise ValueError(f"head {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(getattr(cls, "output_column", None), str):
        raise ValueError(f"head {name!r}: {cls.__name__} needs a str output_column")
    HEADS[name] = cls


def head_class(name: str) -> type[Head]:
    """The registered class for ``name``; ValueError listing the valid names otherwise."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; valid: {sorted(HEADS)}")
    return HEADS[name]


def get_head(name: str, **kwargs: Any) -> Head:
    """Build the head registered as ``name`` with constructor ``kwargs``."""
    return head_class(name)(**kwargs)
