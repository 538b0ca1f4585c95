"""S3-DiT: the single-stream diffusion transformer of the Z-Image report, on packed tokens.

Data flow (``N_*`` packed token counts, see ``model.packing``)::

    image  (N_img, pF*p*p*C) -x_embedder-> + pad tokens -> noise_refiner   (modulated by t)
    caption(N_cap, cap_dim)  -cap_embedder-> + pad tokens -> context_refiner
    siglip (N_sig, sig_dim)  -siglip_embedder-> + pad tokens -> siglip_refiner       (omni)
    unified (N_u, dim) = cat(image, caption, siglip)[unified_index]  -> layers (modulated)
    target tokens (N_target, dim) -> final layer -> (N_target, pF*p*p*C)

Every attention is varlen over ``cu_seqlens``: no batch padding is ever computed (unless
``pack(..., pad_items_to=...)`` asks for the benchmarks' padded baseline).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from model.blocks import (
    ADALN_EMBED_DIM,
    FinalLayer,
    RMSNorm,
    S3DiTBlock,
    TimestepEmbedder,
    TokenContext,
)
from model.packing import PackedBatch, TokenStream, pack_batch
from model.packing import unpack as unpack_outputs
from model.presets import PRESETS
from model.rope import AxialRoPE

REFERENCE_CLASS_NAME = "ZImageTransformer2DModel"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_HUB_ID = re.compile(r"[\w][\w.-]*(/[\w][\w.-]*)?")  # "name" or "org/name"


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in file ``path``: ``FileNotFoundError`` / ``ValueError`` naming the file
    when it is missing, not JSON, or JSON but not an object (a list, a number)."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, not a JSON file") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(data).__name__}")
    return data


def index_shards(index: str | Path) -> list[str]:
    """The shard file names a diffusers ``*.safetensors.index.json`` maps tensors to."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str)
                                                   for v in weight_map.values()):  # fmt: skip
        raise ValueError(f"{index}: no weight_map of tensor name -> shard file")
    return sorted(set(weight_map.values()))


