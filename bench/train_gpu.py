"""FSDP2 training steps of the S3-DiT on one GPU: tokens/s and MFU (issue 11, section 5).

    python bench/train_gpu.py                          # 6B width, 8 layers, 1024^2, bf16,
                                                       #   torch.compile + activation checkpointing
    python bench/train_gpu.py --layers 30              # the full 6B (H200: ~100 GB with AdamW)
    python bench/train_gpu.py --no-compile --no-checkpointing
    python bench/train_gpu.py --device cpu --preset debug --size 256 --steps 3 --warmup 1
                                                       # a smoke run of the script on CPU

The model is ``S3DiT.from_preset(--preset, n_layers=--layers)`` with fp32 master weights,
wrapped the way the trainer wraps it on CUDA (``trainer.trainer.apply_fsdp``: ``fully_shard``
per block, then the root, bf16 parameters, fp32 gradient reduction) over a one-rank NCCL
process group, then AdamW (fused on CUDA). A step is the trainer's: pack ``--batch`` samples of
``--size``^2 (random VAE-shaped latents, 16 x size/8 x size/8, and ``--caption-tokens`` random
caption features each), flow-matching loss, backward, gradient clipping, AdamW. The same shapes
every step, so ``torch.compile`` compiles once (during the ``--warmup`` steps, not timed).

MFU = model FLOPs of the timed steps (``trainer.flops.train_step_flops``: 3x the forward's
matmuls and attention, pads included) / time / the device's dense bf16 peak
(``trainer.flops.PEAK_BF16``). Prints one JSON line; nothing is written unless ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import S3DiT
from model.checkpointing import apply_activation_checkpointing, compile_blocks
from trainer.flops import peak_flops, train_step_flops
from trainer.flow import interpolate, per_sample_loss
from trainer.trainer import PackedForward, apply_fsdp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="z-image-6b")
    parser.add_argument("--layers", type=int, default=8, help="main-stack layers (n_layers)")
    parser.add_argument("--size", type=int, default=1024, help="square image side, pixels")
    parser.add_argument("--batch", type=int, default=2, help="samples per step")
    parser.add_argument("--caption-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        import torch.distributed as dist

        torch.cuda.set_device(device)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        dist.init_process_group("nccl", rank=0, world_size=1)
    torch.manual_seed(0)
    model = S3DiT.from_preset(args.preset, n_layers=args.layers).to(device)
    params = sum(p.numel() for p in model.parameters())
    if args.checkpointing:
        apply_activation_checkpointing(model)
    if args.compile:
        compile_blocks(model)
    root = PackedForward(model)
    if cuda:
        apply_fsdp(root, model, torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda or None)

    gen = torch.Generator().manual_seed(0)
    side = args.size // 8  # VAE latent side
    clean = [torch.randn(16, 1, side, side, generator=gen).to(device) for _ in range(args.batch)]
    caps = [torch.randn(args.caption_tokens, model.config.cap_feat_dim, generator=gen).to(device)
            for _ in range(args.batch)]  # fmt: skip

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        t = torch.rand(args.batch, generator=gen)
        noise = [torch.randn_like(z) for z in clean]
        pairs = [interpolate(z, n, float(ti)) for z, n, ti in zip(clean, noise, t, strict=True)]
        packed = model.pack([p[0] for p in pairs], t.to(device), caps)
        with torch.autocast(device.type, torch.bfloat16, enabled=cuda):
            out = root(packed)
        loss = per_sample_loss(model.unpack(packed, out.float()), [p[1] for p in pairs]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step.packed = packed
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    packed = step.packed
    flops = train_step_flops(model, packed) * args.steps
    tokens = int(packed.unified_index.numel()) * args.steps
    peak = peak_flops(device)
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "layers": args.layers,
        "params_b": params / 1e9,
        "size": args.size,
        "batch": args.batch,
        "tokens_per_step": tokens // args.steps,
        "compile": args.compile,
        "activation_checkpointing": args.checkpointing,
        "fsdp2": cuda,
        "step_s": seconds / args.steps,
        "tokens_per_s": tokens / seconds,
        "model_tflops_per_s": flops / seconds / 1e12,
        "peak_tflops": peak / 1e12 if peak else None,
        "mfu": flops / seconds / peak if peak else None,
        "max_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "last_loss": loss,
    }
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
