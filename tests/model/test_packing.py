"""Properties of the packed layout: no batch padding, intra-sequence pads of 32, positions as
the reference computes them, batch invariance."""

from __future__ import annotations

import pytest
import torch

from model import pack_batch, patchify, unpatchify
from model.packing import SEQ_MULTIPLE
from tests.model.conftest import omni_batch, plain_batch

DIMS = {"in_channels": 16, "cap_feat_dim": 24, "siglip_feat_dim": 20}


def _per_item(stream, batch: int) -> list[torch.Tensor]:
    """Row indices of each item's sequence in a stream (all items have tokens here)."""
    cu = stream.cu_seqlens.tolist()
    assert len(cu) == batch + 1
    return [torch.arange(cu[i], cu[i + 1]) for i in range(batch)]


def test_patchify_roundtrip_and_token_order():
    gen = torch.Generator().manual_seed(0)
    for shape, p, pf in [((16, 1, 8, 6), 2, 1), ((4, 2, 6, 4), 2, 2), ((3, 1, 5, 7), 1, 1)]:
        image = torch.randn(shape, generator=gen)
        tokens = patchify(image, p, pf)
        assert tokens.shape == (
            shape[1] // pf * shape[2] // p * shape[3] // p,
            pf * p * p * shape[0],
        )
        torch.testing.assert_close(unpatchify(tokens, shape[1:], p, pf), image, atol=0, rtol=0)
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert patchify(image, 2, 1)[1].tolist() == [2.0, 3.0, 6.0, 7.0]  # row-major (h, w) patches


def test_plain_layout_has_no_batch_padding_and_pads_segments_to_32():
    x, t, caps = plain_batch([7, 40, 32], [(8, 8), (12, 6), (4, 4)])
    packed = pack_batch(x, t, caps, **DIMS)
    for stream, real in ((packed.image, [16, 18, 4]), (packed.caption, [7, 40, 32])):
        rows = _per_item(stream, 3)
        assert [len(r) % SEQ_MULTIPLE for r in rows] == [0, 0, 0]
        assert [int((~stream.pad_mask[r]).sum()) for r in rows] == real
        assert len(stream.feats) == sum(len(r) for r in rows)
    n_img, n_cap = len(packed.image.feats), len(packed.caption.feats)
    assert packed.unified_cu_seqlens[-1] == n_img + n_cap  # nothing but the real sequences
    assert sorted(packed.unified_index.tolist()) == list(range(n_img + n_cap))  # a permutation
    assert not packed.image.pad_mask[packed.target_rows].any()
    assert packed.unified_index[packed.target_in_unified].tolist() == packed.target_rows.tolist()
    # plain order [image, caption]: item 1's unified sequence starts with its image tokens
    start = packed.unified_cu_seqlens[1].item()
    assert packed.unified_index[start].item() == packed.image.cu_seqlens[1].item()


def test_positions_equal_the_reference(pair):
    ref, _ = pair
    x, t, caps = plain_batch([7, 40], [(8, 8), (12, 6)])
    packed = pack_batch(x, t, caps, **DIMS)
    _, _, _, x_pos, cap_pos, x_pad, cap_pad = ref.patchify_and_embed(x, caps, 2, 1)
    for i, rows in enumerate(_per_item(packed.image, 2)):
        assert packed.image.pos_ids[rows].tolist() == x_pos[i].tolist()
        assert packed.image.pad_mask[rows].tolist() == x_pad[i].tolist()
    for i, rows in enumerate(_per_item(packed.caption, 2)):
        assert packed.caption.pos_ids[rows].tolist() == cap_pos[i][: len(rows)].tolist()
        assert packed.caption.pad_mask[rows].tolist() == cap_pad[i].tolist()

    batch = omni_batch()
    packed = pack_batch(**batch, **DIMS)
    args = batch["x"], batch["cap_feats"], batch["siglip_feats"], 2, 1, batch["image_noise_mask"]
    out = ref.patchify_and_embed_omni(*args)
    x_pos, cap_pos, sig_pos, x_noise, cap_noise, sig_noise = *out[4:7], *out[11:14]
    for stream, pos, noise in (
        (packed.image, x_pos, x_noise),
        (packed.caption, cap_pos, cap_noise),
        (packed.siglip, sig_pos, sig_noise),
    ):
        for i, rows in enumerate(_per_item(stream, 2)):
            assert stream.pos_ids[rows].tolist() == pos[i][: len(rows)].tolist()
            # omni conditioning rows: [0, B) noisy at t, [B, 2B) clean at t = 1
            assert stream.cond_index[rows].tolist() == [i + 2 * (1 - n) for n in noise[i]]


