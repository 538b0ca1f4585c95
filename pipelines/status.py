"""``zfoundry status``: which tables and shards of a run are complete, and their counters."""

from __future__ import annotations

from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from infra.storage import RunDir

# table -> the table its shards are computed from (shard i from shard i)
DERIVED_FROM = {"profiles": "samples"}


def table_status(run: RunDir) -> list[dict[str, Any]]:
    rows = []
    for table in run.tables():
        markers = run.completed(table)
        success = run.exists(run.success_path(table))
        source = DERIVED_FROM.get(table)
        expected = len(run.completed(source)) if source else None
        pending = sorted(set(run.completed(source)) - set(markers)) if source else []
        files = run.data_files(table)
        if markers:
            n_rows = sum(m.get("rows", m.get("rows_in", 0)) for m in markers.values())
        else:  # tables written by several stages (rejects/): count from the Parquet footers
            n_rows = sum(pq.ParquetFile(f, filesystem=run.fs).metadata.num_rows for f in files)
        rows.append(
            {
                "table": table,
                "files": len(files),
                "shards_done": len(markers) if markers else None,
                "shards_expected": expected,
                "pending": pending,
                "complete": (success and not pending) if markers else None,
                "rows": n_rows,
            }
        )
    return rows


def stage_stats(run: RunDir) -> dict[str, dict[str, Any]]:
    stats_dir = run.path("stats")
    if not run.exists(stats_dir):
        return {}
    infos = sorted(run.fs.get_file_info(pafs.FileSelector(stats_dir)), key=lambda i: i.path)
    return {i.base_name.removesuffix(".json"): run.read_json(i.path) for i in infos}


def print_status(run: RunDir, console: Console) -> None:
    table = Table(title=f"run {run.display}", title_justify="left")
    for col in ("table", "files", "shards done", "complete", "rows", "pending shards"):
        table.add_column(col, justify="left" if col in ("table", "pending shards") else "right")
    for r in table_status(run):
        done = "-" if r["shards_done"] is None else str(r["shards_done"])
        if r["shards_expected"] is not None:
            done += f"/{r['shards_expected']}"
        complete = {True: "yes", False: "no", None: "-"}[r["complete"]]
        pending = ", ".join(map(str, r["pending"][:10])) + (
            " ..." if len(r["pending"]) > 10 else ""
        )
        table.add_row(
            r["table"],
            str(r["files"]),
            done,
            complete,
            f"{r['rows']:,}",
            pending or "-",
        )
    console.print(table)
    from pipelines.summary import print_steps

    stats = stage_stats(run)
    if stats:
        print_steps(stats, console, title="last counters per step")
