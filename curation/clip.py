"""CLIP models through open_clip: real checkpoints by tag or local path, and a tiny one.

``load_clip("ViT-L-14", "openai")`` or ``load_clip("ViT-H-14", "/models/open_clip_vit_h.bin")``
load published weights (tags need network access the first time; a local path never does).
``zf-tiny-clip`` is a 64-d ViT registered from ``curation/model_configs/`` for tests and the
demo: with ``pretrained=None`` its seeded random weights are written once to a cache file
and then loaded through the same checkpoint path as any real model. Its embeddings carry
only what random projections keep (colour, layout), which is what the tests rely on.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.config import error_reason

TINY = "zf-tiny-clip"
CONFIG_DIR = Path(__file__).with_name("model_configs")


@functools.cache
def _register_configs() -> None:
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)


def cache_dir() -> Path:
    return Path(os.environ.get("ZFOUNDRY_CACHE", Path.home() / ".cache" / "zfoundry"))


def tiny_checkpoint(seed: int = 0) -> Path:
    """The seeded random ``zf-tiny-clip`` state dict, created once (atomically) in the cache."""
    import open_clip
    import torch

    _register_configs()
    path = cache_dir() / f"{TINY}-seed{seed}.pt"
    if not path.exists():
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY, pretrained=None)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"_tmp-{os.getpid()}-{path.name}")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return path


@dataclass
class Clip:
    model: Any  # open_clip.CLIP
    preprocess: Any  # PIL image -> (3, H, W) tensor
    tokenizer: Any  # list[str] -> (B, context_length) token ids
    name: str
    device: str
    dim: int


def encode_images(clip: Clip, images: list[Any]) -> Any:
    """L2-normalised float32 image embeddings (``(n, dim)`` numpy) of RGB PIL images."""
    import numpy as np
    import torch

    batch = torch.stack([clip.preprocess(im) for im in images]).to(clip.device)
    with torch.inference_mode():
        out = clip.model.encode_image(batch).float().cpu().numpy()
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_clip(
    name: str, pretrained: str | None, *, device: str = "auto", precision: str = "auto"
) -> Clip:
    """An open_clip model in eval mode, its image preprocessing and tokenizer.

    precision ``auto``: bf16 on GPU, fp32 on CPU.
    """
    import open_clip

    _register_configs()
    device = pick_device(device)
    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") else "fp32"
    if name == TINY and pretrained is None:
        pretrained = str(tiny_checkpoint())
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, precision=precision
        )
    except Exception as err:  # open_clip's own, or torch.load's on a file that is not weights
        raise ValueError(f"CLIP model {name!r} with pretrained {pretrained!r} cannot be loaded: "
                         f"{error_reason(err)}") from err  # fmt: skip
    model.eval()
    dim = int(model.text_projection.shape[1]) if model.text_projection is not None else None
    if dim is None:
        dim = int(open_clip.get_model_config(name)["embed_dim"])
    return Clip(model, preprocess, open_clip.get_tokenizer(name), name, device, dim)


def model_id(name: str, pretrained: str | None) -> str:
    """What ``vectors.model`` records: the model and its weights (path basename or tag)."""
    if pretrained is None:
        return f"{name}:seed0" if name == TINY else f"{name}:random"
    return f"{name}:{Path(pretrained).name if os.sep in pretrained else pretrained}"
