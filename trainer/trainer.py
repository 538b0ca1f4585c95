"""The trainer: one stage of flow-matching training of the S3-DiT on a curated manifest.

The same class runs in-process (the ``local`` backend) and inside the Ray Train worker
function (``trainer.ray_backend``); ``fit`` is the loop both share. Override points, as
torchtitan's trainer: ``forward_backward_step`` (loss of one encoded batch, backward),
``train_step`` (one optimizer step around it).

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
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model.s3dit import S3DiT
from trainer.config import StageConfig, pretrained_transformer
from trainer.data import Manifest, StageData, Step
from trainer.encoders import EncodedBatch, Encoders
from trainer.flops import peak_flops, train_step_flops
from trainer.flow import interpolate, per_sample_loss, sample_times

FSDP_ON_GLOO = "ZFOUNDRY_FSDP_ON_GLOO"
"""Set to 1 to allow ``data_parallel = 'fsdp'`` on CPU (gloo): for the tests of the sharded
path, which compare it with DDP (see ``StageConfig.data_parallel``)."""


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
        self.peak_flops = peak_flops(self.device)  # bf16 dense peak of a known GPU, or None
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
            try:
                model = S3DiT.from_pretrained(pretrained_transformer(c.pretrained))
            except (FileNotFoundError, ValueError) as err:
                raise type(err)(f"model.pretrained = {c.pretrained!r}: {err}") from err
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

    @property
    def data_parallel(self) -> str:
        """``none`` (one rank), ``ddp`` or ``fsdp``: ``config.data_parallel`` resolved."""
        mode = self.config.data_parallel
        if mode == "auto":
            return "none" if self.world_size == 1 else (
                "fsdp" if self.device.type == "cuda" else "ddp")  # fmt: skip
        return "none" if mode == "ddp" and self.world_size == 1 else mode

    @property
    def sharded(self) -> bool:
        return self.data_parallel == "fsdp"

    def parallelize(self, module: nn.Module) -> nn.Module:
        """Data parallelism applied from outside the model, over the initialised process group
        (the Ray backend sets it up): DDP (gloo on CPU), or FSDP2 on CUDA -- ``fully_shard`` on
        every transformer block, then on the root, with a mixed-precision policy (parameters
        in the autocast dtype, gradients reduced in fp32)."""
        mode = self.data_parallel
        if mode == "none":
            return module
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_world_size() != self.world_size:
            raise RuntimeError(f"world_size={self.world_size} needs an initialised process "
                               "group of that size (init_process_group)")  # fmt: skip
        if mode == "fsdp":
            if self.device.type != "cuda" and os.environ.get(FSDP_ON_GLOO) != "1":
                raise ValueError("data_parallel = 'fsdp' is for CUDA (NCCL); use 'ddp' on CPU "
                                 "(FSDP2's reduce-scatter over gloo has had an averaging bug, "
                                 "pytorch/pytorch#162338)")  # fmt: skip
            return apply_fsdp(module, self.model, self.autocast_dtype)
        from torch.nn.parallel import DistributedDataParallel

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
        total = torch.tensor([len(losses), float(losses.detach().sum())], dtype=torch.float64,
                             device=self._collective_device)  # fmt: skip
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
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
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
    def planned_steps(self) -> Iterator[Step]:
        """The local backend's step source: ``next_step`` forever."""
        while True:
            yield self.next_step()

    def resume(self) -> str | None:
        """The local backend's resume: the newest complete checkpoint in ``out``."""
        from trainer.checkpoint import latest_checkpoint, load_state

        folder = latest_checkpoint(self.out)
        if folder is None:
            return None
        load_state(self, folder)
        return str(folder)

    def fit(
        self,
        progress: bool = True,
        *,
        steps: Iterable[Step] | None = None,
        resume: Callable[[], str | None] | None = None,
        report: Callable[[dict[str, Any], Path | None], None] | None = None,
        bar: Callable[..., Any] | None = None,
    ) -> dict[str, Any]:
        """Train until ``config.steps``; the loop every backend shares.

        The defaults are the local backend's: resume with ``self.resume``, take steps from
        ``planned_steps``, report nothing. A backend passes its own: ``steps`` yields this
        rank's steps in plan order (steps before the resumed position are passed over),
        ``resume()`` loads a checkpoint and says which, ``report(row, checkpoint)`` is called
        on every rank on the same steps (logged or checkpointed ones) with the folder rank 0
        wrote (None elsewhere), and ``bar`` makes the progress bar (tqdm's signature).

        With ``world_size > 1`` every rank runs ``fit`` in step: rank 0 alone writes metrics
        and checkpoints, metrics are summed (time: the slowest rank) across ranks, and a step
        where any rank has no decodable example is skipped by all of them.
        """
        from tqdm.auto import tqdm

        from trainer.checkpoint import export_final, save

        lead = self.rank == 0
        if lead:
            self.out.mkdir(parents=True, exist_ok=True)
        resumed = (resume or self.resume)()
        if lead:  # lines a killed run wrote after its last checkpoint
            _trim(self.out / "metrics.jsonl", lambda r: r["step"] <= self.global_step)
            _trim(self.out / "skipped.jsonl", lambda r: r["step"] < self.global_step)
        self._barrier()
        total, every = self.config.steps, self.config.checkpoint_every
        position = (self.epoch, self.step_in_epoch)
        progress_bar = (bar or tqdm)(total=total, initial=self.global_step, unit="step",
                                     desc=f"train {self.config.name}",
                                     disable=not (progress and lead))  # fmt: skip
        window = np.zeros(5)  # samples, real tokens, token slots, seconds, model FLOPs
        last: dict[str, Any] = {}
        skipped_here = 0
        for step in self.planned_steps() if steps is None else steps:
            if self.global_step >= total:
                break
            if (step.epoch, step.index) < position:
                continue  # consumed before the checkpoint we resumed from
            start = time.perf_counter()
            self.epoch, self.step_in_epoch = step.epoch, step.index + 1
            examples, skipped = self.data.load(step, self.rank, decode=not self.config.data.cache)
            batch = self.encoders.encode(examples) if examples else None
            skipped += getattr(self.encoders, "skipped", [])
            if hasattr(self.encoders, "skipped"):
                self.encoders.skipped = []
            if skipped:
                skipped_here += len(skipped)
                extra = {"rank": self.rank} if self.world_size > 1 else {}
                rows = [{**row, "step": self.global_step, **extra} for row in skipped]
                self.out.mkdir(parents=True, exist_ok=True)  # (another node than rank 0's)
                _append(self.out / "skipped.jsonl", rows)
            if self._reduce([len(batch) if batch is not None else 0], "min")[0] == 0:
                continue  # some rank has nothing to train on: every rank skips the step
            metrics = self.train_step(batch)
            self.global_step += 1
            real, slots = _token_counts(self.last_packed)
            flops = train_step_flops(self._bare_model(), self.last_packed)
            window += (len(batch), real, slots, time.perf_counter() - start, flops)
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            gs = self.global_step
            log = gs % self.config.log_every == 0 or gs == total
            keep = gs == total or bool(every and gs % every == 0)
            if not (log or keep):
                continue
            row: dict[str, Any] = {"step": gs, "epoch": step.epoch, **metrics, "task": step.task}
            if log:
                row |= self._throughput(window)
                window[:] = 0
                if lead:
                    _append(self.out / "metrics.jsonl", [row])
                last = row
            checkpoint = save(self) if keep else None  # rank 0's folder (sharded: all gather)
            if report is not None:
                report(row, checkpoint)
        progress_bar.close()
        if self.global_step < total:
            raise RuntimeError(f"the data plan ran out at step {self.global_step} of {total} "
                               "(too many steps without a decodable example)")  # fmt: skip
        skipped_total = int(self._reduce([skipped_here], "sum")[0])
        summary = {"stage": self.config.name, "steps": self.global_step,
                   "final": str(self.out / "final"), "skipped": skipped_total,
                   "world_size": self.world_size, "resumed_from": resumed, **last}  # fmt: skip
        final = save(self)  # the last step's checkpoint: already written, returned as is
        if lead:
            export_final(self, final)
            summary["checkpoint"] = str(final)
        self._barrier()  # final/ is written before any rank moves on
        return summary

    def _throughput(self, window: np.ndarray) -> dict[str, float]:
        """Over the ranks: samples, tokens and model FLOPs per second (of the slowest rank's
        time), padding fraction, and MFU against the device's bf16 peak when it is known."""
        samples, real, slots, flops = self._reduce(window[[0, 1, 2, 4]], "sum")
        seconds = max(float(self._reduce(window[3:4], "max")[0]), 1e-9)
        row = {
            "samples_per_s": float(samples) / seconds,
            "tokens_per_s": float(real) / seconds,
            "padding_fraction": 1 - float(real) / max(1.0, float(slots)),
            "model_tflops_per_s": float(flops) / seconds / 1e12,
        }
        if self.peak_flops:
            row["mfu"] = float(flops) / seconds / (self.peak_flops * self.world_size)
        return row

    def _reduce(self, values, op: str) -> np.ndarray:
        """``values`` reduced over the ranks (``sum``, ``min`` or ``max``)."""
        x = torch.tensor(np.asarray(values, np.float64), device=self._collective_device)
        if self.world_size > 1:
            import torch.distributed as dist

            ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
            dist.all_reduce(x, op=ops[op])
        return x.cpu().numpy()

    @property
    def _collective_device(self) -> torch.device:
        """Where small tensors for collectives live: NCCL takes CUDA tensors only."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


def _append(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def _trim(path: Path, keep: Callable[[dict], bool]) -> None:
    """Keep the lines of a JSON-lines file that ``keep`` accepts (tmp + rename)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and keep(json.loads(ln))]
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("".join(ln + "\n" for ln in lines))
    tmp.replace(tmp.with_name(path.name))


def apply_fsdp(root: nn.Module, model: S3DiT, param_dtype: torch.dtype | None) -> nn.Module:
    """FSDP2 over the default process group: ``fully_shard`` on every transformer block of
    ``model`` (refiners and main stack), then on ``root`` (which holds ``model``), with
    parameters gathered in ``param_dtype`` (None: as stored) and gradients reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for blocks in model.block_lists():
        for block in blocks:
            fully_shard(block, mp_policy=policy)
    fully_shard(root, mp_policy=policy)
    return root


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
