"""The steps a pipeline can list (``ingest``, ``profile``, ``caption``, ``select``, ...), each
resumable.

Every step writes ``RUN_DIR/stats/<step>.json`` and returns the same counters.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from captioner.stage import CaptionStage
from curation.dedup.run import dedup
from curation.ingest import iter_samples, materialize, validate_source
from curation.pairs.stage import PairsConfig, VideoPairs, VideoPairsStage
from curation.select import Recipe, select
from curation.stages.embed import EmbedTextStage
from curation.stages.score import ScoreStage
from infra.config import ConfigError, load_toml, to_dict
from infra.storage import RunDir, public_uri, redact, resolve_uri, shard_name
from infra.tables import CLIPS, SAMPLES, conform
from pipelines.config import IngestConfig, PipelineConfig, PruneConfig, SelectConfig
from pipelines.executors import get_executor
from pipelines.executors.base import RunConflict, guard_settings


def ingest(run: RunDir, cfg: IngestConfig, *, progress: bool = True) -> dict[str, Any]:
    """Sources -> ``samples/`` shards of ``rows_per_shard`` rows; finished shards are kept."""
    t0 = time.perf_counter()
    for src in cfg.sources:  # bad column names fail before the run directory is touched
        validate_source(src)
    settings = {"sources": [to_dict(s) for s in cfg.sources], "rows_per_shard": cfg.rows_per_shard}
    guard_settings(run, "samples", settings)
    stats_path = run.path("stats", "ingest.json")
    if run.exists(run.success_path("samples")) and run.exists(stats_path):
        # complete: nothing is read again (a changed source is not noticed; see docs)
        before = run.read_json(stats_path)
        stats = before | {"shards_run": 0, "shards_skipped": before["shards"], "wall_seconds": 0.0}
        run.write_json(stats_path, stats)
        return stats
    done = run.completed("samples")
    warnings: list[str] = []
    rows = itertools.chain.from_iterable(iter_samples(s, warnings) for s in cfg.sources)
    seen: dict[str, str] = {}
    by_source: Counter[str] = Counter()
    written = captioned = rows_run = 0
    bar = tqdm(desc="ingest", unit="sample", disable=not progress)
    for index in itertools.count():
        chunk = list(itertools.islice(rows, cfg.rows_per_shard))
        if not chunk:
            break
        for row in chunk:
            if row["sample_id"] in seen:
                raise ValueError(
                    f"ingest: key {row['key']!r} of source {row['source']!r} occurs twice "
                    f"(first at {seen[row['sample_id']]}); sample keys must be unique"
                )
            seen[row["sample_id"]] = row["uri"]
            by_source[row["source"]] += 1
            captioned += row["caption_alt"] is not None
        ids_sha256 = hashlib.sha256("\n".join(r["sample_id"] for r in chunk).encode()).hexdigest()
        if index in done and done[index].get("ids_sha256") != ids_sha256:
            raise RunConflict(
                f"ingest: the sources changed since samples/ shard {index} was written (its "
                f"files differ now); use a new --run directory"
            )
        if index not in done:
            table = pa.Table.from_pylist([materialize(r) for r in chunk], schema=SAMPLES)
            table = conform(table, SAMPLES, name="samples")
            info = run.write_parquet("samples", shard_name(index), table)
            marker = {"shard": index, "ids_sha256": ids_sha256, **info}
            run.write_json(run.marker_path("samples", index), marker)
            written += 1
            rows_run += len(chunk)
        bar.update(len(chunk))
    bar.close()
    shards = len(run.completed("samples"))
    run.write_json(run.success_path("samples"), {"shards": shards, "rows": len(seen)})
    stats = {
        "stage": "ingest",
        "in": len(seen),
        "ok": len(seen),
        "rejected": 0,
        "with_caption": captioned,
        "by_source": dict(sorted(by_source.items())),
        "shards": shards,
        "shards_run": written,
        "shards_skipped": shards - written,
        "warnings": warnings[:50],
        "rows_run": rows_run,
        "wall_seconds": round(wall := time.perf_counter() - t0, 3),
        "rows_per_s": round(rows_run / wall, 2) if rows_run else None,
    }
    run.write_json(run.path("stats", "ingest.json"), stats)
    return stats


def _executor(cfg: PipelineConfig):
    ex = cfg.executor
    options: dict[str, Any] = {"progress": ex.progress}
    if ex.kind == "ray":
        options |= {"address": ex.address, "num_cpus": ex.num_cpus}
    return get_executor(ex.kind, **options)


def profile(run: RunDir, cfg: PipelineConfig) -> dict[str, Any]:
    return _executor(cfg).run_stage(cfg.profile, run)


def embed(run: RunDir, cfg: PipelineConfig) -> dict[str, Any]:
    """CLIP image tower -> vectors/, then the caption tower -> text_vectors/ (same model)."""
    images = cfg.embed
    text = EmbedTextStage(**{k: v for k, v in to_dict(images).items()})
    executor = _executor(cfg)
    stats = executor.run_stage(images, run)
    stats["text"] = executor.run_stage(text, run)
    return stats


def score(run: RunDir, cfg: PipelineConfig) -> dict[str, Any]:
    """Heads over vectors/ -> scores/, with the run's CLIP model recorded for contracts."""
    return _executor(cfg).run_stage(score_stage(run, cfg.score), run)


