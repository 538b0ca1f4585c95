"""Building blocks of S3-DiT, all operating on packed tokens.

Tensors are packed: ``x`` is ``(N, dim)`` with the tokens of several sequences concatenated
(see ``model.packing``); a ``TokenContext`` says where the sequences start (``cu_seqlens``),
carries each token's RoPE cos/sin and, for modulated blocks, each token's conditioning row.

Conditioning ("adaLN"): ``cond`` is a small table ``(M, adaln_dim)`` of timestep embeddings
(plain batches: one row per item; omni batches: a "noisy" row at the item's t and a "clean"
row at t = 1 per item) and ``cond_index`` ``(N,)`` picks each token's row. A block computes
its modulation on the table and gathers it per token, which is the reference's broadcast
(plain) or ``select_per_token`` (omni) without any batch padding.

Parameter names and shapes follow diffusers' ``ZImageTransformer2DModel`` exactly
(``attention.to_q``, ``attention.to_out.0``, ``feed_forward.w1``, ``adaLN_modulation.0``, ...).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.attention import varlen_attention
from model.rope import apply_rope

ADALN_EMBED_DIM = 256  # width of the timestep embedding fed to every adaLN (min(dim, 256))


@dataclass(frozen=True)
class TokenContext:
    """Everything a block needs besides the hidden states, for one packed token stream."""

    cu_seqlens: Tensor  # (S+1,) int32 sequence boundaries
    max_seqlen: int
    cos: Tensor  # (N, head_dim/2) float32 RoPE
    sin: Tensor  # (N, head_dim/2) float32 RoPE
    backend: str = "auto"  # attention backend, see model.attention
    cond: Tensor | None = None  # (M, adaln_dim) timestep embeddings, modulated blocks only
    cond_index: Tensor | None = None  # (N,) row of `cond` per token

    @functools.cached_property
    def freqs(self) -> Tensor:
        """complex(cos, sin), (N, head_dim/2) complex64: computed once, shared by every block."""
        return torch.complex(self.cos, self.sin)


class RMSNorm(nn.Module):
    """RMS norm with a learned scale, numerically as diffusers' ``RMSNorm``."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return x * self.weight


class TimestepEmbedder(nn.Module):
    """t (B,) -> sinusoidal features (cos first, then sin) -> MLP -> (B, out_dim)."""

    def __init__(self, out_dim: int, mid_dim: int = 1024, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, mid_dim), nn.SiLU(), nn.Linear(mid_dim, out_dim)
        )

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(
            -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t[:, None].float() * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class FeedForward(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Attention(nn.Module):
    """Self-attention over packed sequences with per-head QK RMS norm and 3-axis RoPE."""

    def __init__(self, dim: int, n_heads: int, qk_norm: bool):
        super().__init__()
        self.n_heads = n_heads
        head_dim = dim // n_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.norm_q = RMSNorm(head_dim, eps=1e-5) if qk_norm else None
        self.norm_k = RMSNorm(head_dim, eps=1e-5) if qk_norm else None
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=False)])

    def forward(self, x: Tensor, ctx: TokenContext) -> Tensor:
        q, k, v = (
            proj(x).unflatten(-1, (self.n_heads, -1)) for proj in (self.to_q, self.to_k, self.to_v)
        )
        if self.norm_q is not None and self.norm_k is not None:
            q, k = self.norm_q(q), self.norm_k(k)  # (N, heads, head_dim)
        q, k = apply_rope(q, ctx.freqs), apply_rope(k, ctx.freqs)
        out = varlen_attention(q, k, v, ctx.cu_seqlens, ctx.max_seqlen, ctx.backend)
        return self.to_out[0](out.flatten(1).to(q.dtype))  # (N, dim)


class S3DiTBlock(nn.Module):
    """Pre/post-norm single-stream block; ``modulation`` adds adaLN scale and tanh gates."""

    def __init__(
        self, dim: int, n_heads: int, norm_eps: float, qk_norm: bool, modulation: bool = True
    ):
        super().__init__()
        self.modulation = modulation
        self.attention = Attention(dim, n_heads, qk_norm)
        self.feed_forward = FeedForward(dim, int(dim / 3 * 8))
        self.attention_norm1 = RMSNorm(dim, eps=norm_eps)
        self.ffn_norm1 = RMSNorm(dim, eps=norm_eps)
        self.attention_norm2 = RMSNorm(dim, eps=norm_eps)
        self.ffn_norm2 = RMSNorm(dim, eps=norm_eps)
        if modulation:
            self.adaLN_modulation = nn.Sequential(
                nn.Linear(min(dim, ADALN_EMBED_DIM), 4 * dim, bias=True)
            )

    def forward(self, x: Tensor, ctx: TokenContext) -> Tensor:
        if not self.modulation:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), ctx))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        if ctx.cond is None or ctx.cond_index is None:
            raise ValueError("a modulated block needs ctx.cond and ctx.cond_index")
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(ctx.cond).chunk(4, dim=-1)
        idx = ctx.cond_index  # (N,) -> per-token rows of the (M, dim) tables below
        attn_out = self.attention(self.attention_norm1(x) * (1.0 + scale_msa)[idx], ctx)
        x = x + gate_msa.tanh()[idx] * self.attention_norm2(attn_out)
        ffn_out = self.feed_forward(self.ffn_norm1(x) * (1.0 + scale_mlp)[idx])
        return x + gate_mlp.tanh()[idx] * self.ffn_norm2(ffn_out)  # (N, dim)


class FinalLayer(nn.Module):
    """LayerNorm (no affine) * (1 + adaLN scale) -> linear to patch values."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim, bias=True)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(min(dim, ADALN_EMBED_DIM), dim, bias=True)
        )

    def forward(self, x: Tensor, cond: Tensor, cond_index: Tensor) -> Tensor:
        scale = 1.0 + self.adaLN_modulation(cond)  # (M, dim)
        return self.linear(self.norm_final(x) * scale[cond_index])  # (N, out_dim)
