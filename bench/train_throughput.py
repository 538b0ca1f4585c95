"""Training throughput: length-aware dynamic batching (``trainer.batching``, packed S3-DiT) vs
naive fixed-size batches padded to each batch's longest sample.

    python bench/train_throughput.py --quick         # debug preset, sides halved, < 1 min
    python bench/train_throughput.py                 # debug preset, up to 1024^2 (minutes)
    python bench/train_throughput.py --preset mid --samples 64
    python bench/train_throughput.py --device cuda --dtype bf16 --preset mid

Samples (seeded, generated once): the resolutions an omni stage trains on when it takes web
images at their own aspect ratio and size, "arbitrary resolutions up to 1024^2" as in the
Z-Image report. Source images have a short side log-uniform in [128, 2048] px (thumbnails to
photos, every octave equally likely) and an aspect ratio from 1:1 (30%), 4:3 / 3:4 (15% each),
3:2 / 2:3 and 16:9 / 9:16 (10% each); ``trainer.buckets.resolution_for(min_tokens=64,
max_tokens=4096)`` maps each to its training size: about a third are capped near 1024^2 (~4000
image tokens), the rest spread over 64..4000 tokens. This mix is not tuned to the benchmark:
the shares follow from the source distribution, and a stage with more images at the cap would
pad less in the naive baseline (all items similar), one with more small images more. Each
sample: a random clean latent (16, 1, H/8, W/8) and random caption features of 20-120 tokens
(uniform) of the preset's ``cap_feat_dim``. ``--quick`` halves every side (source short sides
64..1024 px, 16..1024 image tokens, at most 512^2) and uses 48 samples and 3 rounds.

Tokens per sample (``lengths``): ``padded(image tokens) + padded(caption tokens)``, the rows the
packed model computes for it (segments padded to 32, as in the reference).

Strategies, on the same samples:
(1) dynamic: ``length_aware_batches(lengths, token_budget=T)``, T = ``--token-budget`` (default
    16384 = 4 x the largest image's 4096 tokens; 4096 with ``--quick``), packed (no batch pad);
(2) naive: ``naive_batches(batch_size=round(T / mean length))``, each batch packed with
    ``pad_items_to="longest"``: every item's unified sequence padded to the batch's longest, the
    padding in attention sequences of its own (``model.packing.pack_batch``). A padded trainer
    computes at least that much (it also pads the refiner streams and runs a masked attention
    over the full padded length), so ``speedup_vs_naive`` is a lower bound.
The sample count is cut to a multiple of the naive batch size, so both process every sample
once per round.

A training step: pack -> ``forward_packed`` -> MSE against the flow-matching target ``v = x1 -
x0`` at ``x_t = t x1 + (1 - t) x0`` (x1 the clean latent, x0 noise, t ~ U(0, 1), t = 1 clean:
the released models' convention) averaged per image, then backward and an AdamW step; timed
from packing to the end of ``optimizer.step``. Each strategy trains its own copy of the model
(same init). A round runs every batch of one epoch's plan (``epoch`` = round: new shuffles,
new noise and t, the same for both strategies); rounds alternate the order (dynamic first,
then naive first, ...) after two untimed warm-up steps each. Medians over rounds. One torch
thread by default (``--threads``): on the shared 2-core machine two OpenMP threads stall
whenever another process holds a core (the same round took 2 to 18 s in trials), one thread
gives stable ratios (a padded vs packed step of the same 6 samples: 1.84x, +-5%, at load 4.5).

Padding fractions (``trainer.batching.padding_fraction``): dynamic ``budget`` (unused token
budget, as if every step were padded to T -- the packed model never computes it) and naive
``padded`` (B x longest); both over ``lengths``, and again with the model's own segment pads
counted as padding (``real_lengths`` = unpadded image + caption tokens). The timed rounds are
small epochs, where the last partly filled batch weighs a lot (N tokens / T budgets round up);
the headline ``padding_fraction`` is therefore that of one epoch of ``--epoch-samples`` (20,000)
samples of the same mix, lengths only (the timed rounds' figure is ``padding_fraction_timed``).
``rows/round``: rows the main stack actually computed. The machine may be shared: the JSON line
carries the load averages and ``other_cpu_frac`` (see bench/model_step.py). The last line is
JSON; the goal (the issue) is ``padding_fraction`` <= 0.05 and ``speedup_vs_naive`` >= 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.model_step import cpu_busy, other_cpu_fraction  # noqa: E402
from model import S3DiT, patchify  # noqa: E402
from model.packing import padded  # noqa: E402
from model.presets import PRESETS  # noqa: E402
from trainer.batching import (  # noqa: E402
    batch_stats,
    flatten,
    length_aware_batches,
    naive_batches,
    padding_fraction,
)
from trainer.buckets import resolution_for  # noqa: E402

ASPECTS = [(1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16)]
ASPECT_P = [0.3, 0.15, 0.15, 0.1, 0.1, 0.1, 0.1]
CAPTION_TOKENS = (20, 120)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
STRATEGIES = ("dynamic", "naive")
LAYOUT = {"dynamic": "budget", "naive": "padded"}  # padding_fraction's layout per strategy


@dataclass(frozen=True, kw_only=True)
class Sample:
    x1: Tensor  # (16, 1, H/8, W/8) clean latent
    cap: Tensor  # (L, cap_feat_dim)
    image_tokens: int


def sample_shapes(n: int, *, quick: bool, seed: int) -> list[tuple[tuple[int, int], int]]:
    """((W, H), caption tokens) of ``n`` samples of the mix in the module docstring."""
    rng = np.random.default_rng(seed)
    scale = 2 if quick else 1
    shapes = []
    for _ in range(n):
        short = float(np.exp(rng.uniform(np.log(128 / scale), np.log(2048 / scale))))
        a, b = ASPECTS[rng.choice(len(ASPECTS), p=ASPECT_P)]
        w, h = (short * a / b, short) if a >= b else (short, short * b / a)
        size = resolution_for(
            round(w), round(h), min_tokens=64 // scale**2, max_tokens=4096 // scale**2
        )
        shapes.append((size, int(rng.integers(CAPTION_TOKENS[0], CAPTION_TOKENS[1] + 1))))
    return shapes


def model_tokens(shapes: list[tuple[tuple[int, int], int]]) -> np.ndarray:
    """Rows the packed model computes per sample: padded(image) + padded(caption tokens)."""
    return np.array([padded(w * h // 256) + padded(n_cap) for (w, h), n_cap in shapes])


def make_samples(shapes, *, cap_dim: int, seed: int) -> list[Sample]:
    """Random clean latents and caption features of the given shapes."""
    gen = torch.Generator().manual_seed(seed)
    return [
        Sample(
            x1=torch.randn(16, 1, h // 8, w // 8, generator=gen),
            cap=torch.randn(n_cap, cap_dim, generator=gen),
            image_tokens=w * h // 256,
        )
        for (w, h), n_cap in shapes
    ]


def flow_inputs(samples: list[Sample], seed: int, device, dtype) -> list[tuple]:
    """Per sample (x_t, t, v tokens) for one round: x_t = t x1 + (1 - t) x0, v = x1 - x0."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in samples:
        t = float(torch.rand(1, generator=gen))
        x0 = torch.randn(s.x1.shape, generator=gen)
        x_t = t * s.x1 + (1 - t) * x0
        out.append((x_t.to(device, dtype), t, patchify(s.x1 - x0, 2, 1).to(device)))
    return out


