"""Semantic dedup at scale on planted data: kNN + Leiden vs the exact range baseline and SemDeDup.

    python bench/dedup.py --n 100000            # one size
    python bench/dedup.py --n 100000 1000000    # several
    python bench/dedup.py --quick               # 20k, < 1 minute
    python bench/dedup.py --n 100000 --dup-noise 0.2      # looser copies (cosine ~0.96)
    python bench/dedup.py --augment /path/photos          # real photos' augmentations
    python bench/dedup.py --n 1000000 --executor ray      # k-NN shards as Ray tasks

Data: N L2-normalised 512-d vectors around 2,000 semantic centres; 30% of items belong to
planted duplicate groups of 2-5 near-identical copies (cosine ~0.995), the rest are singletons.
Each method runs as the real `dedup` step on a run directory (vectors/ written as a foreign
tool would). Reported per N: phase seconds, items/s end to end, pairwise F1 vs the planted
truth and vs the exact range baseline (run up to --range-max N). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.dedup.graph import pair_scores  # noqa: E402
from curation.dedup.run import DedupConfig, dedup  # noqa: E402
from infra.storage import RunDir  # noqa: E402
from infra.tables import conform, vectors_schema, vectors_table  # noqa: E402


def planted(
    n: int, d: int = 512, seed: int = 0, dup_noise: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    n_dup_items = int(0.3 * n)
    sizes = rng.integers(2, 6, size=n_dup_items // 2)
    sizes = sizes[np.cumsum(sizes) <= n_dup_items]
    n_groups = len(sizes) + (n - int(sizes.sum()))
    truth = np.repeat(np.arange(n_groups), np.concatenate([sizes, np.ones(n - sizes.sum(), int)]))
    base = centres[rng.integers(0, len(centres), n_groups)]
    base = base + rng.standard_normal((n_groups, d), dtype=np.float32) * (0.9 / np.sqrt(d))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    x = base[truth] + rng.standard_normal((n, d), dtype=np.float32) * (dup_noise / np.sqrt(d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), truth


def augmented(
    folders: list[Path], per_photo: int, model: str, pretrained: str | None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of real photos and ``per_photo`` augmentations of each (random crop to
    70-95%, resize to 40-90% and back, colour jitter +-25%, JPEG re-encode at quality 20-70),
    from the embedder; truth = the source photo."""
    import io

    import torch
    from PIL import Image, ImageEnhance

    from curation.clip import load_clip

    rng = np.random.default_rng(seed)
    clip = load_clip(model, pretrained)
    photos = sorted(p for f in folders for p in f.glob("*.jpg"))
    vectors, truth = [], []
    for g, path in enumerate(photos):
        image = Image.open(path).convert("RGB")
        variants = [image]
        for _ in range(per_photo):
            w, h = image.size
            f = rng.uniform(0.7, 0.95)
            cw, ch = int(w * f), int(h * f)
            x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            v = image.crop((x0, y0, x0 + cw, y0 + ch))
            r = rng.uniform(0.4, 0.9)
            v = v.resize((max(8, int(cw * r)), max(8, int(ch * r)))).resize((cw, ch))
            for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                v = enhance(v).enhance(rng.uniform(0.75, 1.25))
            buf = io.BytesIO()
            v.save(buf, "JPEG", quality=int(rng.integers(20, 71)))
            variants.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        with torch.inference_mode():
            emb = clip.model.encode_image(torch.stack([clip.preprocess(v) for v in variants]))
        emb = emb.float().numpy()
        vectors.append(emb / np.linalg.norm(emb, axis=1, keepdims=True))
        truth += [g] * len(variants)
    return np.concatenate(vectors).astype(np.float32), np.asarray(truth)


def write_vectors(root: Path, x: np.ndarray) -> list[str]:
    shutil.rmtree(root, ignore_errors=True)
    (root / "vectors").mkdir(parents=True)
    ids = [f"{i:09d}" for i in range(len(x))]
    table = conform(
        vectors_table(ids, "bench", x.astype(np.float16)),
        vectors_schema(x.shape[1]),
        name="vectors",
    )
    pq.write_table(table, root / "vectors" / "part-0.parquet")
    return ids


