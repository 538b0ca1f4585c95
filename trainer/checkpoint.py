"""Resumable checkpoints of a stage and the diffusers-format export.

``out/checkpoints/step-NNNNNNN/``:

* ``state.pt``: model and optimizer state dicts, the lr scheduler, the EMA weights, the global
  step, the data position (epoch, step within the epoch) and the number of ranks whose plan it
  is a position in -- everything the next step depends on (noise and caption draws are seeded
  by the step, see ``trainer.trainer``);
* ``transformer/``: the EMA weights (the raw weights with ``ema_decay = 0``) as
  ``S3DiT.save_pretrained`` writes them: ``config.json`` + safetensors, loadable by
  ``S3DiT.from_pretrained``, diffusers' ``ZImageTransformer2DModel`` and ``zfoundry sample``;
* ``_COMPLETE``: written last; a folder without it (a crash mid-write) is ignored and replaced.

A checkpoint is written to ``.tmp-step-N`` and renamed, so readers never see half of one.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from trainer.trainer import Trainer

MARKER = "_COMPLETE"
STAGE_FILE = "zfoundry_stage.json"


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:07d}"


def latest_checkpoint(out: Path) -> Path | None:
    root = out / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / MARKER).is_file())
    return done[-1] if done else None


def save(trainer: Trainer) -> Path | None:
    """Write the trainer's state at its current step; returns the folder on rank 0 (None on
    the other ranks). Call it on every rank: under FSDP2 the full state is gathered from all
    of them (rank 0 writes it, so a checkpoint looks the same however it was trained)."""
    final = checkpoint_dir(trainer.out, trainer.global_step)
    if trainer.sharded:
        return _save_sharded(trainer, final)
    if trainer.rank != 0:
        return None
    if (final / MARKER).is_file():
        return final
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model = trainer._bare_model()
    state = {
        "model": model.state_dict(),
        "optimizer": get_optimizer_state_dict(model, trainer.optimizer),  # keyed by name
        "optimizer_format": "fqn",
        "ema": trainer.ema,
    }
    return _write(trainer, final, state, lambda folder: export_transformer(trainer, folder))


def _save_sharded(trainer: Trainer, final: Path) -> Path | None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    lead = trainer.rank == 0
    if trainer._reduce([float(lead and (final / MARKER).is_file())], "max")[0]:
        return final if lead else None  # written before (a resumed run): every rank agrees
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # on rank 0, on CPU
    model, use_ema = trainer.model, trainer.config.optim.ema_decay > 0
    state = {
        "model": get_model_state_dict(model, options=full),
        "optimizer": get_optimizer_state_dict(model, trainer.optimizer, options=full),
        "optimizer_format": "fqn",
        "ema": [],
    }
    for e in trainer.ema:
        gathered = e.full_tensor()  # a collective: every rank gathers, rank 0 keeps a CPU copy
        state["ema"].append(gathered.cpu() if lead else None)
    with _ema_weights(trainer, use_ema):
        weights = get_model_state_dict(model, options=full)
    if not lead:
        return None

    def export(folder: Path) -> None:  # the gathered EMA weights in a model on the CPU
        from model.s3dit import S3DiT

        model = S3DiT.from_config(dict(trainer._bare_model().config))
        model.load_state_dict(weights)
        model.save_pretrained(folder)

    return _write(trainer, final, state, export)


def _write(trainer: Trainer, final: Path, state: dict, export: Callable[[Path], None]) -> Path:
    """``state.pt`` (+ the position), ``transformer/`` and ``_COMPLETE`` into a temporary
    folder, renamed to ``final``."""
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state | _position(trainer), tmp / "state.pt")
    export(tmp / "transformer")
    (tmp / MARKER).write_text(json.dumps({"step": trainer.global_step}) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _position(trainer: Trainer) -> dict:
    return {
        "scheduler": trainer.scheduler.state_dict(),
        "global_step": trainer.global_step,
        "epoch": trainer.epoch,
        "step_in_epoch": trainer.step_in_epoch,
        "stage": trainer.config.name,
        "world_size": trainer.world_size,  # the data position is a position in that plan
    }


@contextlib.contextmanager
def _ema_weights(trainer: Trainer, use_ema: bool) -> Iterator[None]:
    """Within the block the model holds its EMA weights (shard by shard under FSDP2)."""
    model = trainer._bare_model()
    backup = [p.detach().clone() for p in model.parameters()] if use_ema else None
    with torch.no_grad():
        if use_ema:
            for p, e in zip(model.parameters(), trainer.ema, strict=True):
                p.copy_(e.to(p.dtype))
        try:
            yield
        finally:
            if backup is not None:
                for p, b in zip(model.parameters(), backup, strict=True):
                    p.copy_(b)


def export_transformer(trainer: Trainer, folder: Path) -> None:
    """The EMA weights (raw weights when EMA is off) as a diffusers-format folder."""
    with _ema_weights(trainer, trainer.config.optim.ema_decay > 0):
        trainer._bare_model().save_pretrained(folder)


def load_state(trainer: Trainer, folder: Path) -> None:
    """Restore everything ``save`` wrote, so the next step is the uninterrupted run's."""
    if trainer.sharded:  # memory-mapped: each rank reads the parts of its shards
        state = torch.load(folder / "state.pt", map_location="cpu", mmap=True, weights_only=True)
    else:
        state = torch.load(folder / "state.pt", map_location=trainer.device, weights_only=True)
    if state["stage"] != trainer.config.name:
        raise ValueError(f"{folder} belongs to stage {state['stage']!r}, not "
                         f"{trainer.config.name!r}; use another out folder")  # fmt: skip
    written_by = state.get("world_size", 1)
    if written_by != trainer.world_size:
        raise ValueError(f"{folder} was written by {written_by} rank(s) and its data position "
                         f"belongs to that plan; resume it with {written_by} worker(s), or "
                         "start a new out folder from its transformer/ "
                         "(model.pretrained)")  # fmt: skip
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    full = StateDictOptions(full_state_dict=trainer.sharded)  # FSDP2: shard the full tensors
    if trainer.sharded:
        set_model_state_dict(trainer.model, state["model"], options=full)
    else:
        trainer._bare_model().load_state_dict(state["model"])
    if state.get("optimizer_format") == "fqn":  # by parameter name: any wrapping, any sharding
        set_optimizer_state_dict(trainer.model, trainer.optimizer, state["optimizer"],
                                 options=full)  # fmt: skip
    elif trainer.sharded:
        raise ValueError(f"{folder}: an older checkpoint (optimizer state by parameter index) "
                         "cannot be resumed under FSDP2; resume it with "
                         "data_parallel = 'ddp'")  # fmt: skip
    else:
        trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    with torch.no_grad():
        for e, saved in zip(trainer.ema, state["ema"], strict=True):
            if hasattr(e, "device_mesh"):  # an FSDP2 shard: take this rank's part
                from torch.distributed.tensor import distribute_tensor

                saved = distribute_tensor(saved.to(e.device), e.device_mesh, e.placements)
            e.copy_(saved)
    trainer.global_step = state["global_step"]
    trainer.epoch, trainer.step_in_epoch = state["epoch"], state["step_in_epoch"]
    trainer._plan = None


def export_final(trainer: Trainer, checkpoint: Path) -> Path:
    """``out/final/``: the checkpoint's ``transformer/`` and a note of how it was trained."""
    final = trainer.out / "final"
    tmp = trainer.out / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint / "transformer", tmp / "transformer")
    enc = trainer.config.encoders
    note = {
        "stage": trainer.config.name,
        "step": trainer.global_step,
        "ema": trainer.config.optim.ema_decay > 0,
        "pipeline": enc.pipeline,
        "latent_space": enc.latent_space,
        "manifest": str(trainer.config.manifest),
    }
    (tmp / STAGE_FILE).write_text(json.dumps(note, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
