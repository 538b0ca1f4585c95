"""Packing: reference-style inputs (lists of latents / caption features) -> one ``PackedBatch``.

Token streams. A batch is split into up to three streams, each the concatenation over items:

    image    patchified latents  (N_img, pF*p*p*C)       -> x_embedder, noise_refiner (modulated)
    caption  caption features    (N_cap, cap_feat_dim)    -> cap_embedder, context_refiner
    siglip   SigLIP features     (N_sig, siglip_feat_dim) -> siglip_embedder, siglip_refiner (omni)

Inside an item every segment (one image, one caption, one SigLIP grid) is padded to a multiple
of 32 tokens with rows the model replaces by a learned pad token (``pad_mask``, feature rows are
zeros). Those pads are part of the model -- they attend and are attended -- exactly as in the
reference. Nothing else is padded: an item's tokens of one stream form one sequence
(``cu_seqlens``) and the batch is never padded to its longest item -- unless ``pad_items_to``
asks for exactly that, the naive padded baseline of ``bench/train_throughput.py``.

The main stack runs on one *unified* sequence per item, the refined streams in the reference's
order -- plain ``[image, caption]``, omni ``[caption_0.., image_0.., siglip_0..]`` -- given as
``unified_index`` into the rows of ``cat(image, caption, siglip)``. Only the target image's
real tokens (the last image of each item, without pads) reach the final layer:
``target_rows`` (rows of the image stream) and ``target_in_unified``; ``forward_packed``
returns ``(N_target, pF*p*p*C)`` in item order, each item's tokens in ``patchify`` order.

Conditioning rows (``cond_index``): plain batches index a ``(B, .)`` table of timestep
embeddings by item; omni batches a ``(2B, .)`` table, rows ``[0, B)`` at the item's t ("noisy"
tokens) and ``[B, 2B)`` at t = 1 ("clean" tokens of reference images and their captions).

Positions ``(t, h, w)`` as in the reference (diffusers 0.42 ``patchify_and_embed[_omni]``):
plain caption token k -> ``(1 + k, 0, 0)`` (pads included), image -> ``(Lc + 1 + f, h, w)``
with ``Lc`` the padded caption length; omni caption j starts at text index ``s_j`` (``s_0 = 1``,
``s_{j+1} = s_j + len_j + 2``), image j at ``(s_j + len_j + f, h, w)``, SigLIP j at
``(s_j + len_j + 1, h', w')`` with ``h', w'`` rescaled to the latent grid; image and SigLIP pads
get ``(0, 0, 0)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

SEQ_MULTIPLE = 32  # every segment is padded to a multiple of this many tokens


@dataclass(frozen=True)
class TokenStream:
    """One kind of token (image / caption / siglip) of every item, packed."""

    feats: Tensor  # (N, feat_dim) input features; pad rows are zeros
    pad_mask: Tensor  # (N,) bool, True where the learned pad token replaces the row
    pos_ids: Tensor  # (N, 3) int64 RoPE positions (t, h, w)
    cond_index: Tensor  # (N,) int64 row of the conditioning table per token
    cu_seqlens: Tensor  # (S+1,) int32, one sequence per item that has tokens of this kind
    max_seqlen: int


@dataclass(frozen=True)
class PackedBatch:
    """A batch in the packed layout the model computes on (see the module docstring)."""

    t: Tensor  # (B,) timesteps in [0, 1], 1 = clean (the pipelines pass 1 - sigma)
    omni: bool
    patch_size: int
    f_patch_size: int
    image: TokenStream
    caption: TokenStream
    siglip: TokenStream | None
    unified_index: Tensor  # (N_u,) rows of cat(image, caption, siglip) in main-stack order
    unified_cu_seqlens: Tensor  # (B+1,) int32; one more sequence per item with pad_items_to
    unified_max_seqlen: int
    target_rows: Tensor  # (N_target,) image-stream rows of each item's output image
    target_in_unified: Tensor  # (N_target,) the same tokens' rows in the unified sequence
    target_sizes: tuple[tuple[int, int, int], ...]  # (F, H, W) latent size of each output


def padded(n: int) -> int:
    return n + (-n) % SEQ_MULTIPLE


def patchify(image: Tensor, patch_size: int, f_patch_size: int) -> Tensor:
    """(C, F, H, W) -> (F/pF * H/p * W/p, pF*p*p*C): tokens in (f, h, w) order."""
    c, f, h, w = image.shape
    p, pf = patch_size, f_patch_size
    if f % pf or h % p or w % p:
        raise ValueError(f"latent (C, F, H, W) = {tuple(image.shape)} not divisible by {pf, p, p}")
    x = image.reshape(c, f // pf, pf, h // p, p, w // p, p)
    return x.permute(1, 3, 5, 2, 4, 6, 0).reshape(-1, pf * p * p * c)


def unpatchify(
    tokens: Tensor, size: tuple[int, int, int], patch_size: int, f_patch_size: int
) -> Tensor:
    """Inverse of ``patchify``: (n, pF*p*p*C) -> (C, F, H, W)."""
    f, h, w = size
    p, pf = patch_size, f_patch_size
    x = tokens.reshape(f // pf, h // p, w // p, pf, p, p, -1)
    return x.permute(6, 0, 3, 1, 4, 2, 5).reshape(-1, f, h, w)


def _grid(f: int, h: int, w: int, start_t: int) -> Tensor:
    axes = torch.meshgrid(
        torch.arange(start_t, start_t + f), torch.arange(h), torch.arange(w), indexing="ij"
    )
    return torch.stack(axes, dim=-1).flatten(0, 2)  # (f*h*w, 3)


def _zeros_pos(n: int) -> Tensor:
    return torch.zeros(n, 3, dtype=torch.long)


def caption_positions(lengths: list[int]) -> tuple[Tensor, list[int]]:
    """Positions of one item's (padded) captions and the text index where each caption ends.

    Caption j counts from ``s_j`` through its padded length. The reference builds each caption's
    list with ``pad_j`` extra ``(0, 0, 0)`` rows and trims only the concatenation, so from the
    second caption on the positions are shifted by the earlier pad counts. This quirk of
    diffusers' ``_pad_with_ids`` is reproduced for equivalence (no effect with one caption).
    """
    pieces, ends, start = [], [], 1
    for n in lengths:
        pieces += [_grid(padded(n), 1, 1, start), _zeros_pos(padded(n) - n)]
        ends.append(start + n)
        start += n + 2  # one text slot each for the image and the SigLIP tokens
    return torch.cat(pieces)[: sum(padded(n) for n in lengths)], ends


def siglip_positions(
    grid_hw: tuple[int, int], start_t: int, latent_hw: tuple[int, int] | None
) -> Tensor:
    """(padded(H*W), 3) positions of an (H, W) SigLIP grid, h/w rescaled to the latent size.

    As the reference: ``h / max(H-1, 1) * (H_lat - 1)`` in float32, truncated, where ``H_lat``
    is the latent's height in latent pixels (not in patch tokens, which would be H_lat / p).
    """
    gh, gw = grid_hw
    pos = torch.cat([_grid(1, gh, gw, start_t), _zeros_pos(padded(gh * gw) - gh * gw)])
    if latent_hw is None:
        return pos
    scaled = pos.float()
    scaled[:, 1] = scaled[:, 1] / max(gh - 1, 1) * (latent_hw[0] - 1)
    scaled[:, 2] = scaled[:, 2] / max(gw - 1, 1) * (latent_hw[1] - 1)
    return scaled.to(torch.int32).long()


@dataclass
class _StreamBuilder:
    """Accumulates one stream's segments item by item; index tensors stay on the host."""

    feat_dim: int
    feats: list[Tensor | int] = field(default_factory=list)  # real rows, or a count of zero rows
    pad_mask: list[Tensor] = field(default_factory=list)
    pos: list[Tensor] = field(default_factory=list)
    noisy: list[Tensor] = field(default_factory=list)
    item_lengths: list[int] = field(default_factory=list)
    batch_pad: dict[int, int] = field(default_factory=dict)  # item -> trailing pad_items_to rows

    def add(self, real: Tensor | None, pos: Tensor, noisy: int) -> int:
        """Append a segment: ``real`` rows, then zero pad rows up to ``len(pos)``; its length."""
        n_real = 0 if real is None else real.shape[0]
        if real is not None:
            if real.shape[1] != self.feat_dim:
                raise ValueError(f"feature dim {real.shape[1]} != expected {self.feat_dim}")
            self.feats.append(real)
        if len(pos) > n_real:
            self.feats.append(len(pos) - n_real)
        self.pad_mask.append(torch.arange(len(pos)) >= n_real)
        self.pos.append(pos)
        self.noisy.append(torch.full((len(pos),), bool(noisy)))
        self.item_lengths[-1] += len(pos)
        return len(pos)

    def add_batch_pad(self, n: int) -> None:
        """Append ``n`` pad rows to the current item, as an attention sequence of their own."""
        self.add(None, _zeros_pos(n), 1)
        self.batch_pad[len(self.item_lengths) - 1] = n

    def build(self, omni: bool, like: Tensor) -> TokenStream:
        """Concatenate; zero rows take the dtype of the first real rows (else ``like``'s)."""
        batch, device = len(self.item_lengths), like.device
        real = [f for f in self.feats if isinstance(f, Tensor)]
        ref = real[0] if real else like
        feats = [
            f if isinstance(f, Tensor) else ref.new_zeros(f, self.feat_dim) for f in self.feats
        ]
        lengths = torch.tensor(self.item_lengths)
        item = torch.repeat_interleave(torch.arange(batch), lengths)
        noisy = torch.cat(self.noisy)
        cond_index = item + batch * (~noisy).long() if omni else item
        pads = torch.tensor([self.batch_pad.get(i, 0) for i in range(batch)], dtype=torch.long)
        seqs = torch.stack([lengths - pads, pads], 1).flatten()  # (2B,) each item's real, pad
        cu = torch.cat([torch.zeros(1, dtype=torch.long), seqs[seqs > 0].cumsum(0)])
        return TokenStream(
            feats=torch.cat(feats),
            pad_mask=torch.cat(self.pad_mask).to(device),
            pos_ids=torch.cat(self.pos).to(device),
            cond_index=cond_index.to(device),
            cu_seqlens=cu.to(torch.int32).to(device),
            max_seqlen=int(seqs.max()),
        )


