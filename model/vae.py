"""The Flux VAE (diffusers ``AutoencoderKL``, 16 latent channels) as Z-Image uses it.

Latents are normalised with the VAE config's factors, as the reference pipelines do::

    encode: z = (vae.encode(x) - shift_factor) * scaling_factor      (Flux: 0.1159, 0.3611)
    decode: x = vae.decode(z / scaling_factor + shift_factor)

Sizes: the VAE downsamples by ``downsample = 2 ** (len(block_out_channels) - 1)`` (8 for Flux)
and the transformer packs 2x2 latent patches, so image sides are multiples of
``multiple = 2 * downsample`` (16). Pixel conversions follow diffusers' ``VaeImageProcessor``
(``preprocess``: resize to multiples of 16 with Lanczos, scale to [-1, 1]; ``postprocess``:
``(x / 2 + 0.5).clamp(0, 1)``, ``round(255 x)`` to uint8), except that PIL inputs are always
converted to RGB (the reference passes e.g. RGBA through and the VAE then fails).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

ImageInput = Image.Image | list[Image.Image] | Tensor


def pixel_multiple(path: str | Path, subfolder: str = "vae") -> int:
    """Image sides must be multiples of this for the VAE in ``path/subfolder`` (config only)."""
    config = json.loads((Path(path) / subfolder / "config.json").read_text())
    return 2 ** (len(config["block_out_channels"]) - 1) * 2


class VAE(nn.Module):
    """``AutoencoderKL`` with the pipeline's latent normalisation and pixel conversions."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()
        config = model.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(config.shift_factor or 0.0)
        self.latent_channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.multiple = 2 * self.downsample

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        subfolder: str | None = "vae",
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> VAE:
        from diffusers import AutoencoderKL

        kwargs = {"subfolder": subfolder} if subfolder else {}
        model = AutoencoderKL.from_pretrained(str(path), dtype=dtype, **kwargs)
        return cls(model.to(device) if device else model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def enable_tiling(self, enabled: bool = True) -> None:
        """Encode/decode large images tile by tile (diffusers' tiling: bounded memory, tiles
        blended at the seams, so results differ slightly from untiled ones)."""
        if enabled:
            self.model.enable_tiling()
        else:
            self.model.disable_tiling()

    @torch.no_grad()
    def encode(
        self,
        images: Tensor,
        generators: list[torch.Generator] | None = None,
        sample: bool = True,
    ) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> normalised latents (B, C, H/d, W/d) in the VAE's dtype.

        ``sample``: draw from the posterior (image ``i`` with ``generators[i]``, as the
        image-to-image pipeline) or take its mode (as the editing pipeline).
        """
        x = images.to(self.device, self.dtype)
        if generators is not None and len(generators) != len(x):
            raise ValueError(f"{len(generators)} generators for {len(x)} images")
        latents = []
        for i in range(len(x)):
            dist = self.model.encode(x[i : i + 1]).latent_dist
            generator = generators[i] if generators else None
            latents.append(dist.sample(generator) if sample else dist.mode())
        return (torch.cat(latents) - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents (B, C, h, w) -> images (B, 3, h*d, w*d), about [-1, 1]."""
        z = latents.to(self.device, self.dtype) / self.scaling_factor + self.shift_factor
        return self.model.decode(z, return_dict=False)[0]

    def preprocess(
        self, images: ImageInput, height: int | None = None, width: int | None = None
    ) -> Tensor:
        """PIL image(s) or a [0, 1] tensor (B, 3, H, W) -> (B, 3, H, W) float32 in [-1, 1].

        PIL images are resized (Lanczos) to ``height`` x ``width``, by default the first image's
        size rounded down to multiples of ``multiple``. Tensors are not resized: their sides
        must already be multiples.
        """
        if isinstance(images, Tensor):
            x = images[None] if images.ndim == 3 else images
            if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
                raise ValueError(f"image tensor {tuple(x.shape)}: sides not multiples of "
                                 f"{self.multiple}")  # fmt: skip
            return 2.0 * x.float() - 1.0
        images = [images] if isinstance(images, Image.Image) else list(images)
        m = self.multiple
        height = height or images[0].height - images[0].height % m
        width = width or images[0].width - images[0].width % m
        if height < m or width < m or height % m or width % m:
            raise ValueError(f"image size {width}x{height}: sides must be multiples of {m}")
        arrays = [
            np.asarray(im.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))
            for im in images
        ]
        x = torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        return 2.0 * x - 1.0

    @staticmethod
    def postprocess(images: Tensor, output: str = "pil") -> list[Image.Image] | np.ndarray | Tensor:
        """Decoded (B, 3, H, W) -> ``pil`` images, ``np`` (B, H, W, 3) in [0, 1] or ``pt``."""
        x = (images * 0.5 + 0.5).clamp(0, 1)
        if output == "pt":
            return x
        arr = x.cpu().permute(0, 2, 3, 1).float().numpy()
        if output == "np":
            return arr
        if output != "pil":
            raise ValueError(f"output={output!r}: pil, np, pt (or latent, before decoding)")
        return [Image.fromarray(a) for a in (arr * 255).round().astype("uint8")]


class PixelLatents(VAE):
    """An identity latent space with the VAE's interface, for tests and toy trainings that
    must not depend on a trained autoencoder: ``encode`` area-averages ``factor x factor``
    pixel blocks (``(B, 3, H, W)`` in [-1, 1] -> ``(B, 3, H/f, W/f)``), ``decode`` repeats each
    latent pixel ``f x f`` times (nearest). Nothing is learned, so what a model generates in it
    is directly visible (blocky) pixels. Pair it with a transformer whose ``in_channels`` is 3.
    """

    def __init__(self, factor: int = 8) -> None:
        nn.Module.__init__(self)
        if factor < 1:
            raise ValueError(f"factor={factor} must be >= 1")
        self.scaling_factor, self.shift_factor = 1.0, 0.0
        self.latent_channels = 3
        self.downsample = factor
        self.multiple = 2 * factor
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # dtype / device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def enable_tiling(self, enabled: bool = True) -> None:
        """Nothing to tile: every block is independent."""

    @torch.no_grad()
    def encode(
        self,
        images: Tensor,
        generators: list[torch.Generator] | None = None,
        sample: bool = True,
    ) -> Tensor:
        """(B, 3, H, W) -> (B, 3, H/f, W/f); deterministic (``generators``/``sample`` unused)."""
        x = images.to(self.device, self.dtype)
        return torch.nn.functional.avg_pool2d(x, self.downsample)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        f = self.downsample
        return latents.to(self.device, self.dtype).repeat_interleave(f, -2).repeat_interleave(f, -1)