def test_output_of_an_item_does_not_depend_on_its_batch(pair):
    _, ours = pair
    x, t, caps = plain_batch([7, 40, 32], [(8, 8), (12, 6), (4, 4)], seed=6)
    with torch.no_grad():
        together = ours(x, t, caps, return_dict=False)[0]
        items = zip(x, t, caps, strict=True)
        alone = [ours([xi], ti[None], [ci], return_dict=False)[0][0] for xi, ti, ci in items]
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_forward_packed_returns_target_tokens_in_patchify_order(pair):
    _, ours = pair
    batch = omni_batch(seed=2)
    packed = ours.pack(**batch)
    with torch.no_grad():
        out = ours.forward_packed(packed)
    targets = [images[-1] for images in batch["x"]]
    assert out.shape == (sum(len(patchify(im, 2, 1)) for im in targets), 2 * 2 * 16)
    assert packed.target_sizes == tuple(tuple(im.shape[1:]) for im in targets)
    assert [o.shape for o in ours.unpack(packed, out)] == [im.shape for im in targets]


def test_static_cache_reuses_caption_and_siglip_streams_bit_identically(pair):
    """The sampler's cache: a second call on the same pack with new t and image tokens gives
    exactly what an uncached call gives, and the cache holds only the t-free streams."""
    from dataclasses import replace

    _, ours = pair
    packed = ours.pack(**omni_batch(seed=3))
    cache: dict = {}
    with torch.no_grad():
        first = ours.forward_packed(packed, static_cache=cache)
        assert sorted(cache) == ["caption", "siglip"]
        feats = packed.image.feats + 0.5 * torch.randn_like(packed.image.feats)
        moved = replace(packed, t=packed.t * 0.3, image=replace(packed.image, feats=feats))
        cached = ours.forward_packed(moved, static_cache=cache)
        plain = ours.forward_packed(moved)
    assert torch.equal(first, ours.forward_packed(packed))
    assert torch.equal(cached, plain)
    assert not torch.equal(cached, first)


def test_pad_items_to_costs_b_times_longest_and_leaves_real_outputs_unchanged(pair):
    """The naive padded baseline: every item's unified sequence is as long as the longest one,
    the padding in sequences of its own, so the real tokens' predictions do not change."""
    _, ours = pair
    x, t, caps = plain_batch([7, 40, 32], [(8, 8), (12, 6), (4, 4)], seed=4)
    plain = ours.pack(x, t, caps)
    longest = int(plain.unified_cu_seqlens.diff().max())  # item 1: 32 + 64
    for target in ("longest", longest + 5):
        packed = ours.pack(x, t, caps, pad_items_to=target)
        width = longest if target == "longest" else target
        assert len(packed.unified_index) == 3 * width  # B * longest rows in the main stack
        assert len(packed.image.feats) + len(packed.caption.feats) == 3 * width
        assert sorted(packed.unified_index.tolist()) == list(range(3 * width))
        # real sequences as before; each padded item's padding is a sequence of its own
        real = plain.unified_cu_seqlens.diff().tolist()
        assert packed.unified_cu_seqlens.diff().tolist() == [
            n for r in real for n in (r, width - r) if n
        ]
        pads = packed.image.pad_mask.sum() - plain.image.pad_mask.sum()
        assert pads == 3 * width - sum(real)  # batch-padding rows: learned pad tokens
        with torch.no_grad():
            torch.testing.assert_close(
                ours.forward_packed(packed), ours.forward_packed(plain), atol=1e-5, rtol=0
            )
    assert torch.equal(plain.unified_cu_seqlens, ours.pack(x, t, caps).unified_cu_seqlens)
    for bad in (longest - 1, "max", True):
        with pytest.raises(ValueError, match="pad_items_to"):
            ours.pack(x, t, caps, pad_items_to=bad)
    with pytest.raises(ValueError, match="plain batches"):
        ours.pack(**omni_batch(), pad_items_to="longest")