def score_stage(run: RunDir, stage: ScoreStage) -> ScoreStage:
    settings = run.read_json(run.path("vectors", "_settings.json"))
    fields = to_dict(stage) | {
        "clip_model": settings["model"],
        "pretrained": settings["pretrained"],
    }
    return ScoreStage(**fields)


def caption(run: RunDir, cfg: PipelineConfig) -> dict[str, Any]:
    return _executor(cfg).run_stage(caption_stage(run, cfg.caption), run)


def caption_stage(run: RunDir, stage: CaptionStage) -> CaptionStage:
    """``stage`` with the run's ``weights/`` (and the knowledge graph it used) filled in, so
    prompts can name the concepts matched to each sample; unchanged without weights/."""
    if not stage.context or not run.exists(run.success_path("weights")):
        return stage
    settings = run.read_json(run.path("weights", "_settings.json"))
    if not settings.get("kg"):
        return stage
    return CaptionStage(
        **to_dict(stage) | {"weights_table": run.uri("weights"), "kg": settings["kg"]}
    )


def pairs(run: RunDir, cfg: PairsConfig, executor) -> dict[str, Any]:
    """Editing pairs -> edit_pairs/: expert + text pairs per sample shard, then (with
    ``[pairs.video] videos``) the clips listed into clips/ and their frame pairs. The video
    stage's counters are under ``video`` (``stats/video_pairs.json``)."""
    stats = executor.run_stage(cfg.image_stage(), run)
    if cfg.video.videos:
        clips = clips_step(run, cfg.video)
        stats["video"] = executor.run_stage(video_stage(run, cfg), run)
        stats["video"]["clips_listed"] = clips["in"]
    return stats


def video_stage(run: RunDir, cfg: PairsConfig) -> VideoPairsStage:
    """The video stage with the run's CLIP model when ``[pairs.video]`` names none."""
    from curation.retrieval import run_model

    video = cfg.video
    if video.model is None:
        if not run.exists(run.path("vectors", "_settings.json")):
            raise ConfigError("no CLIP model for video pairs: set it, or run embed first",
                              source="[pairs.video]", key="model")  # fmt: skip
        embed = run_model(run)
        video = replace(video, model=embed.model, pretrained=embed.pretrained)
    return cfg.video_stage(video)


