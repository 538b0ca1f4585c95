"""The ``zfoundry`` command line: run pipelines, or one step at a time, and query runs."""

from __future__ import annotations

import json
import sys
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from infra.config import ConfigError
from infra.storage import RunDir

app = typer.Typer(
    name="zfoundry",
    help="Curate image-text pools into training shards (Z-Image data pipeline) on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

RunOpt = Annotated[
    str,
    typer.Option("--run", help="Run directory, a path or s3:// / gs:// URI (created if missing)."),
]
RunArg = Annotated[str, typer.Argument(help="Run directory: a path or s3:// / gs:// URI.")]


def _existing_run(location: str) -> RunDir:
    run = RunDir(location)
    if not run.exists(run.root):
        _fail(FileNotFoundError(f"run directory {run.display} does not exist"))
    return run


class ExecutorKind(StrEnum):
    local = "local"
    ray = "ray"


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/bold red] {err}")
    raise typer.Exit(2)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the counters as JSON instead.")]


def _report(run_dir: str, step: str, stats: dict[str, Any], as_json: bool) -> None:
    """Counters of one step: a table for people, JSON for scripts (stdout either way)."""
    from pipelines.summary import print_summary

    if as_json:
        print(json.dumps(stats, sort_keys=True))
    else:
        print_summary(RunDir(run_dir), {step: stats}, Console())


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parse as TOML (``90``, ``true``, ``"x"``) or stay strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}", source="CLI", key="--set")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


@app.command()
def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline TOML (steps + settings).")],
    run_dir: RunOpt,
    executor: Annotated[
        ExecutorKind | None, typer.Option(help="Override \\[executor].kind from the file.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, e.g. --set profile.jpeg_quality=90."),
    ] = None,
) -> None:
    """Run a pipeline file's steps in order; re-running resumes where it stopped."""
    from pipelines.config import load_pipeline
    from pipelines.steps import run_pipeline
    from pipelines.summary import print_summary

    try:
        overrides = _parse_set(set_ or [])
        if executor is not None:
            overrides["executor.kind"] = executor.value
        cfg = load_pipeline(pipeline, overrides)
    except ConfigError as err:
        _fail(err)
    run_obj = RunDir(run_dir)
    steps = ", ".join(cfg.steps)
    console.print(f"[bold]zfoundry run[/bold] {pipeline} -> {run_obj.display} ({steps})")
    try:
        results = run_pipeline(cfg, run_obj, on_step=lambda s, _: console.print(f"  done: {s}"))
    except (ConfigError, RuntimeError, FileNotFoundError, ValueError) as err:
        _fail(err)
    print_summary(run_obj, results, Console())


