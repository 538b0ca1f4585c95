"""S3-DiT training step: packed (ours) vs diffusers' padded ``ZImageTransformer2DModel``.

    python bench/model_step.py                       # mid preset (0.17B), CPU, fp32
    python bench/model_step.py --quick               # debug preset, half-size latents, < 1 min
    python bench/model_step.py --device cuda --dtype bf16 --attention auto
    python bench/model_step.py --checkpointing       # both models recompute block activations
    python bench/model_step.py --compile             # per-block torch.compile, both models

Batch (fixed, seeded): latents of one 512x512, two 256x256 and one 384x640 image at /8 with 16
channels, (16,1,64,64) (16,1,32,32) x2 (16,1,48,80), captions of 20, 77, 150 and 200 tokens of
the preset's ``cap_feat_dim``, timesteps 0.2/0.4/0.6/0.8 (1 = clean). Input x_t = t x0 +
(1 - t) noise, target velocity v = x0 - noise (the released models' convention), loss = mean over
images of each image's MSE(prediction, v), computed on the unpadded outputs. ``--quick`` uses the
``debug`` preset, latents of half the side length (32x32, 16x16 x2, 24x40) and 3 repeats: it
checks the plumbing and the equivalence, its times say nothing about the real model.

Both models have the same weights: the reference is built from the preset's config, every
parameter re-drawn from a seeded normal (non-zero, fan-in scaled), and its state dict loaded
into ``S3DiT`` with ``strict=True``. A step is forward + loss + backward (grads set to None
before it, outside the timing); ours includes ``model.pack`` (host-side index building), the
reference does its own patchify/padding inside ``forward``. After ``--warmup`` steps each, the
two alternate (ref, ours, ref, ours, ...) for ``--repeats`` rounds; median and min are reported.
The warm-up steps give the loss and gradient differences (same inputs, same weights).

Peak memory. CUDA: ``torch.cuda.max_memory_allocated`` during a step minus the memory allocated
before it (weights + inputs), i.e. activations, gradients and temporaries. CPU: each variant runs
in a fresh child process (this script with a hidden flag; Linux) that builds only its model; the
figure is the increase of the process's peak resident set size (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` just before the step) over its resident size before the step. That is
what the OS had to give the step -- activations, gradients (one weight-sized copy), autograd
and oneDNN temporaries, and whatever glibc's allocator kept mapped -- not an allocator count; the
first step of a process also pays one-off buffers, so a second step is measured as well (memory
freed by step 1 and kept by the allocator is not counted again there). The two children run
while the parent builds and warms up (peak RSS does not depend on the CPU load); the parent
waits for them before its timed steps.

Load. The machine may be shared: the JSON line carries the load averages and
``other_cpu_frac``, the share of all cores used by other processes during the timed steps
(``/proc/stat`` busy time minus this process's CPU time).

The last line is JSON: ``step_time_ratio`` = median ours / median ref (goal of issue 8:
<= 0.7 with identical loss).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model import S3DiT, patchify  # noqa: E402
from model.attention import BACKENDS  # noqa: E402
from model.checkpointing import apply_activation_checkpointing, compile_blocks  # noqa: E402
from model.presets import PRESETS  # noqa: E402

LATENTS = [(64, 64), (32, 32), (32, 32), (48, 80)]  # 512x512, 256x256 x2, 384x640 at /8
QUICK_LATENTS = [(32, 32), (16, 16), (16, 16), (24, 40)]  # --quick: half the side lengths
CAPTIONS = [20, 77, 150, 200]
TIMESTEPS = [0.2, 0.4, 0.6, 0.8]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MIB = 2**20


@dataclass(frozen=True)
class Batch:
    x: list[Tensor]  # (16, 1, H, W) noisy latents x_t
    t: Tensor  # (B,)
    caps: list[Tensor]  # (L, cap_feat_dim)
    v: list[Tensor]  # (16, 1, H, W) target velocity, float32
    v_tokens: Tensor  # (N_target, 64) the same, patchified (the packed loss's target)
    counts: list[int]  # target tokens per image


def make_batch(args: argparse.Namespace) -> Batch:
    """The fixed batch on ``args.device`` in ``args.dtype`` (targets in float32)."""
    device, dtype, cap_dim = (
        torch.device(args.device),
        DTYPES[args.dtype],
        PRESETS[args.preset]["cap_feat_dim"],
    )
    latents = QUICK_LATENTS if args.quick else LATENTS
    gen = torch.Generator().manual_seed(args.seed)
    t = torch.tensor(TIMESTEPS)
    x0 = [torch.randn(16, 1, h, w, generator=gen) for h, w in latents]
    noise = [torch.randn(16, 1, h, w, generator=gen) for h, w in latents]
    caps = [torch.randn(n, cap_dim, generator=gen) for n in CAPTIONS]
    x = [ti * a + (1 - ti) * b for ti, a, b in zip(t.tolist(), x0, noise, strict=True)]
    v = [(a - b).to(device) for a, b in zip(x0, noise, strict=True)]
    return Batch(
        x=[xi.to(device, dtype) for xi in x],
        t=t.to(device),
        caps=[c.to(device, dtype) for c in caps],
        v=v,
        v_tokens=torch.cat([patchify(vi, 2, 1) for vi in v]),
        counts=[h * w // 4 for h, w in latents],
    )


def randomize(module: nn.Module, seed: int = 0) -> None:
    """Every parameter from a seeded normal (zero-initialised ones included): matrices scaled by
    1/sqrt(fan_in), norm scales 1 + 0.1 N, the rest 0.1 N (pad tokens N). Same names -> same
    values, so the reference and ``S3DiT`` get identical weights from the same seed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 2 and "pad_token" not in name:
                p.copy_(noise / math.sqrt(p.shape[1]))
            elif "norm" in name or name.startswith("cap_embedder.0"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(noise if "pad_token" in name else 0.1 * noise)


def build(variant: str, args: argparse.Namespace, ref: nn.Module | None = None) -> nn.Module:
    """The reference (randomized) or ours (the given reference's state dict, strict), with the
    switches applied; on ``args.device`` in ``args.dtype``."""
    from diffusers import ZImageTransformer2DModel

    config = PRESETS[args.preset]
    if variant == "ref":
        model = ZImageTransformer2DModel(**config)
        randomize(model, args.seed)
        if args.checkpointing:
            model.enable_gradient_checkpointing()
        if args.compile:
            model.compile_repeated_blocks()
    else:
        model = S3DiT(**config)
        if ref is None:
            randomize(model, args.seed)  # the child processes: same names, same values
        else:
            model.load_state_dict(ref.state_dict(), strict=True)
        model.attention_backend = args.attention
        if args.checkpointing:
            apply_activation_checkpointing(model)
        if args.compile:
            compile_blocks(model)
    return model.to(args.device, DTYPES[args.dtype]).train()


def ref_loss(model: nn.Module, batch: Batch) -> Tensor:
    out = model(batch.x, batch.t, batch.caps, return_dict=False)[0]  # [(16, 1, H, W)]
    return torch.stack([F.mse_loss(o.float(), v) for o, v in zip(out, batch.v, strict=True)]).mean()


def ours_loss(model: S3DiT, batch: Batch) -> Tensor:
    packed = model.pack(batch.x, batch.t, batch.caps)
    pred = model.forward_packed(packed)  # (N_target, 64), images in order
    err = (pred.float() - batch.v_tokens).pow(2).mean(-1)  # (N_target,)
    return torch.stack([e.mean() for e in err.split(batch.counts)]).mean()


LOSSES = {"ref": ref_loss, "ours": ours_loss}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(variant: str, model: nn.Module, batch: Batch, device: torch.device) -> tuple[float, float]:
    """One forward + backward from grads = None; -> (seconds, loss)."""
    model.zero_grad(set_to_none=True)
    sync(device)
    start = time.perf_counter()
    loss = LOSSES[variant](model, batch)
    loss.backward()
    sync(device)
    return time.perf_counter() - start, loss.item()


def grads(model: nn.Module) -> dict[str, Tensor]:
    strip = ("_checkpoint_wrapped_module.", "_orig_mod.")
    out = {}
    for name, p in model.named_parameters():
        for s in strip:
            name = name.replace(s, "")
        if p.grad is not None:
            out[name] = p.grad.detach().float().clone()
    return out


def grad_diff(ours: dict[str, Tensor], ref: dict[str, Tensor]) -> tuple[float, float]:
    """(max abs difference over all parameters, the same relative to that tensor's max |grad|)."""
    if ours.keys() != ref.keys():
        raise RuntimeError(f"different parameters got gradients: {ours.keys() ^ ref.keys()}")
    diffs = [((ours[n] - g).abs().max().item(), g.abs().max().item()) for n, g in ref.items()]
    return max(d for d, _ in diffs), max(d / max(m, 1e-12) for d, m in diffs)


def token_plan(model: S3DiT, batch: Batch) -> dict[str, dict[str, list[int]]]:
    """Sequence lengths each stage computes on: ours per item, the reference padded to the max."""
    packed = model.pack([x.cpu() for x in batch.x], batch.t.cpu(), [c.cpu() for c in batch.caps])
    ours = {
        "image": packed.image.cu_seqlens.diff().tolist(),
        "caption": packed.caption.cu_seqlens.diff().tolist(),
        "unified": packed.unified_cu_seqlens.diff().tolist(),
    }
    return {"ours": ours, "ref": {k: [max(v)] * len(v) for k, v in ours.items()}}


def forward_gflop(lengths: dict[str, list[int]], config: dict) -> dict[str, float]:
    """Forward matmul GFLOP of the transformer blocks (projections + SwiGLU vs attention's
    QK^T and PV over the computed sequence lengths); backward is about twice this."""
    dim, hidden = config["dim"], int(config["dim"] / 3 * 8)
    linear = attention = 0.0
    layers = {"image": config["n_refiner_layers"], "caption": config["n_refiner_layers"]}
    for stage, n_blocks in {**layers, "unified": config["n_layers"]}.items():
        tokens = sum(lengths[stage])
        linear += n_blocks * 2 * tokens * (4 * dim * dim + 3 * dim * hidden)
        attention += n_blocks * 4 * dim * sum(n * n for n in lengths[stage])
    return {"linear": round(linear / 1e9, 1), "attention": round(attention / 1e9, 1)}


def _proc_status(key: str) -> int:
    """A size from /proc/self/status, in bytes (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def cpu_busy() -> tuple[float, float, float] | None:
    """(machine busy CPU seconds, this process's CPU seconds, wall time) from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system, time.perf_counter()


def other_cpu_fraction(start, end) -> float | None:
    """Share of the machine's CPU capacity used by other processes between two ``cpu_busy``."""
    if start is None or end is None:
        return None
    busy, own, wall = (b - a for a, b in zip(start, end, strict=True))
    return round(max(busy - own, 0.0) / (wall * (os.cpu_count() or 1)), 3)


def memory_child(args: argparse.Namespace) -> None:
    """Child process: build one variant, then per step (two) the peak RSS over the RSS before."""
    model, batch = build(args.child, args), make_batch(args)
    figures: dict[str, object] = {"variant": args.child, "method": "VmHWM - VmRSS before"}
    for i in (1, 2):
        model.zero_grad(set_to_none=True)
        gc.collect()
        before = _proc_status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (the peak RSS) to the current RSS, Linux >= 4.0
        step(args.child, model, batch, torch.device("cpu"))
        figures[f"step{i}_rss_before_mib"] = round(before / MIB)
        figures[f"step{i}_rss_increase_mib"] = round((_proc_status("VmHWM") - before) / MIB)
    print(json.dumps(figures))


def start_memory_children() -> dict[str, subprocess.Popen]:
    """Both CPU memory children, started at once (their peak RSS does not depend on what else
    runs; the parent waits for them before its timed steps, so they never overlap those)."""
    return {
        variant: subprocess.Popen(
            [sys.executable, __file__, *sys.argv[1:], "--child", variant],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for variant in ("ref", "ours")
    }


def collect_memory_children(children: dict[str, subprocess.Popen]) -> dict[str, dict]:
    out = {}
    for variant, child in children.items():
        stdout, stderr = child.communicate()
        if child.returncode:
            raise RuntimeError(f"memory child {variant} failed:\n{stderr[-3000:]}")
        out[variant] = json.loads(stdout.strip().splitlines()[-1])
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="default mid (debug with --quick)")
    ap.add_argument("--repeats", type=int, help="alternating rounds (default 5, 3 with --quick)")
    ap.add_argument("--warmup", type=int, help="untimed steps per model (default 1, 2 compiled)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--attention", choices=["auto", *BACKENDS], default="auto", help="ours only")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=["ref", "ours"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.preset = args.preset or ("debug" if args.quick else "mid")
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.compile else 1)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible")
    if args.device == "cpu" and not os.path.exists("/proc/self/clear_refs"):
        ap.error("the CPU memory figures need Linux (/proc/self/status and clear_refs)")
    if args.device == "cpu" and args.dtype == "bf16":
        ap.error("--dtype bf16 is for --device cuda (CPU bf16 matmuls are not representative)")
    if args.device == "cpu" and args.attention in ("flex", "flash"):
        ap.error(
            f"--attention {args.attention} has no CPU backward (flash: CUDA only; flex: CPU "
            "FlexAttention is forward-only in torch 2.15)"
        )
    return args


def equivalence(models: dict[str, nn.Module], batch: Batch, args) -> dict[str, float]:
    """Warm-up steps (ref, ours alternating); the last ones' losses and gradient difference."""
    losses, warm_s = {}, {"ref": [], "ours": []}
    for _ in range(args.warmup):
        for v, model in models.items():
            seconds, losses[v] = step(v, model, batch, torch.device(args.device))
            warm_s[v].append(round(seconds, 2))
    grad_abs, grad_rel = grad_diff(grads(models["ours"]), grads(models["ref"]))
    print(
        f"warm-up s {warm_s}; loss ref {losses['ref']:.8f} ours {losses['ours']:.8f}; "
        f"max |grad diff| {grad_abs:.3g} ({grad_rel:.3g} of the tensor's max |grad|)"
    )
    return {
        "loss_ref": losses["ref"],
        "loss_ours": losses["ours"],
        "max_abs_loss_diff": abs(losses["ours"] - losses["ref"]),
        "max_abs_grad_diff": grad_abs,
        "max_rel_grad_diff": grad_rel,
    }


def timed(models: dict[str, nn.Module], batch: Batch, args) -> tuple[dict, dict]:
    """``args.repeats`` alternating rounds: (seconds per variant, CUDA memory per variant)."""
    device = torch.device(args.device)
    times: dict[str, list[float]] = {"ref": [], "ours": []}
    cuda_mem: dict[str, dict[str, int]] = {}
    for _ in range(args.repeats):
        for v, model in models.items():
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            seconds, loss = step(v, model, batch, device)
            times[v].append(seconds)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device)
                cuda_mem[v] = {
                    "peak_mib": round(peak / MIB),
                    "step_mib": round((peak - base) / MIB),
                }
            print(f"  {v:4s} {seconds:7.3f} s  loss {loss:.8f}")
    return times, cuda_mem


def main() -> None:
    args = parse_args()
    torch.set_num_threads(2)
    if args.child:
        return memory_child(args)
    device, config = torch.device(args.device), PRESETS[args.preset]
    load_start = os.getloadavg()
    children = start_memory_children() if device.type == "cpu" else {}
    ref = build("ref", args)
    models = {"ref": ref, "ours": build("ours", args, ref=ref)}
    batch = make_batch(args)
    plan = token_plan(models["ours"], batch)
    gflop = {v: forward_gflop(plan[v], config) for v in plan}
    n_params = sum(p.numel() for p in ref.parameters())
    print(f"preset {args.preset} ({n_params:,} params), {device} {args.dtype}, {vars(args)}")
    for v in plan:
        print(f"  {v:4s} tokens per sequence {plan[v]}; forward GFLOP {gflop[v]}")
    equal = equivalence(models, batch, args)

    if device.type == "cpu":  # the children are done before the timed steps start
        kind = "CPU: peak RSS increase of a fresh process over a step (VmHWM - VmRSS before)"
        memory = {"kind": kind, **collect_memory_children(children)}
    load_timed, busy_start = os.getloadavg(), cpu_busy()
    times, cuda_mem = timed(models, batch, args)
    load_end, other_cpu = os.getloadavg(), other_cpu_fraction(busy_start, cpu_busy())
    if device.type == "cuda":
        kind = "CUDA: max_memory_allocated during a step minus memory_allocated before it"
        memory = {"kind": kind, **cuda_mem}
    pack_s = []
    for _ in range(3):
        start = time.perf_counter()
        models["ours"].pack(batch.x, batch.t, batch.caps)
        pack_s.append(time.perf_counter() - start)

    med = {v: statistics.median(times[v]) for v in times}
    low = {v: min(times[v]) for v in times}
    ratio = med["ours"] / med["ref"]
    tokens = {v: {k: sum(n) for k, n in plan[v].items()} for v in plan}
    print(f"\n{'':5s} {'median s':>9s} {'min s':>8s} {'unified tokens':>15s} {'peak mem MiB':>13s}")
    for v in ("ref", "ours"):
        mem = memory[v].get("step_mib", memory[v].get("step1_rss_increase_mib"))
        print(f"{v:5s} {med[v]:9.3f} {low[v]:8.3f} {tokens[v]['unified']:15d} {mem:13}")
    print(
        f"step_time_ratio {ratio:.3f} (min/min {low['ours'] / low['ref']:.3f}); goal <= 0.7 "
        f"{'met' if ratio <= 0.7 else 'NOT met'}; |loss diff| {equal['max_abs_loss_diff']:.3g}; "
        f"other processes used {other_cpu} of the CPUs while timing"
    )
    summary = {
        "bench": "model_step",
        "preset": args.preset,
        "params": n_params,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        **{k: getattr(args, k) for k in ("dtype", "attention", "checkpointing", "compile")},
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "step_time_ratio": round(ratio, 4),
        "step_time_ratio_min": round(low["ours"] / low["ref"], 4),
        "ours_s": round(med["ours"], 4),
        "ref_s": round(med["ref"], 4),
        "ours_min_s": round(low["ours"], 4),
        "ref_min_s": round(low["ref"], 4),
        "pack_s": round(statistics.median(pack_s), 4),
        **equal,
        "tokens": {"packed": tokens["ours"]["unified"], "padded": tokens["ref"]["unified"]},
        "tokens_per_stage": tokens,
        "fwd_gflop": gflop,
        "memory": memory,
        "load_avg_start": [round(x, 2) for x in load_start],
        "load_avg_timed": [round(x, 2) for x in load_timed],
        "load_avg_end": [round(x, 2) for x in load_end],
        "other_cpu_frac": other_cpu,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