def run_method(
    root: Path, ids: list[str], method: str, k: int, threshold: float, task_map
) -> tuple[dict, np.ndarray]:
    for t in ("dedup", "knn_edges", "stats", "_index"):
        shutil.rmtree(root / t, ignore_errors=True)
    cfg = DedupConfig(method=method, k=k, threshold=threshold, cluster_threshold=threshold)
    t0 = time.perf_counter()
    stats = dedup(RunDir(root), cfg, task_map=task_map)
    wall = time.perf_counter() - t0
    table = pq.read_table(root / "dedup", columns=["sample_id", "community"])
    pos = {s: i for i, s in enumerate(table.column("sample_id").to_pylist())}
    community = table.column("community").to_numpy()
    labels = np.array([community[pos[s]] for s in ids])
    return stats | {"wall": wall}, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100_000])
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--range-max", type=int, default=200_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zfoundry-bench/dedup"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--dup-noise",
        type=float,
        default=0.1,
        help="spread of planted copies (0.1: cosine ~0.99 between copies; 0.2: ~0.96)",
    )
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--executor", choices=["local", "ray"], default="local")
    ap.add_argument(
        "--augment",
        type=Path,
        nargs="*",
        default=None,
        help="instead of planted data: photo folders, each photo plus --per-photo augmentations",
    )
    ap.add_argument("--per-photo", type=int, default=10)
    ap.add_argument("--model", default="zf-tiny-clip")
    ap.add_argument("--pretrained", default=None, help="checkpoint of --model (hub id or path)")
    args = ap.parse_args()
    from pipelines.executors import get_executor

    task_map = get_executor(args.executor, progress=False).map_tasks
    sizes = [20_000] if args.quick else args.n
    if args.augment is not None:
        folders = args.augment or [REPO / "examples" / "data" / "coco25"]
        x_aug, truth_aug = augmented(folders, args.per_photo, args.model, args.pretrained)
        sizes = [len(x_aug)]
    summary = {}
    for n in sizes:
        if args.augment is not None:
            x, truth = x_aug, truth_aug
            sims = x @ x.T
            same = truth[:, None] == truth[None, :]
            off = ~np.eye(len(x), dtype=bool)
            print(
                f"augmented: {len(set(truth.tolist()))} photos, {n} vectors; cosine within a "
                f"photo: p5 {np.percentile(sims[same & off], 5):.3f} median "
                f"{np.median(sims[same & off]):.3f}; across photos: p99 "
                f"{np.percentile(sims[~same], 99):.3f} max {sims[~same].max():.3f}"
            )
        else:
            x, truth = planted(n, dup_noise=args.dup_noise)
        ids = write_vectors(args.work, x)
        row = {"n": n}
        for method in ("knn-leiden", "semdedup", "range"):
            if method == "range" and n > args.range_max:
                continue
            stats, labels = run_method(args.work, ids, method, args.k, args.threshold, task_map)
            scores = pair_scores(labels, truth)
            # The method's own work: kNN + Leiden for ours; the range search or SemDeDup alone
            # for the baselines (the step also runs kNN for semantic_cluster under every method).
            own = stats["groups_s"] + (stats["knn_s"] if method == "knn-leiden" else 0.0)
            row[method] = {
                "method_s": round(own, 2),
                "items_per_s": round(n / own),
                "step_wall_s": round(stats["wall"], 1),
                "f1": round(scores["f1"], 4),
                "knn_s": stats["knn_s"],
                "groups_s": stats["groups_s"],
                "labels": labels,
            }
            print(
                f"n={n} {method:10s} method {own:8.1f} s {n / own:8.0f} items/s  F1 "
                f"{scores['f1']:.4f}  (step {stats['wall']:.1f} s: knn {stats['knn_s']} s, "
                f"groups {stats['groups_s']} s; {stats['knn']})"
            )
        if "range" in row:
            for method in ("knn-leiden", "semdedup"):
                row[method]["f1_vs_exact"] = round(
                    pair_scores(row[method]["labels"], row["range"]["labels"])["f1"], 4
                )
        for m in ("knn-leiden", "semdedup", "range"):
            row.get(m, {}).pop("labels", None)
        summary[n] = row
    last = summary[sizes[-1]]
    knn, sem = last["knn-leiden"], last["semdedup"]
    print(
        json.dumps(
            {
                "bench": "dedup",
                "n": sizes[-1],
                "data": "augmented" if args.augment is not None else "planted",
                "dup_noise": args.dup_noise,
                "threshold": args.threshold,
                "executor": args.executor,
                "items_per_s": knn["items_per_s"],
                "f1_vs_truth": knn["f1"],
                "f1_vs_exact": knn.get("f1_vs_exact"),
                "speedup_vs_range": round(last["range"]["method_s"] / knn["method_s"], 2)
                if "range" in last
                else None,
                "f1_semdedup": sem["f1"],
                "speedup_vs_semdedup": round(sem["method_s"] / knn["method_s"], 2),
                "per_n": summary,
            }
        )
    )


if __name__ == "__main__":
    main()
