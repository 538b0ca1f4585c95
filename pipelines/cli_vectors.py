"""``zfoundry search | voids | prune``: retrieval over a run's CLIP vectors."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from infra.config import ConfigError
from pipelines.cli import (
    AddressOpt,
    ExecutorKind,
    ExecutorOpt,
    JsonOpt,
    RunArg,
    SetOpt,
    _executor,
    _existing_run,
    _fail,
    app,
)


def _table(rows: list[dict], title: str, columns: list[str]) -> None:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(
            col,
            justify="left"
            if col in ("sample_id", "concept", "failure", "key", "caption")
            else "right",
        )
    for row in rows:
        table.add_row(
            *(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns)
        )
    Console().print(table)


def _with_keys(run, rows: list[dict]) -> list[dict]:
    """Add each sample's source key and caption for people reading results."""
    from infra import catalog

    ids = [r["sample_id"] for r in rows]
    if not ids:
        return rows
    con = catalog.connect(run)
    found = con.execute(
        "SELECT sample_id, source || '/' || key, caption_alt FROM samples WHERE sample_id IN "
        f"({', '.join('?' * len(ids))})",
        ids,
    ).fetchall()
    info = {sid: (key, cap) for sid, key, cap in found}
    return [r | {"key": info[r["sample_id"]][0], "caption": info[r["sample_id"]][1]} for r in rows]


