"""The trainer: one stage of flow-matching training of the S3-DiT on a curated manifest.

The same class runs in-process (the ``local`` backend) and inside the Ray Train worker
function (issue 11). Override points, as torchtitan's trainer: ``forward_backward_step``
(loss of one encoded batch, backward), ``train_step`` (one optimizer step around it).

Determinism: the data plan is seeded by ``(seed, epoch)``, each step's caption choices by
``(seed, epoch, step, rank)``, and its noise and timesteps by ``(seed, global step, rank)``, so
a resumed run draws exactly what the uninterrupted one would have.

Outputs in ``out/``: ``metrics.jsonl`` (one line per ``log_every`` steps), ``skipped.jsonl``
(rows whose image could not be decoded), ``checkpoints/step-NNNNNNN/`` (``state.pt``: model,
optimizer, scheduler, EMA, position; ``transformer/``: the EMA weights as a diffusers-format
folder) and ``final/`` (the last checkpoint's export + ``zfoundry_stage.json``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model.s3dit import S3DiT
from trainer.config import StageConfig
from trainer.data import Manifest, StageData, Step
from trainer.encoders import EncodedBatch, Encoders
from trainer.flow import interpolate, per_sample_loss, sample_times


class PackedForward(nn.Module):
    """``forward(packed) = model.forward_packed(packed)``: the entry point that data-parallel
    wrappers (DDP, FSDP2) see, so the model itself stays single-device."""

    def __init__(self, model: S3DiT) -> None:
        super().__init__()
        self.model = model

    def forward(self, packed) -> Tensor:
        return self.model.forward_packed(packed)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def lr_lambda(step: int, warmup: int, total: int, schedule: str, floor: float) -> float:
    """Multiplier of the peak lr at ``step`` (0-based): linear warm-up, then constant/cosine."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    def __init__(self, config: StageConfig, *, rank: int = 0, world_size: int = 1) -> None:
        self.config, self.rank, self.world_size = config, rank, world_size
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu")
            if config.device == "auto"
            else config.device
        )
        bf16 = config.precision == "bf16" or (
            config.precision == "auto" and self.device.type == "cuda"
        )
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self.out = Path(config.out)
        self.manifest = Manifest.load(str(config.manifest))
        self.data = StageData(self.manifest, config.data, seed=config.seed, world_size=world_size)
        if config.data.cache:
            from trainer.cache import CachedEncoders

            self.encoders = CachedEncoders(
                Path(config.data.cache), self.manifest, config.encoders, config.data
            )
        else:
            self.encoders = Encoders(config.encoders, self.device, torch.float32)
        self.model = self.build_model().to(self.device).train()
        self.forward_module = self.parallelize(PackedForward(self.model))
        opt = config.optim
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay,
        )  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_lambda(s, opt.warmup_steps, config.steps, opt.schedule, opt.min_lr_ratio),
        )
        self.ema = [p.detach().clone().float() for p in self.model.parameters()]
        self.global_step, self.epoch, self.step_in_epoch = 0, 0, 0
        self._plan: list[Step] | None = None

    # -- model -------------------------------------------------------------------------------
    def build_model(self) -> S3DiT:
        """The preset (random init) or ``pretrained`` transformer, sized to the encoders."""
        c = self.config.model
        need = {
            "cap_feat_dim": self.encoders.caption_dim,
            "in_channels": self.encoders.latent_channels,
        }
        if c.pretrained:
            model = S3DiT.from_pretrained(_transformer_folder(c.pretrained))
            got = {k: int(model.config[k]) for k in need}
            if got != need:
                raise ValueError(f"model.pretrained {c.pretrained}: {got} does not match the "
                                 f"encoders' {need}")  # fmt: skip
        else:
            torch.manual_seed(self.config.seed)
            model = S3DiT.from_preset(c.preset, **{**c.overrides, **need})
        model.attention_backend = c.attention_backend
        if c.gradient_checkpointing:
            from model.checkpointing import apply_activation_checkpointing

            apply_activation_checkpointing(model)
        if c.compile:
            from model.checkpointing import compile_blocks

            compile_blocks(model)
        return model

    def _bare_model(self) -> S3DiT:
        return self.model

    def parallelize(self, module: nn.Module) -> nn.Module:
        """Data parallelism applied from outside the model: DDP over the initialised process
        group when ``world_size > 1`` (gloo on CPU; the Ray backend sets the group up)."""
        if self.world_size == 1:
            return module
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        if not dist.is_initialized() or dist.get_world_size() != self.world_size:
            raise RuntimeError(f"world_size={self.world_size} needs an initialised process "
                               "group of that size (init_process_group)")  # fmt: skip
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    # -- steps -------------------------------------------------------------------------------
    def per_sample_losses(self, batch: EncodedBatch, generator: torch.Generator) -> Tensor:
        """(B,) flow-matching losses of one batch: timesteps and noise from ``generator``."""
        model = self.model
        clean = [z.to(self.device) for z in batch.latents]
        tokens = [int(z.shape[-2] * z.shape[-1]) // 4 for z in clean]
        t = sample_times(tokens, self.config.timesteps, generator)
        noise = [torch.randn(z.shape, generator=generator).to(self.device) for z in clean]
        pairs = [interpolate(z, n, ti) for z, n, ti in zip(clean, noise, t.tolist(), strict=True)]
        noisy, target = [p[0] for p in pairs], [p[1] for p in pairs]
        caps = [_to(c, self.device) for c in batch.captions]
        if batch.task == "i2i":
            x = [
                [*_to(refs, self.device), xt]
                for refs, xt in zip(batch.references, noisy, strict=True)
            ]
            mask = [[0] * (len(item) - 1) + [1] for item in x]
            packed = model.pack(x, t.to(self.device), caps, image_noise_mask=mask)
        else:
            packed = model.pack(noisy, t.to(self.device), caps)
        self.last_packed = packed
        with torch.autocast(self.device.type, self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):  # fmt: skip
            out = self.forward_module(packed)
        pred = model.unpack(packed, out.float())
        return per_sample_loss(pred, target)

    def forward_backward_step(self, batch: EncodedBatch, generator: torch.Generator) -> Tensor:
        """Loss of one batch and its backward; returns the global mean loss of the step.

        The objective is the mean over *all* ranks' samples: ranks hold different numbers of
        samples (token-budget batches), so each rank's loss is its sum times ``world_size /
        global count`` and data parallelism's gradient average turns that into the global mean.
        """
        losses = self.per_sample_losses(batch, generator)
        total = torch.tensor([len(losses), float(losses.detach().sum())], dtype=torch.float64)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        (losses.sum() * (self.world_size / total[0].item())).backward()
        return total[1] / total[0]

    def train_step(self, batch: EncodedBatch) -> dict[str, float]:
        """Zero grads, forward/backward, clip, AdamW step, lr schedule, EMA."""
        opt = self.config.optim
        self.optimizer.zero_grad(set_to_none=True)
        generator = step_generator(self.config.seed, self.global_step, self.rank)
        loss = self.forward_backward_step(batch, generator)
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = opt.grad_clip if opt.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        if opt.ema_decay > 0:
            with torch.no_grad():
                current = [p.detach().float() for p in self.model.parameters()]
                torch._foreach_lerp_(self.ema, current, 1 - opt.ema_decay)
        return {"loss": float(loss), "grad_norm": float(grad_norm), "lr": lr}

    def next_step(self) -> Step:
        """The next step of the data plan (a new epoch's plan when one is used up)."""
        while True:
            if self._plan is None:
                self._plan = self.data.plan(self.epoch)
                if not self._plan:
                    raise ValueError(f"epoch {self.epoch} has no batches: the manifest's "
                                     f"{len(self.data)} rows give no full step")  # fmt: skip
            if self.step_in_epoch < len(self._plan):
                step = self._plan[self.step_in_epoch]
                self.step_in_epoch += 1
                return step
            self.epoch, self.step_in_epoch, self._plan = self.epoch + 1, 0, None

    # -- loop --------------------------------------------------------------------------------
    def fit(self, progress: bool = True) -> dict[str, Any]:
        from tqdm.auto import tqdm

        from trainer.checkpoint import export_final, latest_checkpoint, load_state, save

        if self.world_size > 1:  # one writer, skips agreed across ranks: the Ray backend's loop
            raise NotImplementedError("fit() is the single-process loop; multi-rank training "
                                      "runs through the Ray backend (issue 11)")  # fmt: skip
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = latest_checkpoint(self.out)
        if resumed is not None:
            load_state(self, resumed)
        total = self.config.steps
        bar = tqdm(total=total, initial=self.global_step, desc=f"train {self.config.name}",
                   disable=not progress, unit="step")  # fmt: skip
        window = dict.fromkeys(("samples", "tokens", "slots", "time"), 0.0)
        last: dict[str, float] = {}
        skipped_total = 0
        while self.global_step < total:
            start = time.perf_counter()
            step = self.next_step()
            examples, skipped = self.data.load(step, self.rank, decode=not self.config.data.cache)
            batch = self.encoders.encode(examples) if examples else None
            skipped += getattr(self.encoders, "skipped", [])
            if hasattr(self.encoders, "skipped"):
                self.encoders.skipped = []
            if skipped:
                skipped_total += len(skipped)
                with open(self.out / "skipped.jsonl", "a") as fh:
                    for row in skipped:
                        fh.write(json.dumps({**row, "step": self.global_step}) + "\n")
            if batch is None or not len(batch):
                continue
            metrics = self.train_step(batch)
            self.global_step += 1
            real, slots = _token_counts(self.last_packed)
            window["samples"] += len(batch)
            window["tokens"] += real
            window["slots"] += slots
            window["time"] += time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if self.global_step % self.config.log_every == 0 or self.global_step == total:
                last = self._log(metrics, window, step)
                window = dict.fromkeys(window, 0.0)
            every = self.config.checkpoint_every
            if every and self.global_step % every == 0 and self.global_step < total:
                save(self)
        bar.close()
        final = save(self)
        export_final(self, final)
        return {"stage": self.config.name, "steps": self.global_step, "checkpoint": str(final),
                "final": str(self.out / "final"), "skipped": skipped_total,
                "resumed_from": str(resumed) if resumed else None, **last}  # fmt: skip

    def _log(self, metrics: dict[str, float], window: dict[str, float], step: Step) -> dict:
        seconds = max(window["time"], 1e-9)
        row = {
            "step": self.global_step,
            "epoch": step.epoch,
            **metrics,
            "samples_per_s": window["samples"] / seconds,
            "tokens_per_s": window["tokens"] / seconds,
            "padding_fraction": 1 - window["tokens"] / max(1, window["slots"]),
            "task": step.task,
        }
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        return row


def _token_counts(packed) -> tuple[int, int]:
    """(real tokens, computed token slots) of a packed batch: slots include segment pads."""
    streams = [packed.image, packed.caption] + ([packed.siglip] if packed.siglip else [])
    slots = sum(int(s.pad_mask.numel()) for s in streams)
    pads = sum(int(s.pad_mask.sum()) for s in streams)
    return slots - pads, slots


def _to(value, device):
    if isinstance(value, list | tuple):
        return [_to(v, device) for v in value]
    return value.to(device)


def _transformer_folder(path: str) -> Path:
    root = Path(path)
    if (root / "model_index.json").is_file():
        return root / "transformer"
    if (root / "final" / "transformer").is_dir():
        return root / "final" / "transformer"
    return root
