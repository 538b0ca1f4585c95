"""Profiling throughput against its physical floor, side by side in one run.

    python bench/profile_throughput.py            # 1,000 photos of ~1 MP, 3 rounds
    python bench/profile_throughput.py --quick    # 160 photos, 1 round, < 1 minute

Photos are derived from the COCO photos in ../shared/data/coco-mini (or the bundled
examples/data/coco25): crops and flips resized to 1155x866 (1.0 MP), JPEG quality 90, cached
under --work. Measured, images/s:

  (a) decode only (Pillow, in memory, one process)
  (b) decode + one full-resolution JPEG re-encode at the profile's quality: the floor cost
  (c) zfoundry's profile step in-process (local executor: Parquet in and out, every metric)
  (d) the same step on the Ray Data executor with 2 CPUs (Ray started and its workers warmed
      by an 8-photo job first; that cold start is reported separately)

(a)-(c) alternate over rounds and the best round counts. The last line is JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.ingest import Source  # noqa: E402
from curation.stages.profile import ProfileStage  # noqa: E402
from infra.storage import RunDir  # noqa: E402
from pipelines.config import IngestConfig  # noqa: E402
from pipelines.executors import get_executor  # noqa: E402
from pipelines.steps import ingest  # noqa: E402

SIZE = (1155, 866)


def source_photos() -> list[Path]:
    for folder in (REPO.parent / "shared/data/coco-mini/images", REPO / "examples/data/coco25"):
        photos = sorted(folder.glob("*.jpg"))
        if photos:
            return photos
    raise SystemExit("no source photos found")


def make_photos(n: int, out: Path) -> list[Path]:
    """n distinct ~1 MP JPEGs (cached): photo i % k, crop and flip chosen by i // k."""
    out.mkdir(parents=True, exist_ok=True)
    src = source_photos()
    paths = []
    for i in range(n):
        path = out / f"{i:05d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        im = ImageOps.exif_transpose(Image.open(src[i % len(src)])).convert("RGB")
        variant = i // len(src)
        w, h = im.size
        dx, dy = (variant % 3) * w // 20, (variant // 3 % 3) * h // 20
        im = im.crop((dx, dy, w - w // 10 + dx, h - h // 10 + dy)).resize(SIZE, Image.LANCZOS)
        if variant % 2:
            im = ImageOps.mirror(im)
        im.save(path, "JPEG", quality=90)
    return paths


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def time_decode(datas: list[bytes], reencode_quality: int | None) -> float:
    t0 = time.perf_counter()
    for data in datas:
        im = Image.open(io.BytesIO(data))
        im.load()
        if reencode_quality is not None:
            im.save(io.BytesIO(), "JPEG", quality=reencode_quality)
    return rate(len(datas), time.perf_counter() - t0)


def fresh_profile(run: RunDir) -> None:
    for name in ("profiles", "rejects", "stats"):
        shutil.rmtree(Path(run.root) / name, ignore_errors=True)


def time_profile(run: RunDir, executor, stage: ProfileStage) -> float:
    fresh_profile(run)
    stats = executor.run_stage(stage, run)
    assert stats["ok"] == stats["in"], stats
    return rate(stats["in"], stats["wall_seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="photos (default 1000)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of (a)-(c)")
    ap.add_argument("--rows-per-shard", type=int, default=32)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zfoundry-bench"))
    ap.add_argument("--quick", action="store_true", help="160 photos, 1 round")
    ap.add_argument("--no-ray", action="store_true", help="skip (d)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.rounds = 160, 1

    t0 = time.perf_counter()
    photos = make_photos(args.n, args.work / "photos-1mp")
    pool = args.work / f"pool-{args.n}"
    if not pool.exists():  # a folder of exactly n photos
        pool.mkdir(parents=True)
        for p in photos:
            os.link(p, pool / p.name)
    datas = [p.read_bytes() for p in photos]
    run = RunDir(args.work / f"run-{args.n}-{args.rows_per_shard}")
    if not Path(run.root, "samples", "_SUCCESS.json").exists():
        cfg = IngestConfig(
            sources=[Source(path=pool, name="bench")], rows_per_shard=args.rows_per_shard
        )
        ingest(run, cfg, progress=False)
    print(
        f"prepared {len(datas)} photos of {SIZE[0]}x{SIZE[1]} in {time.perf_counter() - t0:.1f} s"
    )

    stage = ProfileStage()
    local = get_executor("local", progress=False)
    stage.setup()
    ProfileStage().profile_one("warm", "", datas[0])  # imports + numba kernel, not timed
    results: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    for r in range(args.rounds):
        results["a"].append(time_decode(datas, None))
        results["b"].append(time_decode(datas, stage.jpeg_quality))
        results["c"].append(time_profile(run, local, stage))
        print(f"round {r + 1}: " + "  ".join(f"({k}) {v[-1]:.1f}/s" for k, v in results.items()))
    best = {k: max(v) for k, v in results.items()}

    cold = None
    if not args.no_ray:
        from pipelines.executors.ray_data import ensure_ray

        ray_ex = get_executor("ray", num_cpus=2, progress=False)
        t1 = time.perf_counter()
        ensure_ray(num_cpus=2)
        warm_pool = args.work / "pool-warmup"  # 8 photos: enough to start both workers
        if not warm_pool.exists():
            warm_pool.mkdir(parents=True)
            for p in photos[:8]:
                os.link(p, warm_pool / p.name)
        warm_run = RunDir(args.work / "run-warmup")
        if not Path(warm_run.root, "samples", "_SUCCESS.json").exists():
            cfg = IngestConfig(sources=[Source(path=warm_pool, name="warm")], rows_per_shard=4)
            ingest(warm_run, cfg, progress=False)
        fresh_profile(warm_run)
        ray_ex.run_stage(stage, warm_run)  # starts and warms the worker processes
        cold = time.perf_counter() - t1
        best["d"] = time_profile(run, ray_ex, stage)

    labels = {
        "a": "decode only",
        "b": "decode + JPEG re-encode (floor)",
        "c": "zfoundry profile, in-process",
        "d": "zfoundry profile, Ray Data, 2 CPUs",
    }
    print(f"\n{'':4}{'measurement':40}{'images/s':>10}{'ms/image':>10}")
    for k, v in best.items():
        print(f"({k}) {labels[k]:40}{v:10.1f}{1000 / v:10.2f}")
    if cold is not None:
        print(f"Ray cold start (ray.init + a first 8-photo job): {cold:.1f} s (not in (d))")
    summary = {
        "bench": "profile_throughput",
        "n": len(datas),
        "megapixels": round(SIZE[0] * SIZE[1] / 1e6, 2),
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "decode_per_s": round(best["a"], 1),
        "decode_reencode_per_s": round(best["b"], 1),
        "profile_inprocess_per_s": round(best["c"], 1),
        "profile_ray_per_s": round(best["d"], 1) if "d" in best else None,
        "profile_vs_floor": round(best["c"] / best["b"], 3),
        "ray_vs_inprocess": round(best["d"] / best["c"], 3) if "d" in best else None,
        "ray_cold_start_s": round(cold, 1) if cold is not None else None,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
