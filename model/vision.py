"""SigLIP 2 features and reference-image preparation for editing (omni) sampling.

As diffusers 0.42 ``ZImageOmniPipeline`` (components ``siglip``: ``Siglip2VisionModel`` and
``siglip_processor``: a ``Siglip2ImageProcessor``):

* a reference image must have both sides >= 64 px and an aspect ratio <= 8; one larger than
  1024^2 px is resized (Lanczos) to that area, or to ``height * width`` when both are given;
* SigLIP sees that (resized, uncropped) image: the processor's NaFlex patches, the vision
  tower's ``last_hidden_state``, its first ``h * w`` tokens viewed as an (h, w, D) grid;
* the VAE sees it centre-cropped to multiples of 16 (no resampling), its latents taken at the
  posterior mode; the reference casts those pixels to bfloat16 before the VAE, and so do we.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

MAX_AREA = 1024 * 1024


def check_reference(image: Image.Image, min_side: int = 64, max_aspect: float = 8.0) -> None:
    if not isinstance(image, Image.Image):
        raise ValueError(f"reference images must be PIL images, got {type(image).__name__}")
    w, h = image.size
    if min(w, h) < min_side:
        raise ValueError(f"reference image {w}x{h}: both sides must be >= {min_side} px")
    if max(w / h, h / w) > max_aspect:
        raise ValueError(f"reference image {w}x{h}: aspect ratio above {max_aspect}:1")


def resize_reference(
    image: Image.Image, height: int | None = None, width: int | None = None
) -> Image.Image:
    """Down to ``MAX_AREA`` (or ``height * width`` when both are given) if larger."""
    check_reference(image)
    w, h = image.size
    if w * h <= MAX_AREA:
        return image
    scale = math.sqrt((height * width if height and width else MAX_AREA) / (w * h))
    return image.resize((int(w * scale), int(h * scale)), Image.Resampling.LANCZOS)


def crop_reference(image: Image.Image, multiple: int) -> Image.Image:
    """Centre crop to the largest multiples of ``multiple``, as RGB."""
    w, h = image.size
    cw, ch = w - w % multiple, h - h % multiple
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch)).convert("RGB")


class VisionEncoder(nn.Module):
    """A SigLIP 2 vision tower and its image processor."""

    def __init__(self, model: nn.Module, processor: Any) -> None:
        super().__init__()
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        subfolder: str | None = "siglip",
        processor_subfolder: str | None = "siglip_processor",
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> VisionEncoder:
        """From a Z-Image omni pipeline folder (``siglip/``, ``siglip_processor/``) or hub id.

        The processor class is the one ``model_index.json`` names (as the reference pipeline
        loads it), else ``AutoImageProcessor``'s choice.
        """
        import transformers

        name = _component_class(path, "siglip_processor")
        processor_cls = getattr(transformers, name) if name else transformers.AutoImageProcessor
        kwargs = {"subfolder": processor_subfolder} if processor_subfolder else {}
        processor = processor_cls.from_pretrained(str(path), **kwargs)
        kwargs = {"subfolder": subfolder} if subfolder else {}
        model = transformers.Siglip2VisionModel.from_pretrained(
            str(path), dtype=dtype or torch.float32, **kwargs
        )
        return cls(model.to(device) if device else model, processor)

    @property
    def feat_dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, images: list[Image.Image]) -> list[Tensor]:
        """One (h, w, D) float32 grid of SigLIP features per image (each processed alone)."""
        grids = []
        for image in images:
            inputs = self.processor(images=[image], return_tensors="pt").to(self.device)
            gh, gw = (int(v) for v in inputs["spatial_shapes"][0])
            hidden = self.model(**inputs).last_hidden_state  # (1, max_patches, D)
            grids.append(hidden[0, : gh * gw].reshape(gh, gw, -1).float())
        return grids


def _component_class(path: str | Path, component: str) -> str | None:
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return None
    entry = json.loads(index.read_text()).get(component)
    return entry[1] if isinstance(entry, list) and len(entry) == 2 else None