def train_step(model, opt, batch: np.ndarray, samples, inputs, pad: bool, device) -> tuple:
    """pack -> forward -> per-image MSE -> backward -> AdamW; -> (seconds, main-stack rows)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    x = [inputs[i][0] for i in batch]
    t = torch.tensor([inputs[i][1] for i in batch], device=device)
    caps = [samples[i].cap for i in batch]
    packed = model.pack(x, t, caps, pad_items_to="longest" if pad else None)
    pred = model.forward_packed(packed)  # (N_target, 64), items in order
    target = torch.cat([inputs[i][2] for i in batch])
    err = (pred.float() - target).pow(2).mean(-1)
    loss = torch.stack([e.mean() for e in err.split([len(inputs[i][2]) for i in batch])]).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, len(packed.unified_index)


def plans(lengths: np.ndarray, args, batch_size: int, epoch: int) -> dict[str, list]:
    dynamic = length_aware_batches(
        lengths, token_budget=args.token_budget, seed=args.seed, epoch=epoch
    )
    naive = naive_batches(lengths, batch_size=batch_size, seed=args.seed, epoch=epoch)
    return {"dynamic": dynamic, "naive": naive}


def epoch_padding(args, batch_size: int) -> dict[str, float]:
    """Padding fractions of one epoch of ``--epoch-samples`` samples of the same mix (shapes
    only, nothing trained): the steady state, without the tail of the small timed epochs."""
    shapes = sample_shapes(args.epoch_samples, quick=args.quick, seed=args.seed + 1)
    lengths = model_tokens(shapes)
    real = np.array([w * h // 256 + n_cap for (w, h), n_cap in shapes])
    plan = plans(lengths, args, batch_size, epoch=0)
    out = {}
    for name, layout in LAYOUT.items():
        kw = {"layout": layout, "token_budget": args.token_budget}
        out[name] = padding_fraction(plan[name], lengths, **kw)
        out[name + "_with_segment_pads"] = padding_fraction(
            plan[name], lengths, **kw, real_lengths=real
        )
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="debug")
    ap.add_argument("--quick", action="store_true", help="sides halved, 48 samples, 3 rounds")
    ap.add_argument("--samples", type=int, help="per round (default 192, 48 with --quick)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epoch-samples", type=int, default=20000, help="for the epoch padding")
    ap.add_argument("--token-budget", type=int, help="T (default 16384, 4096 with --quick)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.samples = args.samples or (48 if args.quick else 192)
    args.token_budget = args.token_budget or (4096 if args.quick else 16384)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    load_start = os.getloadavg()
    cap_dim = PRESETS[args.preset]["cap_feat_dim"]
    shapes = sample_shapes(args.samples, quick=args.quick, seed=args.seed)
    batch_size = max(1, round(args.token_budget / model_tokens(shapes).mean()))
    shapes = shapes[: len(shapes) // batch_size * batch_size]  # both process every sample
    samples, lengths = make_samples(shapes, cap_dim=cap_dim, seed=args.seed), model_tokens(shapes)
    samples = [replace(s, cap=s.cap.to(device, dtype)) for s in samples]
    real = np.array([s.image_tokens + len(s.cap) for s in samples])
    models, opts = {}, {}
    for name in STRATEGIES:
        torch.manual_seed(args.seed)
        models[name] = S3DiT.from_preset(args.preset).train()
        if (device.type, dtype) != ("cpu", torch.float32):
            models[name].to(device, dtype)
        opts[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4)
    hist = np.bincount(np.minimum(lengths * 4 // lengths.max(), 3), minlength=4).tolist()
    print(
        f"preset {args.preset}, {device} {args.dtype}, {args.threads} threads; {len(samples)} "
        f"samples, tokens per sample {lengths.min()}..{lengths.max()} (mean {lengths.mean():.0f},"
        f" per quarter of the max {hist}); budget {args.token_budget}, naive batch {batch_size}"
    )
    warm = plans(lengths, args, batch_size, epoch=args.rounds)  # an epoch no round uses
    inputs = flow_inputs(samples, args.seed + 10_000, device, dtype)
    for name in STRATEGIES:
        for batch in flatten(warm[name])[:2]:
            train_step(models[name], opts[name], batch, samples, inputs, name == "naive", device)

    runs = {k: {"s": [], "rows": [], "steps": [], "pad": [], "pad_seg": []} for k in STRATEGIES}
    load_timed, busy = os.getloadavg(), cpu_busy()
    for r in range(args.rounds):
        inputs = flow_inputs(samples, args.seed + r, device, dtype)
        plan = plans(lengths, args, batch_size, epoch=r)
        for name in STRATEGIES if r % 2 == 0 else STRATEGIES[::-1]:
            kw = {"layout": LAYOUT[name], "token_budget": args.token_budget}
            stats = batch_stats(plan[name], lengths, **kw)
            assert stats.samples == len(samples), (name, stats)
            run = runs[name]
            run["steps"].append(stats.batches)
            run["pad"].append(stats.padding_fraction)
            run["pad_seg"].append(padding_fraction(plan[name], lengths, **kw, real_lengths=real))
            steps = [
                train_step(models[name], opts[name], b, samples, inputs, name == "naive", device)
                for b in flatten(plan[name])
            ]
            run["s"].append(sum(seconds for seconds, _ in steps))
            run["rows"].append(sum(rows for _, rows in steps))
            print(f"  round {r} {name:7s} {stats.batches:3d} steps {run['s'][-1]:7.2f} s")
    other_cpu = other_cpu_fraction(busy, cpu_busy())
    loads = {"start": load_start, "timed": load_timed, "end": os.getloadavg()}
    print(json.dumps(report(args, lengths, batch_size, runs, other_cpu, loads)))


def report(args, lengths, batch_size, runs, other_cpu, loads) -> dict:
    """Print the table; -> the JSON summary."""
    n, tokens = len(lengths), int(lengths.sum())
    epoch = epoch_padding(args, batch_size)
    print(
        f"\n{'':8s} {'steps':>5s} {'batch':>6s} {'rows/round':>10s} {'pad':>6s} {'pad+seg':>7s} "
        f"{'epoch pad':>9s} {'median s':>9s} {'samples/s':>9s} {'tokens/s':>9s}"
    )
    figures = {}
    for k, run in runs.items():
        med, steps = statistics.median(run["s"]), statistics.median(run["steps"])
        figures[k] = {
            "samples_per_s": round(n / med, 2),
            "tokens_per_s": round(tokens / med),
            "median_round_s": round(med, 3),
            "round_s": [round(x, 3) for x in run["s"]],
            "steps_per_round": steps,
            "mean_batch_size": round(n / steps, 2),
            "main_stack_rows_per_round": int(statistics.median(run["rows"])),
            "padding_fraction_timed": round(statistics.mean(run["pad"]), 4),
            "padding_fraction_timed_with_segment_pads": round(statistics.mean(run["pad_seg"]), 4),
            "padding_fraction_epoch": round(epoch[k], 4),
            "padding_fraction_epoch_with_segment_pads": round(epoch[k + "_with_segment_pads"], 4),
        }
        rows, pad, seg = (
            figures[k][key]
            for key in ("main_stack_rows_per_round", "padding_fraction_timed",
                        "padding_fraction_timed_with_segment_pads")
        )  # fmt: skip
        print(
            f"{k:8s} {steps:5.0f} {n / steps:6.1f} {rows:10d} {pad:6.1%} {seg:7.1%} "
            f"{epoch[k]:9.1%} {med:9.2f} {n / med:9.2f} {tokens / med:9.0f}"
        )
    speedup = figures["dynamic"]["samples_per_s"] / figures["naive"]["samples_per_s"]
    pad = figures["dynamic"]["padding_fraction_epoch"]
    goal = pad <= 0.05 and speedup >= 1.5
    print(
        f"speedup_vs_naive {speedup:.2f} (samples/s); dynamic padding {pad:.1%} of the budget "
        f"over a {args.epoch_samples}-sample epoch; goal (<= 5%, >= 1.5x) "
        f"{'met' if goal else 'NOT met'}; other processes used {other_cpu} of the CPUs"
    )
    return {
        "bench": "train_throughput",
        **{k: getattr(args, k) for k in ("preset", "quick", "dtype", "threads", "rounds")},
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "samples_per_round": n,
        "token_budget": args.token_budget,
        "naive_batch_size": batch_size,
        "tokens_per_sample": {
            "min": int(lengths.min()),
            "mean": round(float(lengths.mean()), 1),
            "max": int(lengths.max()),
        },
        "padding_fraction": pad,
        "padding_fraction_timed": figures["dynamic"]["padding_fraction_timed"],
        "padding_fraction_naive": figures["naive"]["padding_fraction_epoch"],
        "epoch_samples": args.epoch_samples,
        "speedup_vs_naive": round(speedup, 3),
        "goal_met": goal,
        **figures,
        **{f"load_avg_{k}": [round(x, 2) for x in v] for k, v in loads.items()},
        "other_cpu_frac": other_cpu,
    }


if __name__ == "__main__":
    main()
