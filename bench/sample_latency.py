"""Sampling latency: ``ZFoundryPipeline`` (S3-DiT, packed CFG batch, ``model.sampler``) vs
diffusers' ``ZImagePipeline`` with the reference ``ZImageTransformer2DModel``, same weights.

    python bench/sample_latency.py                  # CPU: debug (512^2) and mid (256^2) presets
    python bench/sample_latency.py --quick          # debug preset, 256^2, 2 repeats (< 1 min)
    python bench/sample_latency.py --device cuda --preset z-image-6b --dtype bf16 \\
        --size 1024x1024 [--compile]

What is timed: the denoising loop of one call, 8 Euler steps, batch of one image, with and
without CFG (guidance 4, an empty-ish negative prompt). Both pipelines get the same caption
features (``prompt_embeds``: random (77, cap_dim) and (12, cap_dim) tensors; the text encoder
and the VAE would run identically in both, so they are left out, ``output="latent"``), the same
seeds, scheduler (static shift 3, Turbo's) and transformer weights (the preset's config, every
parameter drawn from a seeded normal and loaded into both models). Ours includes packing the
batch (once per call) and the per-step patch writes; the reference includes its per-step
patchify / padding. After one warm-up call each, the two alternate (ref, ours, ...) for
``--repeats`` rounds; medians are reported with ``ours / ref`` (goal: <= 1 on CPU). The final
latents of the two are compared as a sanity check (``max_abs_diff``).

``--compile`` compiles every transformer block of both models (``torch.compile``; ours through
``model.checkpointing.compile_blocks``). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model import S3DiT  # noqa: E402
from model.checkpointing import compile_blocks  # noqa: E402
from model.pipeline import ZFoundryPipeline  # noqa: E402
from model.presets import PRESETS  # noqa: E402
from model.sampler import FlowSchedule  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CPU_RUNS = [("debug", "512x512"), ("mid", "256x256")]
STEPS, GUIDANCE, CAPTION, NEGATIVE = 8, 4.0, 77, 12


def randomize(module: nn.Module, seed: int = 0) -> None:
    """Seeded normal weights (fan-in scaled matrices, norms near 1), the same for both models."""
    device = next(module.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32)
            if p.ndim == 2 and "pad_token" not in name:
                noise /= math.sqrt(p.shape[1])
            elif "norm" in name or name.startswith(("cap_embedder.0", "siglip_embedder.0")):
                noise = 1.0 + 0.1 * noise
            elif "pad_token" not in name:
                noise *= 0.1
            p.copy_(noise)


def build(preset: str, device: str, dtype: torch.dtype, compile_: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    config = PRESETS[preset]
    with torch.device(device):
        ref = ZImageTransformer2DModel(**config).to(dtype).eval()
        randomize(ref)
        ours = S3DiT(**config).to(dtype).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    if compile_:
        compile_blocks(ours)
        for blocks in (ref.noise_refiner, ref.context_refiner, ref.layers):
            for block in blocks:
                block.compile()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    reference = ZImagePipeline(
        scheduler, vae=None, text_encoder=None, tokenizer=None, transformer=ref
    )
    reference.set_progress_bar_config(disable=True)
    return reference, ZFoundryPipeline(ours, FlowSchedule.from_config(dict(scheduler.config)))


def run_pair(reference, ours, size: str, guidance: float, device: str, dtype: torch.dtype):
    """Two closures (ref, ours) that each run one sampling call and return its latents."""
    width, height = (int(v) for v in size.split("x"))
    cap_dim = ours.transformer.config.cap_feat_dim
    gen = torch.Generator().manual_seed(1)
    embeds = [torch.randn(CAPTION, cap_dim, generator=gen).to(device, dtype)]
    negative = [torch.randn(NEGATIVE, cap_dim, generator=gen).to(device, dtype)]
    cfg = {"negative_prompt_embeds": negative} if guidance > 0 else {}
    common = {"height": height, "width": width}

    def ref_call():
        return reference(prompt_embeds=embeds, num_inference_steps=STEPS, guidance_scale=guidance,
                         generator=[torch.Generator().manual_seed(0)], output_type="latent",
                         **cfg, **common).images  # fmt: skip

    def our_call():
        return ours(prompt_embeds=embeds, steps=STEPS, guidance=guidance, seed=0,
                    output="latent", progress=False, **cfg, **common).latents  # fmt: skip

    return ref_call, our_call


def timed(fn, device: str) -> tuple[float, torch.Tensor]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def measure(args, preset: str, size: str) -> list[dict]:
    reference, ours = build(preset, args.device, DTYPES[args.dtype], args.compile)
    rows = []
    for guidance in (0.0, GUIDANCE):
        ref_call, our_call = run_pair(
            reference, ours, size, guidance, args.device, DTYPES[args.dtype]
        )
        with torch.no_grad():
            _, ref_out = timed(ref_call, args.device)  # warm-up (and compile) calls
            _, our_out = timed(our_call, args.device)
            times = {"ref": [], "ours": []}
            for _ in range(args.repeats):
                times["ref"].append(timed(ref_call, args.device)[0])
                times["ours"].append(timed(our_call, args.device)[0])
        ref_s, our_s = statistics.median(times["ref"]), statistics.median(times["ours"])
        row = {
            "preset": preset,
            "size": size,
            "cfg": guidance,
            "ref_s": round(ref_s, 3),
            "ours_s": round(our_s, 3),
            "ratio": round(our_s / ref_s, 3),
            "max_abs_diff": float((our_out.float() - ref_out.float()).abs().max()),
        }
        print(
            f"{preset:>10s} {size:>9s} cfg {guidance:3.1f}   ref {ref_s:8.3f} s   "
            f"ours {our_s:8.3f} s   ours/ref {row['ratio']:.3f}   "
            f"max|diff| {row['max_abs_diff']:.1e}",
            flush=True,
        )
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="one preset (default: CPU set)")
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT (with --preset)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--quick", action="store_true", help="debug preset, 256^2, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        runs, args.repeats = [("debug", "256x256")], 2
    elif args.preset:
        runs = [(args.preset, args.size or "1024x1024")]
    else:
        runs = CPU_RUNS
    load_before = os.getloadavg()
    print(f"device {args.device}, {args.dtype}, {STEPS} steps, batch 1, torch {torch.__version__},"
          f" {torch.get_num_threads()} threads, load {load_before}")  # fmt: skip
    rows = [row for preset, size in runs for row in measure(args, preset, size)]
    summary = {
        "bench": "sample_latency",
        "device": args.device,
        "dtype": args.dtype,
        "steps": STEPS,
        "compile": args.compile,
        "runs": rows,
        "max_ratio": max(r["ratio"] for r in rows),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
