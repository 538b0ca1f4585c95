"""``zfoundry status``: which tables and shards of a run are complete."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from infra.storage import RunDir


def table_status(run: RunDir) -> list[dict]:
    rows = []
    for table in run.tables():
        markers = run.completed(table)
        success = (
            run.read_json(run.success_path(table)) if run.exists(run.success_path(table)) else None
        )
        rows.append(
            {
                "table": table,
                "files": len(run.data_files(table)),
                "shards_marked": len(markers),
                "complete": success is not None,
                "rows": success["rows"] if success else None,
            }
        )
    return rows


def print_status(run: RunDir, console: Console) -> None:
    table = Table(title=f"run {run.display}", title_justify="left")
    for col in ("table", "files", "shards done", "complete", "rows"):
        table.add_column(col, justify="left" if col == "table" else "right")
    for r in table_status(run):
        table.add_row(
            r["table"],
            str(r["files"]),
            str(r["shards_marked"]),
            "yes" if r["complete"] else "no",
            "-" if r["rows"] is None else f"{r['rows']:,}",
        )
    console.print(table)
    stats_dir = run.path("stats")
    if run.exists(stats_dir):
        import pyarrow.fs as pafs

        for info in sorted(
            run.fs.get_file_info(pafs.FileSelector(stats_dir)), key=lambda i: i.path
        ):
            s = run.read_json(info.path)
            console.print(
                f"{info.base_name}: in={s.get('in')} ok={s.get('ok')} "
                f"rejected={s.get('rejected', 0)} seconds={s.get('wall_seconds')}"
            )
