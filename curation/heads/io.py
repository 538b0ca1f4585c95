"""Save and load scoring heads: zfoundry safetensors files and published plain state dicts.

A zfoundry head file is a safetensors file whose string metadata rebuilds the module:

==============  ===========================================================================
``format``      ``"zfoundry.head/1"`` (marks a zfoundry file)
``name``        registry name (``"aesthetic"``, ``"aigc"``, ``"nsfw"``, ...)
``class``       the head's class name (checked against the registry on load)
``config``      JSON constructor kwargs, ``input_size`` included
``contract``    JSON :class:`FeatureContract`: the embedding the head expects
``metrics``     JSON dict (e.g. ``fit_head``'s held-out AUC / Spearman), ``{}`` if none
``version``     first 12 hex of sha256 over the tensors (name, dtype, shape, bytes) in key order;
                it changes iff the weights change, and is verified on load
==============  ===========================================================================

Published checkpoints (LAION's ``sac+logos+ava1-l14-linearMSE.pth``, UnivFD's
``fc_weights.pth``, or a ``.safetensors`` without zfoundry metadata) load as plain state
dicts: the caller names the head and the :class:`FeatureContract` they were trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curation.heads.modules import Head, head_class
from infra.config import error_reason, require

__all__ = [
    "FORMAT",
    "LAION_AESTHETIC_CONTRACT",
    "UNIVFD_CONTRACT",
    "FeatureContract",
    "check_contract",
    "load_head",
    "save_head",
    "weights_version",
]

FORMAT = "zfoundry.head/1"


@dataclass(frozen=True, kw_only=True)
class FeatureContract:
    """Which image embedding a head was trained on and must be fed."""

    clip_model: str
    """open_clip model name, e.g. ``"ViT-L-14"``."""
    pretrained: str
    """open_clip pretrained tag, e.g. ``"openai"``."""
    dim: int
    """Embedding width; equals the head's ``input_size``."""
    normalized: bool = True
    """Whether the embeddings are L2-normalised before the head."""

    def __post_init__(self) -> None:
        for name in ("clip_model", "pretrained"):
            value = getattr(self, name)
            require(
                isinstance(value, str) and value != "", name, value, "must be a non-empty string"
            )
        positive = isinstance(self.dim, int) and not isinstance(self.dim, bool) and self.dim > 0
        require(positive, "dim", self.dim, "must be a positive int")
        require(isinstance(self.normalized, bool), "normalized", self.normalized, "must be a bool")

    def describe(self) -> str:
        norm = "L2-normalised" if self.normalized else "un-normalised"
        return f"{self.clip_model}/{self.pretrained} dim={self.dim} {norm}"


# LAION's aesthetic predictor: L2-normalised OpenAI ViT-L/14 image features.
LAION_AESTHETIC_CONTRACT = FeatureContract(clip_model="ViT-L-14", pretrained="openai", dim=768)
# UnivFD trained its fc on raw encode_image() output of OpenAI ViT-L/14 (no normalisation).
UNIVFD_CONTRACT = FeatureContract(
    clip_model="ViT-L-14", pretrained="openai", dim=768, normalized=False
)


def check_contract(
    contract: FeatureContract,
    clip_model: str,
    pretrained: str,
    dim: int,
    normalized: bool | None = None,
) -> None:
    """Raise ValueError naming both sides when embeddings from (``clip_model``, ``pretrained``,
    ``dim``[, ``normalized``]) are not what the head's ``contract`` expects."""
    given = {"clip_model": clip_model, "pretrained": pretrained, "dim": dim}
    if normalized is not None:
        given["normalized"] = normalized
    bad = {k: v for k, v in given.items() if getattr(contract, k) != v}
    if bad:
        diff = ", ".join(
            f"{k}: head {getattr(contract, k)!r} vs embeddings {v!r}" for k, v in bad.items()
        )
        raise ValueError(
            f"head expects {contract.describe()} embeddings but got "
            f"{clip_model}/{pretrained} dim={dim} ({diff})"
        )