@app.command()
def ingest(
    sources: Annotated[
        list[str], typer.Argument(help="Folders, Parquet, or .tar shards: paths or s3:// URIs.")
    ],
    run_dir: RunOpt,
    name: Annotated[str | None, typer.Option(help="Source name (one source only).")] = None,
    rows_per_shard: Annotated[int, typer.Option(help="Samples per shard.")] = 256,
    inline: Annotated[bool, typer.Option(help="Copy folder images into samples/.")] = True,
    image_column: Annotated[str, typer.Option(help="Parquet: image bytes column.")] = "image",
    uri_column: Annotated[str | None, typer.Option(help="Parquet: image URI column.")] = None,
    caption_column: Annotated[str, typer.Option(help="Parquet: caption column.")] = "caption",
    key_column: Annotated[str | None, typer.Option(help="Parquet: unique key column.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register every file of the sources as a sample in RUN_DIR/samples/."""
    from infra.config import from_dict
    from pipelines.config import IngestConfig
    from pipelines.steps import ingest as run_ingest

    try:
        if name and len(sources) > 1:
            raise ConfigError("--name needs exactly one source", source="CLI", key="--name")
        raw = {
            "sources": [
                {
                    "path": p,
                    "name": name,
                    "inline": inline,
                    "image_column": image_column,
                    "uri_column": uri_column,
                    "caption_column": caption_column,
                    "key_column": key_column,
                }
                for p in sources
            ],
            "rows_per_shard": rows_per_shard,
        }
        cfg = from_dict(IngestConfig, raw, source="CLI")
        stats = run_ingest(RunDir(run_dir), cfg)
    except (ConfigError, RuntimeError, ValueError) as err:
        _fail(err)
    _report(run_dir, "ingest", stats, as_json)


ExecutorOpt = Annotated[ExecutorKind, typer.Option(help="Where to run.")]
AddressOpt = Annotated[str | None, typer.Option(help="Ray cluster address (default: local Ray).")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a setting, e.g. --set batch_rows=32.")
]


def _stage(cls, section: str, config: Path | None, set_: list[str] | None):
    """A stage from ``[section]`` of a pipeline file (or defaults) with --set overrides."""
    from infra.config import apply_overrides, from_dict, load_toml

    overrides = _parse_set(set_ or [])
    if config:
        return load_toml(cls, config, section=section, overrides=overrides, relative_paths=True)
    data: dict[str, Any] = {}
    apply_overrides(cls, data, overrides)  # dotted keys (--set backend.model=...) too
    return from_dict(cls, data, source="CLI")


def _executor(kind: ExecutorKind, address: str | None):
    from pipelines.executors import get_executor

    return get_executor(kind.value, **({"address": address} if kind is ExecutorKind.ray else {}))


@app.command()
def profile(
    run_dir: RunArg,
    executor: ExecutorOpt = ExecutorKind.ray,
    address: AddressOpt = None,
    config: Annotated[
        Path | None, typer.Option(help="Take \\[profile] settings from this pipeline file.")
    ] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Profile every sample: profiles/ (one row per sample) and rejects/."""
    from curation.stages.profile import ProfileStage

    try:
        stage = _stage(ProfileStage, "profile", config, set_)
        stats = _executor(executor, address).run_stage(stage, _existing_run(run_dir))
    except (ConfigError, RuntimeError, ValueError) as err:
        _fail(err)
    _report(run_dir, "profile", stats, as_json)


@app.command()
def embed(
    run_dir: RunArg,
    executor: ExecutorOpt = ExecutorKind.ray,
    address: AddressOpt = None,
    config: Annotated[
        Path | None, typer.Option(help="Take \\[embed] settings from this pipeline file.")
    ] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """CLIP embeddings once: images -> vectors/, captions -> text_vectors/.

    The model comes from \\[embed] (model, pretrained: a tag or local checkpoint). The default,
    zf-tiny-clip, is a tiny randomly initialised model for tests and demos.
    """
    from curation.stages.embed import EmbedImagesStage, EmbedTextStage
    from infra.config import to_dict

    try:
        stage = _stage(EmbedImagesStage, "embed", config, set_)
        run, ex = _existing_run(run_dir), _executor(executor, address)
        stats = ex.run_stage(stage, run)
        text = ex.run_stage(EmbedTextStage(**to_dict(stage)), run)
    except (ConfigError, RuntimeError, ValueError) as err:
        _fail(err)
    if as_json:
        print(json.dumps({"embed": stats, "embed_text": text}, sort_keys=True))
    else:
        from pipelines.summary import print_summary

        print_summary(RunDir(run_dir), {"embed": stats, "embed_text": text}, Console())


class OcrMode(StrEnum):
    rapidocr = "rapidocr"
    vlm = "vlm"
    none = "none"


@app.command()
def caption(
    run_dir: RunArg,
    model: Annotated[
        str | None,
        typer.Option(
            help="Captioning VLM: a hub id or local folder (transformers), or with --url the "
            "model name the server serves. Unset: OCR only."
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible server (vLLM, SGLang), e.g. http://host:8000/v1."),
    ] = None,
    ocr: Annotated[OcrMode | None, typer.Option(help="OCR engine (default: rapidocr).")] = None,
    executor: ExecutorOpt = ExecutorKind.ray,
    address: AddressOpt = None,
    config: Annotated[
        Path | None, typer.Option(help="Take \\[caption] settings from this pipeline file.")
    ] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """OCR-first multi-level captions: captions/ (one row per sample) and rejects/.

    Each image is transcribed first (RapidOCR's PP-OCR models, offline), then a vision-language
    model writes long, medium and short captions, tags and a user-style prompt from the image,
    the transcript and what the run knows (alt text, page title, knowledge-graph concepts).
    Answers that fail validation leave the caption columns null and a rejects/ row with the
    reason. See docs/captioner.md for serving a real VLM with vLLM.
    """
    from captioner.stage import CaptionStage
    from pipelines.steps import caption_stage

    extra = list(set_ or [])
    if model is not None:
        extra.append(f"backend.model={json.dumps(model)}")
        extra.append(f"backend.kind={json.dumps('http' if url else 'transformers')}")
    if url is not None:
        extra.append(f"backend.url={json.dumps(url)}")
    if ocr is not None:
        extra.append(f"ocr={json.dumps(ocr.value)}")
    try:
        if url is not None and model is None:
            raise ConfigError("--url needs --model (the name the server serves)", source="CLI",
                              key="--url")  # fmt: skip
        run = _existing_run(run_dir)
        stage = caption_stage(run, _stage(CaptionStage, "caption", config, extra))
        stats = _executor(executor, address).run_stage(stage, run)
    except (ConfigError, RuntimeError, ValueError, OSError) as err:
        _fail(err)
    _report(run_dir, "caption", stats, as_json)


@app.command()
def pairs(
    run_dir: RunArg,
    videos: Annotated[
        str | None,
        typer.Option(
            help="Also make video-frame pairs from this folder of videos / frame folders "
            "(a local path or an s3:// / gs:// URI)."
        ),
    ] = None,
    import_: Annotated[
        str | None,
        typer.Option(
            "--import", help="Instead, import pairs of ingested files from a JSON-lines listing."
        ),
    ] = None,
    executor: ExecutorOpt = ExecutorKind.ray,
    address: AddressOpt = None,
    config: Annotated[
        Path | None, typer.Option(help="Take \\[pairs] settings from this pipeline file.")
    ] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Editing pairs: edit_pairs/ (+ clips/ with --videos) and rejects/.

    Per sample: seeded expert edits (tone, tint, recolour, zoom, flip, rotate, background blur,
    styles, rendered text and shapes) and every ordered pair among the photo and its edits
    (expert, inverse, mixed), plus a rendered text edit read back by OCR; per clip: frame
    pairs whose CLIP cosine lies in a band. Instructions are exact (English and Chinese) where
    the operations are known, else difference captions from \\[pairs.backend]. Counts per kind
    are in stats/pairs.json. See docs/usage.md, "Editing pairs".
    """
    from curation.pairs.stage import PairsConfig
    from pipelines.steps import pairs as pairs_step

    extra = list(set_ or [])
    if videos is not None:
        extra.append(f"video.videos={json.dumps(videos)}")
    try:
        run = _existing_run(run_dir)
        if import_ is not None:
            from curation.edit_pairs import import_pairs

            stats = {"stage": "pairs", "imported": import_pairs(run, import_)}
        else:
            cfg = _stage(PairsConfig, "pairs", config, extra)
            stats = pairs_step(run, cfg, _executor(executor, address))
    except (ConfigError, RuntimeError, ValueError, OSError) as err:
        _fail(err)
    video = stats.pop("video", None)
    if as_json:
        print(json.dumps({"pairs": stats, "video_pairs": video}, sort_keys=True))
    else:
        from pipelines.summary import print_summary

        print_summary(RunDir(run_dir), {"pairs": stats} | ({"video_pairs": video} if video else {}),
                      Console())  # fmt: skip


@app.command()
def select(
    run_dir: RunArg,
    recipe: Annotated[Path, typer.Option(help="Recipe TOML.", exists=True, dir_okay=False)],
    out: Annotated[str, typer.Option(help="Output folder for shards + manifest.json.")],
    as_json: JsonOpt = False,
) -> None:
    """Write curated shards + manifest.json for the rows a recipe's predicates keep."""
    from pipelines.config import SelectConfig
    from pipelines.steps import select_step

    try:
        out_abs = out if "://" in out else str(Path(out).resolve())
        run = _existing_run(run_dir)
        stats = select_step(run, SelectConfig(recipe=recipe.resolve(), out=out_abs))
    except (ConfigError, FileNotFoundError, RuntimeError, ValueError) as err:
        _fail(err)
    _report(run_dir, "select", stats, as_json)


@app.command()
def query(
    run_dir: RunArg,
    sql: Annotated[str, typer.Argument(help="SQL; each table is a view named after its folder.")],
    format: Annotated[OutputFormat, typer.Option(help="Output format.")] = OutputFormat.table,
    max_rows: Annotated[int, typer.Option(help="Rows shown in table format.")] = 40,
) -> None:
    """Run SQL over a run's tables (DuckDB) and print the result."""
    import duckdb

    from infra import catalog

    con = catalog.connect(_existing_run(run_dir))
    try:
        rel = con.sql(sql)
    except duckdb.Error as err:
        _fail(err)
    if rel is None:
        return
    if format is OutputFormat.table:
        rel.show(max_rows=max_rows, max_width=200)
    elif format is OutputFormat.csv:
        import pyarrow.csv as pacsv

        sys.stdout.flush()
        pacsv.write_csv(rel.to_arrow_table(), sys.stdout.buffer)
    else:
        for row in rel.to_arrow_table().to_pylist():
            print(json.dumps(row, default=lambda v: v.hex() if isinstance(v, bytes) else str(v)))


@app.command()
def status(run_dir: RunArg) -> None:
    """Show which tables and shards of a run are complete, with their counters."""
    from pipelines.status import print_status

    print_status(_existing_run(run_dir), Console())


def main() -> None:
    app()


# Commands defined in other modules register on `app` when imported (after everything above).
from pipelines import cli_kg, cli_merge, cli_sample, cli_train, cli_vectors  # noqa: E402, F401

if __name__ == "__main__":  # `python -m pipelines.cli`: the modules above registered their
    from pipelines.cli import main as _main  # commands on `pipelines.cli.app`, not on this copy

    _main()
