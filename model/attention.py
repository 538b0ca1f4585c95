"""Variable-length ("packed") bidirectional self-attention.

Layout: the tokens of all sequences are concatenated along the first axis,

    q, k, v     (total_tokens, heads, head_dim)
    cu_seqlens  (num_seqs + 1,) int32, cumulative lengths starting at 0
    max_seqlen  length of the longest sequence (a Python int)

and every token attends to every token of its own sequence and to nothing else. The output
has the layout of ``q``. Nothing is spent on batch padding.

Backends (``varlen_attention(..., backend=NAME)``):

* ``flash``: ``flash_attn.flash_attn_varlen_func`` (CUDA, fp16/bf16), else PyTorch's own
  ``torch.nn.attention.varlen.varlen_attn`` (the same FlashAttention/cuDNN kernels).
* ``flex``: FlexAttention with a document-id block mask. Compiled on CUDA; on CPU it runs the
  unfused eager path (correct, materialises the scores) and is forward-only: torch 2.15 has
  no FlexAttention backward on CPU.
* ``sdpa``: one ``scaled_dot_product_attention`` call per group of equal-length sequences
  (batched), no mask, so no wasted work. Needs the lengths on the host (one sync on GPU).
* ``sdpa_mask``: one SDPA call over the whole pack with a block-diagonal boolean mask;
  quadratic in the *total* number of tokens, kept as a simple reference.
* ``auto``: ``flash`` for fp16/bf16 CUDA tensors, else ``sdpa``.

Why ``sdpa`` is the CPU default: fp32 forward, one (total, heads, head_dim) pack of three
sequences (1056 + 544 + 352 tokens), median of 7 alternating repeats, 2-core CPU (shared, so
+-20 %), torch 2.15::

    .venv/bin/python bench/attention.py

    backend                        heads 2 x 32    heads 8 x 128
    sdpa (grouped, no mask)            4.7 ms          60.4 ms
    sdpa_mask (block-diagonal)        18.4 ms         140.6 ms
    flex (eager on CPU)               80.5 ms         555.0 ms
    flex, torch.compile'd             10.4 ms          73.2 ms   (+8-12 s compile per shape;
                                                                  measured once by hand)

``sdpa`` does only the per-sequence work; ``sdpa_mask`` pays for the whole (total x total)
score matrix; compiled FlexAttention skips masked blocks but is no faster than ``sdpa`` on CPU
and has no CPU backward, so ``auto`` never picks it.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("flash", "flex", "sdpa", "sdpa_mask")


def varlen_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    backend: str = "auto",
) -> Tensor:
    """Attention within each packed sequence; q/k/v (total, heads, head_dim) -> same shape."""
    if q.ndim != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share a (total, heads, head_dim) shape, got {q.shape}")
    return _BACKEND_FNS[resolve_backend(backend, q)](q, k, v, cu_seqlens, max_seqlen)


def resolve_backend(backend: str, q: Tensor) -> str:
    """The concrete backend ``auto`` stands for on ``q``'s device and dtype."""
    if backend == "auto":
        half = q.dtype in (torch.float16, torch.bfloat16)
        return "flash" if q.is_cuda and half else "sdpa"
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS} or auto")
    return backend


def seq_ids(cu_seqlens: Tensor, total: int) -> Tensor:
    """(total,) index of the sequence each packed token belongs to."""
    positions = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].long(), positions, right=True)


def _flash(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"flash attention needs fp16/bf16 CUDA tensors, got {q.dtype} {q.device}")
    cu = cu_seqlens.to(torch.int32)
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen)
    return flash_attn_varlen_func(q, k, v, cu, cu, max_seqlen, max_seqlen, causal=False)


def _sdpa_grouped(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
    if q.shape[0] == 0:
        return torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    starts_by_len: dict[int, list[int]] = {}
    for start, end in itertools.pairwise(bounds):
        if end > start:
            starts_by_len.setdefault(end - start, []).append(start)
    outs, rows = [], []
    for length, starts in starts_by_len.items():
        idx = (torch.tensor(starts)[:, None] + torch.arange(length)[None]).flatten().to(q.device)
        qg, kg, vg = (t[idx].unflatten(0, (len(starts), length)).transpose(1, 2) for t in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qg, kg, vg).transpose(1, 2).flatten(0, 1))
        rows.append(idx)
    order = torch.cat(rows)  # packed row of each output row
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return torch.cat(outs)[inverse]


def _sdpa_mask(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
    doc = seq_ids(cu_seqlens, q.shape[0])
    mask = doc[:, None] == doc[None, :]  # (total, total) block diagonal
    qb, kb, vb = (t.transpose(0, 1)[None] for t in (q, k, v))  # (1, heads, total, head_dim)
    return F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)[0].transpose(0, 1)


@functools.lru_cache(maxsize=8)
def _flex_block_mask(bounds: tuple[int, ...], device: torch.device):  # -> BlockMask
    from torch.nn.attention.flex_attention import create_block_mask

    cu = torch.tensor(bounds, device=device)
    doc = seq_ids(cu, bounds[-1])

    def same_doc(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return doc[q_idx] == doc[kv_idx]

    return create_block_mask(same_doc, None, None, bounds[-1], bounds[-1], device=device)


@functools.cache
def _flex_fn(device_type: str) -> Callable:
    from torch.nn.attention import flex_attention as fa

    if device_type == "cpu":
        fa._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = True  # eager on purpose, silence the warning
        return fa.flex_attention
    return torch.compile(fa.flex_attention, dynamic=False)


def _flex(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
    block_mask = _flex_block_mask(tuple(cu_seqlens.tolist()), q.device)
    qb, kb, vb = (t.transpose(0, 1)[None] for t in (q, k, v))
    return _flex_fn(q.device.type)(qb, kb, vb, block_mask=block_mask)[0].transpose(0, 1)


_BACKEND_FNS: dict[str, Callable[..., Tensor]] = {
    "flash": _flash,
    "flex": _flex,
    "sdpa": _sdpa_grouped,
    "sdpa_mask": _sdpa_mask,
}