def weights_version(state: Mapping[str, torch.Tensor]) -> str:
    """First 12 hex of sha256 over (key, dtype, shape, bytes) of each tensor in key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"metrics value {value!r} ({type(value).__name__}) is not JSON-serialisable")


def save_head(
    head: Head,
    path: str | os.PathLike[str],
    contract: FeatureContract,
    *,
    name: str,
    metrics: dict[str, Any] | None = None,
) -> str:
    """Write ``head`` to ``path`` (safetensors + metadata, atomically); returns its version."""
    cls = head_class(name)
    if type(head) is not cls:
        raise ValueError(f"name {name!r} is a {cls.__name__} but head is {type(head).__name__}")
    if contract.dim != head.input_size:
        raise ValueError(
            f"contract dim={contract.dim} does not match the head's input_size={head.input_size}"
        )
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    version = weights_version(state)
    metadata = {
        "format": FORMAT,
        "name": name,
        "class": cls.__name__,
        "config": json.dumps(head.config(), sort_keys=True),
        "contract": json.dumps(asdict(contract), sort_keys=True),
        "metrics": json.dumps(metrics or {}, sort_keys=True, default=_jsonable),
        "version": version,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return version


def load_head(
    path_or_state: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    name: str | None = None,
    contract: FeatureContract | None = None,
) -> tuple[Head, FeatureContract, dict[str, Any]]:
    """Load a head in eval mode; returns ``(module, contract, meta)``.

    A zfoundry file rebuilds itself from its metadata (``name`` / ``contract``, if given, must
    agree with what is stored). A published plain state dict (``.pth`` / ``.pt`` read with
    ``weights_only=True``, ``.safetensors`` without zfoundry metadata, or an in-memory mapping)
    needs ``name`` and ``contract``; the constructor kwargs come from the weight shapes.
    ``meta`` has ``format``, ``name``, ``class``, ``config``, ``contract``, ``metrics``,
    ``version`` and ``source``.
    """
    source, state, stored = _read(path_or_state)
    if stored.get("format", "").startswith("zfoundry.head/") and stored["format"] != FORMAT:
        raise ValueError(f"{source}: head format {stored['format']!r} is not {FORMAT!r}")
    if stored.get("format") == FORMAT:
        return _load_zfoundry(source, state, stored, name=name, contract=contract)
    if name is None or contract is None:
        raise ValueError(
            f"{source}: not a zfoundry head file (no {FORMAT!r} metadata); pass name= and "
            "contract= to load it as a published state dict"
        )
    cls = head_class(name)
    state = cls.convert_state_dict(state)
    config = cls.config_from_state_dict(state)
    module = _build_strict(cls, config, state, source)
    _check_dim(module, contract, source)
    meta = {
        "format": "published",
        "name": name,
        "class": cls.__name__,
        "config": module.config(),
        "contract": asdict(contract),
        "metrics": {},
        "version": weights_version(module.state_dict()),
        "source": source,
    }
    return module, contract, meta


def _read(obj: Any) -> tuple[str, dict[str, torch.Tensor], dict[str, str]]:
    """-> (source label, state dict, safetensors metadata or {})."""
    if isinstance(obj, Mapping):
        return "<state dict>", _as_state(dict(obj), "<state dict>"), {}
    path = Path(obj)
    if not path.is_file():
        raise FileNotFoundError(f"head file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (no iter)
        except SafetensorError as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
        return str(path), state, metadata
    if path.suffix in (".pth", ".pt"):
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle's errors on a file that is not a torch checkpoint
            reason = error_reason(err, limit=120)
            raise ValueError(f"{path}: not a readable torch checkpoint ({reason})") from None
        return str(path), _as_state(loaded, str(path)), {}
    raise ValueError(
        f"{path}: unsupported head file suffix {path.suffix!r}; expected .safetensors, .pth or .pt"
    )


def _as_state(obj: Any, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{source}: expected a state dict (str -> Tensor), got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"{source}: expected a plain state dict (str -> Tensor); entries {bad[:5]} are not "
            "tensors (a training checkpoint? pass its state-dict entry)"
        )
    return dict(obj)


def _load_zfoundry(source, state, stored, *, name, contract):
    if name is not None and name != stored["name"]:
        raise ValueError(f"{source}: stores head {stored['name']!r}, not {name!r}")
    cls = head_class(stored["name"])
    if cls.__name__ != stored["class"]:
        raise ValueError(
            f"{source}: stores class {stored['class']!r} but head "
            f"{stored['name']!r} is now {cls.__name__}"
        )
    version = weights_version(state)
    if version != stored["version"]:
        raise ValueError(
            f"{source}: weights hash to {version} but the file records version "
            f"{stored['version']} (edited or corrupt)"
        )
    saved = FeatureContract(**json.loads(stored["contract"]))
    if contract is not None and contract != saved:
        raise ValueError(
            f"{source}: head was trained on {saved.describe()} embeddings, "
            f"not {contract.describe()} ({saved} vs {contract})"
        )
    config = json.loads(stored["config"])
    module = _build_strict(cls, config, state, source)
    _check_dim(module, saved, source)
    meta = {
        "format": FORMAT,
        "name": stored["name"],
        "class": stored["class"],
        "config": config,
        "contract": asdict(saved),
        "metrics": json.loads(stored.get("metrics") or "{}"),
        "version": version,
        "source": source,
    }
    return module, saved, meta


def _build_strict(cls: type[Head], config: dict[str, Any], state, source: str) -> Head:
    """``cls(**config)`` with ``state`` loaded strictly; ValueError naming every bad key."""
    module = cls(**config)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: got {tuple(state[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source}: state dict does not fit {cls.__name__}(**{config}): "
            f"missing keys {missing}, unexpected keys {unexpected}, shape mismatches {shapes}"
        )
    module.load_state_dict(state, strict=True)
    return module.eval()


def _check_dim(module: Head, contract: FeatureContract, source: str) -> None:
    if module.input_size != contract.dim:
        raise ValueError(
            f"{source}: head input_size={module.input_size} but contract "
            f"dim={contract.dim} ({contract.describe()})"
        )
