"""Varlen attention backends side by side (``model.attention.varlen_attention``), forward only.

    python bench/attention.py              # 7 alternating repeats, CPU fp32
    python bench/attention.py --quick      # 3 repeats
    python bench/attention.py --device cuda --dtype bf16   # adds the flash backend

One (total, heads, head_dim) pack of three sequences (1056 + 544 + 352 tokens), at the debug
preset's heads (2 x 32) and the mid / 6B presets' head size (8 x 128). Each backend runs once
untimed (block masks, caches, compilation), then the backends alternate for ``--repeats``
rounds; the median is reported. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.attention import BACKENDS, varlen_attention  # noqa: E402

LENGTHS = [1056, 544, 352]
SHAPES = [(2, 32), (8, 128)]  # (heads, head_dim)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.set_num_threads(2)
    half_cuda = device.type == "cuda" and dtype != torch.float32
    backends = [b for b in BACKENDS if b != "flash" or half_cuda]
    cu = torch.tensor([0, *LENGTHS]).cumsum(0).to(torch.int32).to(device)
    load = os.getloadavg()

    def timed(backend: str, q, k, v) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        varlen_attention(q, k, v, cu, max(LENGTHS), backend)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    figures = {}
    for heads, head_dim in SHAPES:
        q, k, v = (
            torch.randn(sum(LENGTHS), heads, head_dim, device=device, dtype=dtype) for _ in "qkv"
        )
        times: dict[str, list[float]] = {b: [] for b in backends}
        for b in backends:
            timed(b, q, k, v)  # warm-up (block mask, caches, compilation)
        for _ in range(repeats):
            for b in backends:
                times[b].append(timed(b, q, k, v))
        for b in backends:
            ms = round(1e3 * statistics.median(times[b]), 1)
            figures[f"{b}_{heads}x{head_dim}_ms"] = ms
            print(f"heads {heads}x{head_dim:<4d} {b:10s} {ms:7.1f} ms")
    summary = {"bench": "varlen_attention", "device": args.device, "dtype": args.dtype}
    summary |= {"lengths": LENGTHS, "repeats": repeats, **figures}
    print(json.dumps({**summary, "load_avg": [round(x, 2) for x in load]}))


if __name__ == "__main__":
    main()
