"""Training through the packed forward: gradients equal the reference's (padded) ones, and the
externally applied switches (activation checkpointing, per-block compile) change nothing."""

from __future__ import annotations

import shutil

import pytest
import torch

from model import S3DiT
from model.blocks import TokenContext
from model.checkpointing import apply_activation_checkpointing, compile_blocks
from tests.model.conftest import TINY, omni_batch, plain_batch, randomize


def _debug_model() -> S3DiT:
    model = S3DiT.from_preset("debug")
    randomize(model, seed=1)
    return model


def _grads(model: torch.nn.Module, loss_fn) -> dict[str, torch.Tensor | None]:
    """Gradients by reference parameter name (None for parameters the batch does not use)."""
    model.zero_grad(set_to_none=True)
    loss_fn(model).backward()
    return {
        n.replace("_checkpoint_wrapped_module.", ""): None if p.grad is None else p.grad.clone()
        for n, p in model.named_parameters()
    }


def assert_same_grads(got: dict, expected: dict, atol: float) -> None:
    """Equal up to ``atol`` relative to each tensor's largest gradient; same unused set."""
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        assert (got[name] is None) == (grad is None), name
        if grad is not None:
            scale = grad.abs().max().clamp_min(1e-3)
            torch.testing.assert_close(got[name] / scale, grad / scale, atol=atol, rtol=0, msg=name)


def _weighted_sum(outputs: list[torch.Tensor]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outputs)


@pytest.mark.parametrize("mode", ["plain", "omni"])
def test_gradients_equal_the_reference(pair, mode):
    """Backward through pack -> forward_packed -> unpack equals the padded reference's."""
    ref, ours = pair
    x, t, caps = plain_batch([7, 40], [(8, 8), (12, 6)])
    inputs = omni_batch(seed=8) if mode == "omni" else {"x": x, "t": t, "cap_feats": caps}

    def loss(model):
        return _weighted_sum(model(**inputs, return_dict=False)[0])

    got = _grads(ours, loss)
    assert_same_grads(got, _grads(ref, loss), atol=2e-5)
    assert got["x_pad_token"].abs().sum() > 0 and got["cap_pad_token"].abs().sum() > 0


def test_activation_checkpointing_keeps_gradients_and_keys():
    model = _debug_model()
    x, t, caps = plain_batch([7, 40], [(8, 8), (12, 6)], cap_dim=32)
    packed = model.pack(x, t, caps)

    def loss(m):
        return _weighted_sum([m.forward_packed(packed)])

    expected = _grads(model, loss)
    keys = list(model.state_dict())
    apply_activation_checkpointing(model)
    assert list(model.state_dict()) == keys  # checkpoints stay reference-compatible
    assert type(model.layers[0]).__name__ == "CheckpointWrapper"
    assert_same_grads(_grads(model, loss), expected, atol=1e-6)
    with pytest.raises(ValueError, match="already checkpointed"):
        apply_activation_checkpointing(model)


@pytest.mark.skipif(
    shutil.which("g++") is None, reason="torch.compile (inductor) needs a C++ compiler on CPU"
)
def test_compiled_block_equals_eager():
    """Inductor on one main-stack block (the whole model takes ~30 s to compile on 2 cores)."""
    model = _debug_model()
    block = model.layers[0]
    gen = torch.Generator().manual_seed(3)
    n = 200
    cos, sin = model.rope(torch.randint(0, 50, (n, 3), generator=gen))
    ctx = TokenContext(
        torch.tensor([0, 120, 200], dtype=torch.int32),
        120,
        cos,
        sin,
        "sdpa_mask",  # traceable without graph breaks
        cond=torch.randn(2, 64, generator=gen),
        cond_index=torch.randint(0, 2, (n,), generator=gen),
    )
    h = torch.randn(n, 64, generator=gen)
    with torch.no_grad():
        eager = block(h, ctx)
        block.compile(fullgraph=True)
        compiled = block(h, ctx)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


def test_compile_blocks_keeps_outputs_and_keys():
    """``compile_blocks`` on every block (aot_eager: dynamo + AOTAutograd, no codegen), fwd+bwd."""
    model = _debug_model()
    x, t, caps = plain_batch([7, 40], [(8, 8), (12, 6)], cap_dim=32)
    packed = model.pack(x, t, caps)

    def loss(m):
        return _weighted_sum([m.forward_packed(packed)])

    expected = _grads(model, loss)
    keys = list(model.state_dict())
    compile_blocks(model, backend="aot_eager")
    assert list(model.state_dict()) == keys
    assert_same_grads(_grads(model, loss), expected, atol=1e-5)


def test_reference_config_training_step_reduces_loss():
    """A few AdamW steps on one packed omni batch fit it: the packed model trains end to end."""
    model = S3DiT(**TINY)
    batch = omni_batch(seed=11)
    packed = model.pack(**batch)
    target = torch.randn(
        packed.target_rows.shape[0], 64, generator=torch.Generator().manual_seed(0)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = (model.forward_packed(packed) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
