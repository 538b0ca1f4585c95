"""Learning benchmark: how well the trained debug S3-DiT draws held-out caption combinations.

    python bench/learning.py            # 1000 steps, budget 2048, lr 1e-3 (~3 min on 2 cores)
    python bench/learning.py --quick    # the test's setting: 500 steps, budget 4096, lr 2e-3

The long version of ``tests/trainer/test_learning.py``: the synthetic shapes data set
(``trainer.synthetic``: 6 colours x 3 shapes x 4 positions on 3 backgrounds, 64x64 and 96x64,
plus recolouring i2i pairs) goes through ingest -> profile -> edit pairs -> select, the local
trainer trains the ``debug`` preset in the identity (``pixel``) latent space with a tiny random
Qwen3 text encoder, and ``ZFoundryPipeline`` samples one image per held-out (colour, shape,
position, background, size) combination: 20 Euler steps, CFG 2, empty negative prompt. The
checker reads colour and position from the pixels. The same is done with the untrained
initialisation. Ends with a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from model import S3DiT  # noqa: E402
from tests.trainer.conftest import make_toy, stage  # noqa: E402
from tests.trainer.test_learning import BUDGET, LR, STEPS, generate  # noqa: E402
from trainer.synthetic import CHANCE_COLOUR, CHANCE_POSITION, accuracy  # noqa: E402
from trainer.trainer import Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--images", type=int, default=400, help="scenes (+ 1/4 as many pairs)")
    parser.add_argument("--budget", type=int, default=2048, help="tokens per batch")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the test's setting")
    parser.add_argument("--keep", type=Path, help="keep the run here (else a temp folder)")
    args = parser.parse_args()
    if args.quick:  # tests/trainer/test_learning.py
        args.steps, args.budget, args.lr, args.schedule = STEPS, BUDGET, LR, "constant"
    steps = args.steps
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        toy = make_toy(root / "data", n=args.images, seed=args.seed)
        curate_s = time.perf_counter() - t0
        config = stage(toy, root / "out", steps=steps, log_every=50, seed=args.seed,
                       data={"token_budget": args.budget},
                       optim={"lr": args.lr, "warmup_steps": 20,
                              "schedule": args.schedule})  # fmt: skip
        t0 = time.perf_counter()
        summary = Trainer(config).fit(progress=True)
        train_s = time.perf_counter() - t0
        images, specs = generate(toy.pipeline, root / "out" / "final" / "transformer",
                                 toy.info.heldout)  # fmt: skip
        trained = accuracy(images, specs)
        torch.manual_seed(config.seed)
        S3DiT.from_preset("debug", cap_feat_dim=32, in_channels=3).save_pretrained(root / "init")
        untrained = accuracy(*generate(toy.pipeline, root / "init", toy.info.heldout))
    print(f"curation {curate_s:.1f} s, training {steps} steps {train_s:.1f} s "
          f"({summary['samples_per_s']:.0f} samples/s at the end), "
          f"final loss {summary['loss']:.4f}")  # fmt: skip
    print(f"{'model':>10s} {'colour':>8s} {'position':>9s}   (held-out combinations: "
          f"{trained['n']}; chance {CHANCE_COLOUR:.3f} / {CHANCE_POSITION:.3f})")  # fmt: skip
    for name, acc in (("trained", trained), ("untrained", untrained)):
        print(f"{name:>10s} {acc['colour']:8.3f} {acc['position']:9.3f}")
    print(json.dumps({
        "bench": "learning", "steps": steps, "images": args.images, "seed": args.seed,
        "train_s": round(train_s, 1), "colour_accuracy": trained["colour"],
        "position_accuracy": trained["position"], "untrained_colour": untrained["colour"],
        "untrained_position": untrained["position"], "chance_colour": CHANCE_COLOUR,
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