@app.command()
def search(
    run_dir: RunArg,
    text: Annotated[str | None, typer.Option(help="Text query.")] = None,
    image: Annotated[
        Path | None, typer.Option(help="Image query.", exists=True, dir_okay=False)
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Results.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Nearest pool samples to a text or an image (faiss index cached under the run)."""
    from curation.retrieval import search_run

    try:
        run = _existing_run(run_dir)
        rows = _with_keys(run, search_run(run, text=text, image=image, k=k))
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    if as_json:
        print(json.dumps(rows))
    else:
        _table(rows, f"nearest to {text or image}", ["rank", "sim", "key", "caption"])


@app.command()
def voids(
    run_dir: RunArg,
    concepts: Annotated[Path, typer.Option(help="Text file, one concept per line.", exists=True)],
    threshold: Annotated[
        float, typer.Option(help="Cosine above which a sample counts as near.")
    ] = 0.25,
    k: Annotated[int, typer.Option("-k", help="Neighbours examined per concept.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Concepts the pool covers sparsely (few samples near them), sparsest first."""
    from curation.retrieval import run_voids

    names = [line.strip() for line in concepts.read_text().splitlines() if line.strip()]
    try:
        rows = run_voids(_existing_run(run_dir), names, threshold=threshold, k=k)
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    if as_json:
        print(json.dumps(rows))
    else:
        _table(
            rows,
            f"voids (samples with cosine >= {threshold} among {k} nearest)",
            ["concept", "count", "max_sim", "mean_top10_sim"],
        )


@app.command()
def prune(
    run_dir: RunArg,
    failures: Annotated[
        Path,
        typer.Option(
            help="Prompts file (one per line) or a folder of failure images.", exists=True
        ),
    ],
    k: Annotated[int, typer.Option("-k", help="Neighbours per failure case.")] = 20,
    threshold: Annotated[
        float | None, typer.Option(help="Only samples at least this similar.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Samples nearest to failure cases -> RUN_DIR/prune/, which recipes can exclude with
    "sample_id NOT IN (SELECT sample_id FROM prune)"."""
    from curation.retrieval import image_files, run_prune

    try:
        run = _existing_run(run_dir)
        if failures.is_dir():
            table = run_prune(run, images=image_files(failures), k=k, threshold=threshold)
        else:
            prompts = [x.strip() for x in failures.read_text().splitlines() if x.strip()]
            table = run_prune(run, prompts=prompts, k=k, threshold=threshold)
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    rows = table.to_pylist()
    if as_json:
        print(json.dumps(rows))
    else:
        _table(
            _with_keys(run, rows)[:50],
            f"prune list ({len(rows)} samples) -> {run.display}/prune/",
            ["failure", "rank", "sim", "key"],
        )


@app.command()
def score(
    run_dir: RunArg,
    executor: ExecutorOpt = ExecutorKind.ray,
    address: AddressOpt = None,
    config: Annotated[
        Path | None, typer.Option(help="Take \\[score] settings from this pipeline file.")
    ] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Quality and safety heads on the stored embeddings -> scores/ (plus clip_score).

    Heads: --set aesthetic=PATH, aigc=PATH, nsfw=PATH (zfoundry head files, or LAION's /
    UnivFD's published checkpoints); unset heads leave their column null.
    """
    from curation.stages.score import ScoreStage
    from pipelines.cli import _report, _stage
    from pipelines.steps import score_stage

    try:
        run = _existing_run(run_dir)
        stage = score_stage(run, _stage(ScoreStage, "score", config, set_))
        stats = _executor(executor, address).run_stage(stage, run)
    except (ConfigError, FileNotFoundError, RuntimeError, ValueError) as err:
        _fail(err)
    _report(run_dir, "score", stats, as_json)


heads_app = typer.Typer(
    help="Train scoring heads on a run's stored embeddings.", no_args_is_help=True
)
app.add_typer(heads_app, name="heads")


@heads_app.command("train")
def heads_train(
    run_dir: RunArg,
    head: Annotated[str, typer.Option(help="aesthetic (regressor), aigc or nsfw (classifiers).")],
    labels: Annotated[
        Path, typer.Option(help="Parquet with sample_id and a label column.", exists=True)
    ],
    label_column: Annotated[str, typer.Option(help="Label column (0/1, or a score).")] = "label",
    out: Annotated[
        Path | None, typer.Option(help="Head file (default RUN_DIR/heads/HEAD.safetensors).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and the initialisation.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Fit a head from labels; report its held-out AUC / Spearman; save it for `score`."""
    from curation.scoring import train_head_on_run

    try:
        run = _existing_run(run_dir)
        if out is None:
            if run.fs.type_name != "local":
                raise ValueError("--out is required for runs in object storage")
            out = Path(run.root) / "heads" / f"{head}.safetensors"
        result = train_head_on_run(run, head, labels, out, label_column=label_column, seed=seed)
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    if as_json:
        print(json.dumps(result, default=str))
    else:
        _table(
            [result], f"head {head} -> {result['path']}", [k for k in result if k not in ("path",)]
        )


class DedupMethod(StrEnum):
    knn_leiden = "knn-leiden"
    range = "range"
    semdedup = "semdedup"


@app.command()
def dedup(
    run_dir: RunArg,
    k: Annotated[int | None, typer.Option("--k", help="Neighbours per item (default 100).")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Duplicate cosine (default 0.95).")
    ] = None,
    method: Annotated[DedupMethod | None, typer.Option(help="Grouping method.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="Take \\[dedup] settings from this pipeline file.")
    ] = None,
    executor: ExecutorOpt = ExecutorKind.ray,
    address: AddressOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Semantic dedup: k-NN graph + Leiden communities -> dedup/ (one keeper per community)
    and knn_edges/. Works on any vectors/ table written to the contract. With the ray
    executor, k-NN query shards and Leiden parts run as Ray tasks against one shared index
    (a single shard runs in process)."""
    from curation.dedup.run import DedupConfig
    from curation.dedup.run import dedup as run_dedup
    from pipelines.cli import _executor, _report, _stage

    extra = [f"k={k}"] * (k is not None) + [f"threshold={threshold}"] * (threshold is not None)
    extra += [f'method="{method.value}"'] if method is not None else []
    try:
        cfg = _stage(DedupConfig, "dedup", config, [*(set_ or []), *extra])
        ex = _executor(executor, address)
        stats = run_dedup(_existing_run(run_dir), cfg, task_map=ex.map_tasks, progress=not as_json)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        _fail(err)
    _report(run_dir, "dedup", stats, as_json)