_Target = tuple[int, int, tuple[int, int, int]]  # (item-local image row, real tokens, (F, H, W))


def _image_segment(image: Tensor, p: int, pf: int, start_t: int) -> tuple[Tensor, Tensor]:
    """Patches (n, d) and padded positions (padded(n), 3) of one latent starting at text index t."""
    patches = patchify(image, p, pf)
    _, f, h, w = image.shape
    n = len(patches)
    return patches, torch.cat([_grid(f // pf, h // p, w // p, start_t), _zeros_pos(padded(n) - n)])


def _add_plain_item(
    streams: dict[str, _StreamBuilder], image: Tensor, cap: Tensor, p: int, pf: int
) -> _Target:
    cap_pos, _ = caption_positions([len(cap)])
    n_cap = streams["caption"].add(cap, cap_pos, 1)
    patches, pos = _image_segment(image, p, pf, n_cap + 1)
    streams["image"].add(patches, pos, 1)
    return 0, len(patches), tuple(image.shape[1:])


def _add_omni_item(
    streams: dict[str, _StreamBuilder],
    images: list[Tensor | None],
    caps: list[Tensor],
    sigs: list[Tensor | None] | None,
    noise: list[int],
    p: int,
    pf: int,
) -> _Target:
    if len(noise) != len(images) or len(caps) < len(images):
        raise ValueError(
            f"omni item with {len(images)} images needs as many noise-mask entries and at least "
            f"as many captions, got {len(noise)} and {len(caps)}"
        )
    if sigs is not None and len(sigs) != len(images):
        raise ValueError(f"{len(sigs)} SigLIP entries for {len(images)} images (use None entries)")
    cap_pos, cap_ends = caption_positions([len(c) for c in caps])
    offset = 0
    for j, cap in enumerate(caps):
        pos = cap_pos[offset : offset + padded(len(cap))]
        offset += streams["caption"].add(cap, pos, noise[j] if j < len(noise) else 1)
    target, offset, latent_hw = None, 0, []
    for j, image in enumerate(images):
        if image is None:  # an empty slot: one segment of pad tokens
            latent_hw.append(None)
            offset += streams["image"].add(None, _zeros_pos(SEQ_MULTIPLE), noise[j])
            continue
        patches, pos = _image_segment(image, p, pf, cap_ends[j])
        target = (offset, len(patches), tuple(image.shape[1:]))
        latent_hw.append(tuple(image.shape[2:]))
        offset += streams["image"].add(patches, pos, noise[j])
    for j, sig in enumerate(sigs or []):
        if sig is None:
            streams["siglip"].add(None, _zeros_pos(SEQ_MULTIPLE), noise[j])
            continue
        gh, gw, gc = sig.shape
        flat = sig.permute(2, 0, 1).reshape(gh * gw, gc)  # the reference's channel-major layout
        pos = siglip_positions((gh, gw), cap_ends[j] + 1, latent_hw[j])
        streams["siglip"].add(flat, pos, noise[j])
    if target is None:
        raise ValueError("omni item without any image: nothing to predict")
    return target


def pack_batch(
    x: list[Tensor] | list[list[Tensor | None]],
    t: Tensor,
    cap_feats: list[Tensor] | list[list[Tensor]],
    *,
    in_channels: int,
    cap_feat_dim: int,
    patch_size: int = 2,
    f_patch_size: int = 1,
    siglip_feats: list[list[Tensor | None] | None] | None = None,
    image_noise_mask: list[list[int]] | None = None,
    siglip_feat_dim: int | None = None,
    axes_lens: tuple[int, ...] | None = None,
    pad_items_to: int | str | None = None,
) -> PackedBatch:
    """Pack a batch given as the reference model's ``forward`` takes it.

    Plain: ``x`` a list of (C, F, H, W) latents, ``cap_feats`` a list of (L, cap_feat_dim).
    Omni: ``x`` a list of per-item image lists (reference images then the target; ``None`` for
    an empty slot), ``cap_feats`` per-item caption lists, ``siglip_feats`` per-item lists of
    (H, W, siglip_feat_dim) grids or ``None`` entries (or ``None`` for an item without any),
    ``image_noise_mask`` per-item 0/1 per image (1 = noisy, modulated at ``t``; 0 = clean, t=1).
    ``axes_lens``, when given, bounds the positions (the RoPE tables' lengths).

    ``pad_items_to`` (plain batches; ``"longest"`` or an int >= the longest item's unified
    length ``padded(image tokens) + padded(caption tokens)``): the naive padded baseline. Item
    i gets ``pad_items_to - L_i`` batch-padding rows (the learned image pad token, positions
    (0, 0, 0), the item's t) after its image tokens, an attention sequence of their own in the
    image refiner and in the unified stack: they go through every linear layer (the final
    layer sees target tokens only) and attend among themselves, never to or from real tokens,
    so the real outputs are unchanged and the unified stack computes B * ``pad_items_to`` rows.
    A padded model computes at least as much: the same rows in every linear layer, each
    refiner stream padded to its own longest, and a masked SDPA's (B, L_max, L_max) scores
    where this computes sum(L_i^2 + pad_i^2); a speedup measured against it is a lower bound.
    """
    omni = isinstance(x[0], list)
    _check_inputs(omni, len(x), t, cap_feats, siglip_feats, image_noise_mask, siglip_feat_dim)
    p, pf = patch_size, f_patch_size
    pads = _batch_pads(omni, x, cap_feats, p, pf, pad_items_to)
    builders = {
        "image": _StreamBuilder(pf * p * p * in_channels),
        "caption": _StreamBuilder(cap_feat_dim),
        "siglip": _StreamBuilder(siglip_feat_dim or 0),
    }
    targets = []
    for i in range(len(x)):
        for builder in builders.values():
            builder.item_lengths.append(0)
        if omni:
            sigs = None if siglip_feats is None else siglip_feats[i]
            noise = image_noise_mask[i]
            targets.append(_add_omni_item(builders, x[i], cap_feats[i], sigs, noise, p, pf))
        else:
            targets.append(_add_plain_item(builders, x[i], cap_feats[i], p, pf))
            if pads[i]:
                builders["image"].add_batch_pad(pads[i])
    if axes_lens is not None:
        _check_positions([pos for b in builders.values() for pos in b.pos], axes_lens)
    like = cap_feats[0][0] if omni else cap_feats[0]  # device (and fallback dtype)
    streams = {n: b.build(omni, like) for n, b in builders.items() if b.pos}
    order = ["caption", "image", "siglip"] if omni else ["image", "caption"]
    unified_index, unified_lengths, target_rows = _unified_order(builders, order, targets)
    position = torch.empty_like(unified_index)  # inverse permutation of unified_index
    position[unified_index] = torch.arange(len(unified_index))
    device = like.device
    return PackedBatch(
        t=t,
        omni=omni,
        patch_size=p,
        f_patch_size=pf,
        image=streams["image"],
        caption=streams["caption"],
        siglip=streams.get("siglip"),
        unified_index=unified_index.to(device),
        unified_cu_seqlens=_cumsum0(unified_lengths).to(torch.int32).to(device),
        unified_max_seqlen=max(unified_lengths),
        target_rows=target_rows.to(device),
        target_in_unified=position[target_rows].to(device),
        target_sizes=tuple(size for _, _, size in targets),
    )


def _batch_pads(
    omni: bool, x: list, caps: list, p: int, pf: int, pad_items_to: int | str | None
) -> list[int]:
    """Batch-padding rows per item for ``pad_items_to`` (see ``pack_batch``)."""
    if pad_items_to is None:
        return [0] * len(x)
    if omni:
        raise ValueError(f"pad_items_to={pad_items_to!r} is for plain batches only")
    lengths = [
        padded(im.shape[1] // pf * (im.shape[2] // p) * (im.shape[3] // p)) + padded(len(c))
        for im, c in zip(x, caps, strict=True)
    ]
    target = max(lengths) if pad_items_to == "longest" else pad_items_to
    if not isinstance(target, int) or isinstance(target, bool) or target < max(lengths):
        raise ValueError(
            f"pad_items_to must be 'longest' or an int >= the longest item's {max(lengths)} "
            f"unified tokens, got {pad_items_to!r}"
        )
    return [target - n for n in lengths]


def _cumsum0(lengths: list[int]) -> Tensor:
    return torch.tensor([0, *lengths]).cumsum(0)


def _check_inputs(
    omni: bool,
    batch: int,
    t: Tensor,
    cap_feats: list,
    siglip_feats: list | None,
    noise_mask: list[list[int]] | None,
    siglip_feat_dim: int | None,
) -> None:
    if len(cap_feats) != batch or t.shape != (batch,):
        raise ValueError(
            f"{batch} latents need {batch} captions and t of shape ({batch},), "
            f"got {len(cap_feats)} and {tuple(t.shape)}"
        )
    if not omni and (siglip_feats is not None or noise_mask is not None):
        raise ValueError("siglip_feats / image_noise_mask are omni inputs; x must be nested lists")
    if siglip_feat_dim is None and any(s is not None for s in siglip_feats or []):
        raise ValueError("siglip_feats given but the model has no SigLIP embedder")
    if omni and (noise_mask is None or len(noise_mask) != batch):
        raise ValueError(f"omni batches need image_noise_mask with {batch} entries: {noise_mask}")


def _check_positions(positions: list[Tensor], axes_lens: tuple[int, ...]) -> None:
    top = torch.cat(positions).amax(0).tolist()  # host tensors: no device sync
    if any(m >= n for m, n in zip(top, axes_lens, strict=True)):
        raise ValueError(f"positions up to {top} exceed the RoPE axes_lens {list(axes_lens)}")


def _unified_order(
    builders: dict[str, _StreamBuilder], order: list[str], targets: list[_Target]
) -> tuple[Tensor, list[int], Tensor]:
    """Rows of cat(image, caption, siglip) in main-stack order, each item's unified length,
    and the image-stream rows of the targets."""
    offset, starts = 0, {}
    for name in ("image", "caption", "siglip"):  # the concatenation order of the streams
        lengths = builders[name].item_lengths
        starts[name] = (offset + _cumsum0(lengths)).tolist()
        offset += sum(lengths)
    pieces, unified_lengths = [], []
    for i in range(len(targets)):
        pad = builders["image"].batch_pad.get(i, 0)  # pad_items_to rows: the image's last
        ends = {n: starts[n][i + 1] - (pad if n == "image" else 0) for n in order}
        pieces += [torch.arange(starts[n][i], ends[n]) for n in order]
        unified_lengths.append(sum(ends[n] - starts[n][i] for n in order))
        if pad:
            pieces.append(torch.arange(ends["image"], ends["image"] + pad))
            unified_lengths.append(pad)
    target_rows = [
        torch.arange(starts["image"][i] + row, starts["image"][i] + row + n)
        for i, (row, n, _) in enumerate(targets)
    ]
    return torch.cat(pieces), unified_lengths, torch.cat(target_rows)


def unpack(packed: PackedBatch, out: Tensor) -> list[Tensor]:
    """``forward_packed``'s (N_target, pF*p*p*C) -> one (C, F, H, W) tensor per item."""
    p, pf = packed.patch_size, packed.f_patch_size
    counts = [(f // pf) * (h // p) * (w // p) for f, h, w in packed.target_sizes]
    pieces = out.split(counts)
    return [unpatchify(o, size, p, pf) for o, size in zip(pieces, packed.target_sizes, strict=True)]
