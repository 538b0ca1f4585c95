"""What a finished run prints: where things are, counters per step, rejects by reason."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from infra.storage import RunDir, join_uri, redact


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_steps(results: dict[str, dict[str, Any]], console: Console, title: str) -> None:
    steps = Table(title=title, title_justify="left")
    for col in ("step", "in", "ok", "rejected", "shards (run/kept)", "seconds", "rows/s"):
        steps.add_column(col, justify="left" if col == "step" else "right")
    for name, s in results.items():
        shards = s.get("shards")
        if "shards_run" in s:
            shards = f"{s['shards']} ({s['shards_run']}/{s.get('shards_skipped', 0)})"
        steps.add_row(
            name,
            _fmt(s.get("in")),
            _fmt(s.get("ok")),
            _fmt(s.get("rejected")),
            _fmt(shards),
            _fmt(s.get("wall_seconds")),
            _fmt(s.get("rows_per_s")),
        )
    console.print(steps)


def _print_counts(results: dict[str, dict[str, Any]], key: str, title: str,
                  columns: tuple[str, str], console: Console) -> None:  # fmt: skip
    """One table of the ``key`` counters summed over the steps (largest first), if any."""
    totals: dict[str, int] = {}
    for s in results.values():
        for name, n in s.get(key, {}).items():
            totals[name] = totals.get(name, 0) + n
    if totals:
        table = Table(title=title, title_justify="left")
        table.add_column(columns[0])
        table.add_column(columns[1], justify="right")
        for name, n in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])):
            table.add_row(name, _fmt(n))
        console.print(table)


def print_summary(run: RunDir, results: dict[str, dict[str, Any]], console: Console) -> None:
    print_steps(results, console, title="zfoundry run")
    _print_counts(results, "reasons", "rejects by reason", ("reason", "rows"), console)
    _print_counts(results, "by_kind", "editing pairs by kind", ("kind", "pairs"), console)

    if "select" in results:
        funnel = Table(title="select funnel (rows left after each predicate)", title_justify="left")
        funnel.add_column("predicate")
        funnel.add_column("rows", justify="right")
        for step in results["select"]["funnel"]:
            funnel.add_row(step["predicate"], _fmt(step["rows"]))
        console.print(funnel)

    where = Table(show_header=False, title="where things are", title_justify="left")
    where.add_column("what")
    where.add_column("path")
    where.add_row("run directory", run.display)
    if "select" in results:
        out = redact(results["select"]["out"])
        where.add_row("curated shards", out)
        where.add_row("manifest", join_uri(out, "manifest.json"))
    where.add_row("rejects", redact(run.uri("rejects")))
    where.add_row("counters", redact(run.uri("stats")))
    console.print(where)
    console.print(
        f'Inspect with SQL: [bold]zfoundry query {run.display} "SELECT reason, count(*) '
        f'FROM rejects GROUP BY reason"[/bold]'
    )
