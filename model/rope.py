"""3-axis rotary position embedding (RoPE) of S3-DiT.

Every token carries integer positions ``(t, h, w)``: ``t`` is the text index for caption
tokens and the frame/"slot" index for image tokens, ``h``/``w`` the patch row/column (zero
for text). The head dimension is split into ``axes_dims`` (e.g. 32 + 48 + 48 = 128); axis
``a`` rotates its ``axes_dims[a] // 2`` channel pairs by ``pos[a] * theta ** (-2i / d_a)``.
Channel pairs are adjacent elements ``(2i, 2i + 1)`` -- the layout of the reference's
complex-number formulation. We use real cos/sin tables instead of complex tensors so the
math compiles cleanly; the angles are computed in float64 and rounded to float32 exactly as
the reference does, so the tables are bit-identical.
"""

from __future__ import annotations

import torch
from torch import Tensor


class AxialRoPE:
    """cos/sin of every token's rotation angles, looked up from per-axis float32 tables.

    Not an ``nn.Module``: it holds no parameters, and keeping the tables out of the module
    tree keeps them float32 when the model is cast to bf16 and out of the state dict.
    """

    def __init__(self, theta: float, axes_dims: tuple[int, ...], axes_lens: tuple[int, ...]):
        if len(axes_dims) != len(axes_lens):
            raise ValueError(f"axes_dims {axes_dims} and axes_lens {axes_lens} differ in length")
        if any(d % 2 for d in axes_dims):
            raise ValueError(f"every entry of axes_dims must be even, got {axes_dims}")
        self.theta = theta
        self.axes_dims = tuple(axes_dims)
        self.axes_lens = tuple(axes_lens)
        self._tables: dict[torch.device, list[tuple[Tensor, Tensor]]] = {}

    def _axis_tables(self, device: torch.device) -> list[tuple[Tensor, Tensor]]:
        if device not in self._tables:
            tables = []
            for dim, length in zip(self.axes_dims, self.axes_lens, strict=True):
                inv_freq = 1.0 / self.theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
                angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq).float()
                tables.append((angles.cos().to(device), angles.sin().to(device)))  # (len, dim/2)
            self._tables[device] = tables
        return self._tables[device]

    def __call__(self, pos_ids: Tensor) -> tuple[Tensor, Tensor]:
        """pos_ids (N, n_axes) int -> cos, sin, each (N, sum(axes_dims) // 2) float32."""
        tables = self._axis_tables(pos_ids.device)
        cos = torch.cat([c[pos_ids[:, a]] for a, (c, _) in enumerate(tables)], dim=-1)
        sin = torch.cat([s[pos_ids[:, a]] for a, (_, s) in enumerate(tables)], dim=-1)
        return cos, sin


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate adjacent channel pairs of x (N, heads, head_dim) by per-token angles, given as
    ``freqs = complex(cos, sin)`` (N, head_dim/2) complex64.

    Computed in float32 and cast back to x's dtype, with the reference's complex product
    (bit-identical to the real-arithmetic rotation, and 5-10x faster on CPU).
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(pairs * freqs[:, None]).flatten(-2).type_as(x)
