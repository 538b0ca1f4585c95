"""CLIP image-embedding throughput on this machine, with its decode floor, side by side.

    python bench/embed_throughput.py            # 256 photos of ~1 MP, tiny + ViT-B-32
    python bench/embed_throughput.py --quick    # 64 photos, < 1 minute

Measured in-process (the local executor, one torch thread as the stage uses), images/s:
  floor   decode + CLIP preprocessing only (no model)
  tiny    zfoundry's embed step with zf-tiny-clip (64-d, 64 px input)
  B-32    zfoundry's embed step with ViT-B-32 (random weights: same cost as trained ones)
Photos are the ~1 MP COCO-derived ones of bench/profile_throughput.py (made if missing).
The last line is JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from PIL import Image  # noqa: E402
from profile_throughput import make_photos  # noqa: E402

from curation.clip import load_clip  # noqa: E402
from curation.ingest import Source  # noqa: E402
from curation.stages.embed import EmbedImagesStage  # noqa: E402
from curation.stages.profile import ProfileStage  # noqa: E402
from infra.storage import RunDir  # noqa: E402
from pipelines.config import IngestConfig  # noqa: E402
from pipelines.executors import get_executor  # noqa: E402
from pipelines.steps import ingest  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zfoundry-bench"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 64 if args.quick else args.n

    import torch

    torch.set_num_threads(1)
    photos = make_photos(n, args.work / "photos-1mp")[:n]
    pool = args.work / f"embed-pool-{n}"
    if not pool.exists():
        pool.mkdir(parents=True)
        for p in photos:
            shutil.copy(p, pool / p.name)
    base = RunDir(args.work / f"embed-run-{n}")
    if not Path(base.root, "profiles", "_SUCCESS.json").exists():
        shutil.rmtree(base.root, ignore_errors=True)
        ingest(
            base,
            IngestConfig(sources=[Source(path=pool, name="b")], rows_per_shard=64),
            progress=False,
        )
        get_executor("local", progress=False).run_stage(ProfileStage(), base)

    clip = load_clip("zf-tiny-clip", None)
    datas = [p.read_bytes() for p in photos]
    t0 = time.perf_counter()
    for data in datas:
        clip.preprocess(Image.open(io.BytesIO(data)).convert("RGB"))
    floor = n / (time.perf_counter() - t0)

    rates = {"floor": floor}
    for label, model in (("tiny", "zf-tiny-clip"), ("B-32", "ViT-B-32")):
        stage = EmbedImagesStage(model=model, batch_rows=32)
        stage.setup()  # model load and imports are not timed
        shutil.rmtree(Path(base.root, "vectors"), ignore_errors=True)
        stats = get_executor("local", progress=False).run_stage(stage, base)
        rates[label] = stats["rows_run"] / stats["wall_seconds"]
        print(f"{label}: {rates[label]:.1f} images/s")

    print(f"\n{'':8}{'images/s':>10}{'ms/image':>10}")
    for k, v in rates.items():
        print(f"{k:8}{v:10.1f}{1000 / v:10.2f}")
    print(
        json.dumps(
            {
                "bench": "embed_throughput",
                "n": n,
                "device": "cpu",
                "threads": 1,
                "floor_decode_preprocess_per_s": round(floor, 1),
                "tiny_per_s": round(rates["tiny"], 1),
                "vit_b32_per_s": round(rates["B-32"], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
