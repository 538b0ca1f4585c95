"""varlen_attention: every backend equals plain per-sequence attention, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.attention import BACKENDS, resolve_backend, seq_ids, varlen_attention

CPU_BACKENDS = [b for b in BACKENDS if b != "flash"]
# equal lengths (grouped into one SDPA call), an empty sequence, a single token, a long one
LENGTHS = [32, 17, 32, 0, 1, 70, 32]


def _inputs(heads=2, head_dim=16, seed=0, device="cpu", dtype=torch.float32, grad=False):
    gen = torch.Generator().manual_seed(seed)
    cu = torch.tensor([0, *LENGTHS]).cumsum(0).to(torch.int32)
    qkv = [torch.randn(int(cu[-1]), heads, head_dim, generator=gen) for _ in range(3)]
    q, k, v = (x.to(device, dtype).requires_grad_(grad) for x in qkv)
    return q, k, v, cu, max(LENGTHS)


def _naive(q, k, v, cu) -> torch.Tensor:
    out = []
    for lo, hi in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        qi, ki, vi = (x[lo:hi].transpose(0, 1) for x in (q, k, v))  # (heads, L, head_dim)
        out.append(F.softmax(qi @ ki.transpose(1, 2) / qi.shape[-1] ** 0.5, -1) @ vi)
    return torch.cat([o.transpose(0, 1) for o in out])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_equals_per_sequence_attention(backend):
    q, k, v, cu, max_len = _inputs()
    out = varlen_attention(q, k, v, cu, max_len, backend)
    torch.testing.assert_close(out, _naive(q, k, v, cu), atol=1e-5, rtol=1e-5)


def test_backends_agree_on_gradients():
    """FlexAttention has no CPU backward ("does not support backward on CPU"): GPU test below."""
    grads, backends = {}, ["sdpa", "sdpa_mask"]
    for backend in backends:
        q, k, v, cu, max_len = _inputs(seed=1, grad=True)
        weight = torch.randn(q.shape, generator=torch.Generator().manual_seed(2))
        (varlen_attention(q, k, v, cu, max_len, backend) * weight).sum().backward()
        grads[backend] = torch.cat([q.grad, k.grad, v.grad])
    torch.testing.assert_close(grads["sdpa_mask"], grads["sdpa"], atol=1e-5, rtol=1e-5)


def test_auto_backend_and_errors():
    q = torch.zeros(4, 1, 8)
    assert resolve_backend("auto", q) == "sdpa"
    assert seq_ids(torch.tensor([0, 2, 2, 4]), 4).tolist() == [0, 0, 2, 2]
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("xformers", q)
    with pytest.raises(ValueError, match="fp16/bf16 CUDA"):
        varlen_attention(q, q, q, torch.tensor([0, 4], dtype=torch.int32), 4, "flash")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["flash", "flex", "sdpa", "sdpa_mask"])
def test_gpu_backends_match_in_bf16(backend):
    q, k, v, cu, max_len = _inputs(head_dim=64, device="cuda", dtype=torch.bfloat16, grad=True)
    assert resolve_backend("auto", q) == "flash"
    out = varlen_attention(q, k, v, cu.cuda(), max_len, backend)
    expected = _naive(q.float(), k.float(), v.float(), cu)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=0)
    out.float().square().sum().backward()
    grad = q.grad.float()
    q.grad = None
    expected.square().sum().backward()
    torch.testing.assert_close(grad, q.grad.float(), atol=5e-2, rtol=5e-2)