def clips_step(run: RunDir, cfg: VideoPairs) -> dict[str, Any]:
    """``cfg.videos`` -> ``clips/`` shards of ``clips_per_shard`` clips (kept once written)."""
    from curation.pairs.video import list_clips

    assert cfg.videos
    settings = {"videos": redact(str(cfg.videos)), "clips_per_shard": cfg.clips_per_shard}
    guard_settings(run, "clips", settings)
    if run.exists(run.success_path("clips")):  # listed once; a changed folder is not noticed
        done = run.read_json(run.success_path("clips"))
        return done | {"in": done["rows"]}
    clips = list_clips(str(cfg.videos))  # cheap: a listing; what a killed run left is redone
    fs, root = resolve_uri(str(cfg.videos))
    source = public_uri(fs, root, str(cfg.videos))  # the root without credentials
    run.delete(
        [*run.data_files("clips"), *(run.marker_path("clips", i) for i in run.completed("clips"))]
    )
    for index, start in enumerate(range(0, len(clips), cfg.clips_per_shard)):
        chunk = clips[start : start + cfg.clips_per_shard]
        rows = [{"clip_id": c.clip_id, "source": source, "uri": c.uri, "kind": c.kind,
                 "frames": list(c.frames) or None} for c in chunk]  # fmt: skip
        table = conform(pa.Table.from_pylist(rows, schema=CLIPS), CLIPS, name="clips")
        info = run.write_parquet("clips", shard_name(index), table)
        run.write_json(run.marker_path("clips", index), {"shard": index, **info})
    summary = {"shards": -(-len(clips) // cfg.clips_per_shard), "rows": len(clips)}
    run.write_json(run.success_path("clips"), summary)
    return summary | {"in": len(clips)}


def prune_step(run: RunDir, cfg: PruneConfig) -> dict[str, Any]:
    """Samples nearest to the failure cases -> prune/ (recipes exclude them by subquery)."""
    from curation.retrieval import image_files, run_prune

    t0 = time.perf_counter()
    failures = Path(cfg.failures)
    if failures.is_dir():
        table = run_prune(run, images=image_files(failures), k=cfg.k, threshold=cfg.threshold)
    else:
        prompts = [x.strip() for x in failures.read_text().splitlines() if x.strip()]
        table = run_prune(run, prompts=prompts, k=cfg.k, threshold=cfg.threshold)
    stats = {
        "stage": "prune",
        "in": table.num_rows,
        "ok": table.num_rows,
        "failures": len(set(table.column("failure").to_pylist())),
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    run.write_json(run.path("stats", "prune.json"), stats)
    return stats


def select_step(run: RunDir, cfg: SelectConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    recipe = load_toml(Recipe, cfg.recipe, relative_paths=True)
    out = cfg.out if ("://" in cfg.out or Path(cfg.out).is_absolute()) else run.uri(cfg.out)
    manifest = select(run, recipe, out, recipe_source=str(cfg.recipe))
    stats = {
        "stage": "select",
        "recipe": str(cfg.recipe),
        "out": redact(out),
        "in": manifest["totals"]["profiled_ok"],
        "ok": manifest["totals"]["rows"],
        "shards": manifest["totals"]["shards"],
        "funnel": manifest["funnel"],
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    run.write_json(run.path("stats", "select.json"), stats)
    return stats


def run_pipeline(
    cfg: PipelineConfig, run: RunDir, *, on_step: Callable[[str, dict], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Run ``cfg.steps`` in order; each step resumes from what the run directory holds."""
    results: dict[str, dict[str, Any]] = {}
    for step in cfg.steps:
        if step == "ingest":
            assert cfg.ingest is not None
            results[step] = ingest(run, cfg.ingest, progress=cfg.executor.progress)
        elif step == "profile":
            results[step] = profile(run, cfg)
        elif step == "score":
            results[step] = score(run, cfg)
        elif step == "caption":
            results[step] = caption(run, cfg)
        elif step == "pairs":
            results[step] = pairs(run, cfg.pairs, _executor(cfg))
            if "video" in results[step]:
                results["video_pairs"] = results[step].pop("video")
        elif step == "dedup":
            ex = _executor(cfg)
            results[step] = dedup(run, cfg.dedup, task_map=ex.map_tasks, progress=ex.progress)
        elif step == "taxonomy":
            from knowledge_graph.concepts import taxonomy_step

            assert cfg.taxonomy is not None
            results[step] = taxonomy_step(run, cfg.taxonomy, progress=cfg.executor.progress)
        elif step == "weights":
            from knowledge_graph.sampling import weights_step

            results[step] = weights_step(run, cfg.weights)
        elif step == "prune":
            assert cfg.prune is not None
            results[step] = prune_step(run, cfg.prune)
        elif step == "embed":
            results[step] = embed(run, cfg)
            results["embed_text"] = results[step].pop("text")
        elif step == "select":
            assert cfg.select is not None
            results[step] = select_step(run, cfg.select)
        if on_step:
            on_step(step, results[step])
    return results