def check_transformer_folder(folder: str | Path, weights: bool = True) -> dict[str, Any]:
    """Checks what ``S3DiT.from_pretrained`` needs of a local transformer folder, cheaply (no
    tensor data): ``config.json`` is a JSON object and, with ``weights``, the safetensors file
    (or every shard its index names) has an intact header covering the file (a ``.bin`` is left
    to diffusers). -> the config; ``FileNotFoundError`` / ``ValueError`` naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "no such folder"
        raise FileNotFoundError(f"{folder}: {what} (a transformer folder: config.json + weights)")
    config = read_json_object(folder / "config.json")
    if not weights:
        return config
    index = folder / f"{WEIGHTS_NAME}.index.json"
    if index.is_file():
        files = [folder / name for name in index_shards(index)]
    elif (folder / WEIGHTS_NAME).is_file():
        files = [folder / WEIGHTS_NAME]
    elif (folder / "diffusion_pytorch_model.bin").is_file():
        files = []
    else:
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} (nor its .index.json, nor .bin)")
    for file in files:
        try:
            with safe_open(file, framework="pt"):
                pass
        except FileNotFoundError:
            raise FileNotFoundError(f"{file}: no such file (named by {index.name})") from None
        except (OSError, SafetensorError) as err:
            raise ValueError(f"{file}: not a readable safetensors file ({err})") from None
    return config


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _is_local(path: str | os.PathLike) -> bool:
    """A ``Path``, an existing path, or a string that cannot be a hub id (``org/name``)."""
    text = str(path)
    return not isinstance(path, str) or os.path.exists(text) or not _HUB_ID.fullmatch(text)


class S3DiT(ModelMixin, ConfigMixin):
    """Z-Image's S3-DiT, state-dict compatible with diffusers' ``ZImageTransformer2DModel``.

    The constructor takes exactly the reference's config arguments, with its defaults, so a
    released ``config.json`` loads unchanged; parameter names and shapes are identical, so
    its safetensors load with ``strict=True`` and no key surgery, and fp32 outputs match it
    to 1e-5 (tests/model). Where the report's prose and the released code differ we follow
    the code: the 6B model has 30 heads of 128 (dim 3840), not 32; the FFN width is
    ``int(dim / 3 * 8)`` = 10240; the block adaLN is a bare Linear on the timestep embedding
    (no SiLU) while the final layer's has a SiLU; omni SigLIP features are flattened in the
    reference's channel-major order and caption positions follow its padding quirk
    (``model.packing.caption_positions``).

    Differences from the reference: the computation is packed (``pack`` -> ``forward_packed``
    -> ``unpack``); ``n_kv_heads`` must equal ``n_heads`` (the reference ignores it); inputs
    the reference silently ignores (SigLIP features without a SigLIP embedder, omni inputs in
    plain mode) raise; SigLIP presence is per item (the reference drops every item's SigLIP
    tokens when item 0 has none, and fails when a later item has none); empty omni image
    slots work for any ``in_channels`` (the reference hard-codes 64 = 2*2*16); fresh weights
    use DiT's adaLN-zero init (``initialize_weights``) instead of PyTorch defaults;
    checkpointing and compile are applied from outside (``model.checkpointing``), not via
    ``enable_gradient_checkpointing``; ControlNet residuals and LoRA scales are unsupported.

    ``save_pretrained`` writes ``"_class_name": "ZImageTransformer2DModel"`` into config.json
    (``to_json_string``). ``ZImageTransformer2DModel.from_pretrained`` would accept our own
    class name too (diffusers ignores a ``_class_name`` it does not know), but ``AutoModel``
    and other tools dispatch on it, so with the reference's name the folder is a reference
    checkpoint in every respect. ``S3DiT.from_pretrained`` reads such folders (ours or
    released ones) unchanged.
    """

    _no_split_modules: ClassVar[list[str]] = ["S3DiTBlock"]
    _repeated_blocks: ClassVar[list[str]] = ["S3DiTBlock"]
    _skip_layerwise_casting_patterns: ClassVar[list[str]] = ["t_embedder", "cap_embedder"]

    @register_to_config
    def __init__(
        self,
        all_patch_size: tuple[int, ...] = (2,),
        all_f_patch_size: tuple[int, ...] = (1,),
        in_channels: int = 16,
        dim: int = 3840,
        n_layers: int = 30,
        n_refiner_layers: int = 2,
        n_heads: int = 30,
        n_kv_heads: int = 30,
        norm_eps: float = 1e-5,
        qk_norm: bool = True,
        cap_feat_dim: int = 2560,
        siglip_feat_dim: int | None = None,
        rope_theta: float = 256.0,
        t_scale: float = 1000.0,
        axes_dims: tuple[int, ...] = (32, 48, 48),
        axes_lens: tuple[int, ...] = (1024, 512, 512),
    ) -> None:
        super().__init__()
        if n_kv_heads != n_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} != n_heads={n_heads}: GQA is not supported")
        if dim % n_heads or dim // n_heads != sum(axes_dims):
            raise ValueError(f"dim/n_heads = {dim}/{n_heads} must equal sum(axes_dims)={axes_dims}")
        self.in_channels = self.out_channels = in_channels
        self.attention_backend = "auto"  # see model.attention; any backend gives the same math

        def blocks(n: int, modulation: bool) -> nn.ModuleList:
            return nn.ModuleList(
                S3DiTBlock(dim, n_heads, norm_eps, qk_norm, modulation) for _ in range(n)
            )

        patches = list(zip(all_patch_size, all_f_patch_size, strict=True))
        patch_keys = [f"{p}-{f}" for p, f in patches]
        patch_dims = [f * p * p * in_channels for p, f in patches]
        self.all_x_embedder = nn.ModuleDict(
            {k: nn.Linear(d, dim) for k, d in zip(patch_keys, patch_dims, strict=True)}
        )
        self.all_final_layer = nn.ModuleDict(
            {k: FinalLayer(dim, d) for k, d in zip(patch_keys, patch_dims, strict=True)}
        )
        self.noise_refiner = blocks(n_refiner_layers, modulation=True)
        self.context_refiner = blocks(n_refiner_layers, modulation=False)
        self.t_embedder = TimestepEmbedder(min(dim, ADALN_EMBED_DIM), mid_dim=1024)
        self.cap_embedder = nn.Sequential(
            RMSNorm(cap_feat_dim, norm_eps), nn.Linear(cap_feat_dim, dim)
        )
        self.siglip_embedder = self.siglip_refiner = self.siglip_pad_token = None
        if siglip_feat_dim is not None:
            self.siglip_embedder = nn.Sequential(
                RMSNorm(siglip_feat_dim, norm_eps), nn.Linear(siglip_feat_dim, dim)
            )
            self.siglip_refiner = blocks(n_refiner_layers, modulation=False)
            self.siglip_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.x_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.cap_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.layers = blocks(n_layers, modulation=True)
        self.rope = AxialRoPE(rope_theta, tuple(axes_dims), tuple(axes_lens))
        self.initialize_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> S3DiT:
        """A model from ``model.presets.PRESETS[name]`` with config ``overrides``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """diffusers' ``ModelMixin.from_pretrained``. A local folder is checked first
        (``check_transformer_folder``; a missing one is not looked up on the hub) and a failure
        to load it is a ``FileNotFoundError`` / ``ValueError`` naming the folder or file, not
        the hub client's ``OSError``. Hub ids go to diffusers (a failure: ``FileNotFoundError``)."""
        if not _is_local(pretrained_model_name_or_path):
            try:
                return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
            except OSError as err:
                raise FileNotFoundError(
                    f"{pretrained_model_name_or_path}: no such folder, and "
                    f"not a hub id in reach: {first_line(err)}"
                ) from err
        folder = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        check_transformer_folder(folder, weights=kwargs.get("variant") is None)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except OSError as err:
            raise ValueError(f"{folder}: cannot load the transformer: {first_line(err)}") from err

    def initialize_weights(self) -> None:
        """DiT-style init for training from scratch: Xavier linears, zero biases, N(0, 0.02)
        timestep MLP, adaLN-zero (block gates start at tanh(0) = 0) and a zero output layer.
        Pad tokens start at zero as in the reference. Loading a checkpoint overwrites all."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for linear in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(linear.weight, std=0.02)
        for block in self.noise_refiner + self.layers:
            nn.init.zeros_(block.adaLN_modulation[0].weight)
            nn.init.zeros_(block.adaLN_modulation[0].bias)
        for final in self.all_final_layer.values():
            for linear in (final.adaLN_modulation[1], final.linear):
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)

    def to_json_string(self) -> str:
        """config.json text, naming the reference class (see the class docstring)."""
        config = json.loads(super().to_json_string())
        config["_class_name"] = REFERENCE_CLASS_NAME
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def block_lists(self) -> list[nn.ModuleList]:
        """Every list of transformer blocks (refiners and the main stack), for the trainer's
        per-block activation checkpointing / compile (``model.checkpointing``)."""
        lists = [self.noise_refiner, self.context_refiner, self.layers]
        return lists if self.siglip_refiner is None else [*lists[:2], self.siglip_refiner, lists[2]]

    def pack(
        self,
        x: list[Tensor] | list[list[Tensor | None]],
        t: Tensor,
        cap_feats: list[Tensor] | list[list[Tensor]],
        *,
        patch_size: int = 2,
        f_patch_size: int = 1,
        siglip_feats: list[list[Tensor | None] | None] | None = None,
        image_noise_mask: list[list[int]] | None = None,
        pad_items_to: int | str | None = None,
    ) -> PackedBatch:
        """Reference-style inputs -> ``PackedBatch`` (``model.packing.pack_batch``).

        ``pad_items_to`` pads every item to the longest (``"longest"``) or a given unified
        length, with padding the real tokens never see: the naive padded baseline of
        ``bench/train_throughput.py`` (plain batches; see ``pack_batch``)."""
        patches = list(zip(self.config.all_patch_size, self.config.all_f_patch_size, strict=True))
        if (patch_size, f_patch_size) not in patches:
            raise ValueError(f"patch sizes {(patch_size, f_patch_size)} not in {patches}")
        return pack_batch(
            x,
            t,
            cap_feats,
            in_channels=self.config.in_channels,
            cap_feat_dim=self.config.cap_feat_dim,
            patch_size=patch_size,
            f_patch_size=f_patch_size,
            siglip_feats=siglip_feats,
            image_noise_mask=image_noise_mask,
            siglip_feat_dim=self.config.siglip_feat_dim,
            axes_lens=tuple(self.config.axes_lens),
            pad_items_to=pad_items_to,
        )

    @staticmethod
    def unpack(packed: PackedBatch, out: Tensor) -> list[Tensor]:
        """``forward_packed``'s output -> one (C, F, H, W) prediction per item."""
        return unpack_outputs(packed, out)

    def _refine(
        self,
        stream: TokenStream,
        embedder: nn.Module,
        pad_token: Tensor,
        blocks: nn.ModuleList,
        cond: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Embed one stream, put the pad tokens in, run its refiner; -> (h, cos, sin)."""
        h = torch.where(stream.pad_mask[:, None], pad_token, embedder(stream.feats))  # (N, dim)
        cos, sin = self.rope(stream.pos_ids)
        ctx = TokenContext(
            stream.cu_seqlens,
            stream.max_seqlen,
            cos,
            sin,
            self.attention_backend,
            cond=cond,
            cond_index=stream.cond_index if cond is not None else None,
        )
        for block in blocks:
            h = block(h, ctx)
        return h, cos, sin

    def forward_packed(self, packed: PackedBatch, static_cache: dict | None = None) -> Tensor:
        """Packed batch -> predictions for the target tokens, (N_target, pF*p*p*C).

        ``static_cache``: a dict kept by the caller across calls on the *same* pack with new
        image tokens and ``t`` (the sampler's steps). The caption and SigLIP streams do not
        depend on either, so their embedded and refined tokens are computed once and reused
        (bit-identical results). Inference only: cached tensors carry no gradient history.

        Convention of the released models (and ``ZImagePipeline``): ``t = 1 - sigma`` (1 is
        the clean image) and the output is the flow ``x0 - noise`` (the pipeline steps with
        its negative). Rows follow ``packed.target_rows``: items in order, each target image's
        tokens in ``patchify`` order, so a loss can compare against patchified targets.
        """
        if packed.siglip is not None and self.siglip_embedder is None:
            raise ValueError("the batch has SigLIP tokens but the model has no SigLIP embedder")
        key = f"{packed.patch_size}-{packed.f_patch_size}"
        t = packed.t * self.config.t_scale
        t = torch.cat([t, torch.full_like(t, self.config.t_scale)]) if packed.omni else t
        cond = self.t_embedder(t).to(packed.image.feats.dtype)  # (B, or 2B noisy+clean, 256)
        refiners = [
            (packed.image, self.all_x_embedder[key], self.x_pad_token, self.noise_refiner, cond),
            (packed.caption, self.cap_embedder, self.cap_pad_token, self.context_refiner, None),
        ]
        if packed.siglip is not None:
            siglip = (self.siglip_embedder, self.siglip_pad_token, self.siglip_refiner, None)
            refiners.append((packed.siglip, *siglip))
        parts = [self._refine(*refiners[0])]  # [(h, cos, sin)] per stream
        for name, refiner in zip(("caption", "siglip"), refiners[1:], strict=False):
            if static_cache is None:
                parts.append(self._refine(*refiner))
                continue
            if name not in static_cache:
                with torch.no_grad():
                    static_cache[name] = self._refine(*refiner)
            parts.append(static_cache[name])
        h, cos, sin = (torch.cat(p)[packed.unified_index] for p in zip(*parts, strict=True))
        cond_index = torch.cat([r[0].cond_index for r in refiners])[packed.unified_index]
        ctx = TokenContext(
            packed.unified_cu_seqlens,
            packed.unified_max_seqlen,
            cos,
            sin,
            self.attention_backend,
            cond=cond,
            cond_index=cond_index,
        )
        for block in self.layers:
            h = block(h, ctx)  # (N_u, dim)
        target = packed.target_in_unified
        return self.all_final_layer[key](h[target], cond, cond_index[target])

    def forward(
        self,
        x: list[Tensor] | list[list[Tensor | None]],
        t: Tensor,
        cap_feats: list[Tensor] | list[list[Tensor]],
        return_dict: bool = True,
        controlnet_block_samples: dict[int, Tensor] | None = None,
        siglip_feats: list[list[Tensor | None] | None] | None = None,
        image_noise_mask: list[list[int]] | None = None,
        patch_size: int = 2,
        f_patch_size: int = 1,
        joint_attention_kwargs: dict[str, Any] | None = None,
    ) -> Transformer2DModelOutput | tuple[list[Tensor]]:
        """The reference's call: pack -> forward_packed -> unpack; same inputs and outputs."""
        if controlnet_block_samples is not None:
            raise NotImplementedError("controlnet_block_samples are not supported by S3DiT")
        if joint_attention_kwargs:
            raise NotImplementedError(
                f"joint_attention_kwargs unsupported: {joint_attention_kwargs}"
            )
        packed = self.pack(
            x,
            t,
            cap_feats,
            patch_size=patch_size,
            f_patch_size=f_patch_size,
            siglip_feats=siglip_feats,
            image_noise_mask=image_noise_mask,
        )
        out = unpack_outputs(packed, self.forward_packed(packed))
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)
