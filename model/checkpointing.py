"""Training switches applied from outside the model (the trainer's job, as torchtitan's
``parallelize``): per-block activation checkpointing and per-block ``torch.compile``.

Both act on the blocks listed by ``S3DiT.block_lists()`` (refiners and main stack). Blocks
are self-contained: ``block(h, ctx)`` with packed hidden states ``h`` (N, dim) and a
``TokenContext``, so wrapping or compiling them needs no change to the model. State-dict
keys are unchanged by either switch.
"""

from __future__ import annotations

from typing import Any

from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    CheckpointWrapper,
    checkpoint_wrapper,
)

from model.s3dit import S3DiT


def apply_activation_checkpointing(model: S3DiT) -> None:
    """Wrap every block in a non-reentrant ``torch.utils.checkpoint`` wrapper, in place.

    Uses torch's ``checkpoint_wrapper``, whose state-dict hooks strip its
    ``_checkpoint_wrapped_module.`` prefix, so checkpoints stay reference-compatible.
    Activations inside a block are recomputed in the backward pass; only block inputs are kept.
    """
    for blocks in model.block_lists():
        for i, block in enumerate(blocks):
            if isinstance(block, CheckpointWrapper):
                raise ValueError(f"block {i} of {type(block).__name__} is already checkpointed")
            blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def compile_blocks(model: S3DiT, **compile_kwargs: Any) -> None:
    """``torch.compile`` every block in place (``nn.Module.compile``: parameter names and
    state-dict keys stay as they are). Call after ``apply_activation_checkpointing`` to
    compile the checkpointed blocks, as torchtitan does."""
    for blocks in model.block_lists():
        for block in blocks:
            block.compile(**compile_kwargs)
