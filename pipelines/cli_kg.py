"""``zfoundry kg ...``: the Wikipedia knowledge graph (build, prune, stats)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from infra.config import ConfigError
from pipelines.cli import JsonOpt, _fail, app

kg = typer.Typer(
    help="Wikipedia knowledge graph: dumps -> nodes/ + edges/, PageRank pruning, stats.",
    no_args_is_help=True,
)
app.add_typer(kg, name="kg")

KgDir = Annotated[Path, typer.Argument(help="Knowledge-graph directory (made by `kg build`).")]


def _print_counters(title: str, stats: dict) -> None:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("counter")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        if isinstance(value, dict | list):
            continue
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
        table.add_row(key, str(shown))
    Console().print(table)


@kg.command()
def build(
    dump: Annotated[
        list[str],
        typer.Option(
            "--dump",
            help="A dump file; repeat for several. The kind comes from the file name "
            "(*pages-articles*.xml[.bz2], *-page.sql.gz, *-pagelinks.sql.gz, "
            "*-linktarget.sql.gz, *-redirect.sql.gz, *-page_props.sql.gz) or KIND=PATH.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Knowledge-graph directory to write.")],
    redirect_hops: Annotated[int, typer.Option(help="Follow redirect chains this deep.")] = 5,
    memory_limit: Annotated[
        str | None, typer.Option(help="DuckDB memory limit for the resolve phase, e.g. 8GB.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stream Wikipedia dumps (XML pages-articles, or the SQL page / pagelinks / linktarget /
    redirect / page_props tables) into KG_DIR/nodes/ and KG_DIR/edges/. Re-running with the
    same files does nothing; an interrupted build resumes at the first unstaged file."""
    from knowledge_graph.build import build_kg

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            stats = build_kg(
                dump,
                out,
                redirect_hops=redirect_hops,
                memory_limit=memory_limit,
                progress=not as_json,
            )
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    if as_json:
        print(json.dumps(stats, sort_keys=True))
        return
    for d in stats.get("dumps", []):
        if d.get("truncated"):
            Console(stderr=True).print(f"[yellow]warning:[/] {d['truncated'][0]}")
    _print_counters(f"kg build -> {out}", stats)


@kg.command("prune")
def prune_cmd(
    kg_dir: KgDir,
    keep_fraction: Annotated[
        float | None, typer.Option(help="Keep this fraction of nodes by PageRank (default 0.5).")
    ] = None,
    min_score: Annotated[
        float | None, typer.Option(help="Keep nodes with PageRank >= this instead.")
    ] = None,
    min_in_links: Annotated[
        int | None, typer.Option(help="Also require this many in-links (default 1).")
    ] = None,
    damping: Annotated[float | None, typer.Option(help="Damping (default 0.85).")] = None,
    tol: Annotated[float | None, typer.Option(help="L1 tolerance (default 1e-10).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """PageRank over edges/ (sparse power iteration; cuGraph when present) and the cut:
    adds `pagerank` and `kept` to nodes/."""
    from infra.config import from_dict
    from knowledge_graph.prune import PruneConfig, prune

    given = {
        "keep_fraction": keep_fraction,
        "min_score": min_score,
        "min_in_links": min_in_links,
        "damping": damping,
        "tol": tol,
    }
    try:
        cfg = from_dict(
            PruneConfig, {k: v for k, v in given.items() if v is not None}, source="CLI"
        )
        stats = prune(kg_dir, cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        _fail(err)
    if as_json:
        print(json.dumps(stats, sort_keys=True))
    else:
        _print_counters(f"kg prune {kg_dir}", stats)


@kg.command("stats")
def stats_cmd(
    kg_dir: KgDir,
    top: Annotated[int, typer.Option(help="How many top / bottom concepts to list.")] = 10,
    plot: Annotated[
        Path | None, typer.Option(help="Also write a PNG rank plot of PageRank here.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Counts, the PageRank distribution and the top / bottom kept concepts."""
    from knowledge_graph.prune import kg_stats, plot_pagerank

    try:
        stats = kg_stats(kg_dir, top=top)
        if plot is not None:
            if not stats["pruned"]:
                raise ValueError("--plot needs PageRank; run `zfoundry kg prune` first")
            stats["plot"] = str(plot_pagerank(kg_dir, plot))
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    if as_json:
        print(json.dumps(stats, sort_keys=True))
        return
    console = Console()
    _print_counters(f"kg stats {kg_dir}", stats)
    if not stats["pruned"]:
        console.print("not pruned yet: run `zfoundry kg prune` for PageRank")
        return
    q = Table(title="PageRank distribution", title_justify="left")
    for name in stats["pagerank_quantiles"]:
        q.add_column(name, justify="right")
    q.add_row(*(f"{v:.3g}" for v in stats["pagerank_quantiles"].values()))
    console.print(q)
    for key, title in (("top", "Top concepts"), ("bottom_kept", "Lowest kept concepts")):
        t = Table(title=title, title_justify="left")
        for col in ("title", "pagerank", "in_degree", "out_degree"):
            t.add_column(col, justify="left" if col == "title" else "right")
        for row in stats[key]:
            t.add_row(
                row["title"],
                f"{row['pagerank']:.3g}",
                str(row["in_degree"]),
                str(row["out_degree"]),
            )
        console.print(t)


@app.command()
def weights(
    run_dir: Annotated[str, typer.Argument(help="Run directory (local path or URI).")],
    kg_dir: Annotated[
        Path | None, typer.Option("--kg", help="Knowledge graph: map tags to its nodes.")
    ] = None,
    alpha: Annotated[float | None, typer.Option(help="Hierarchy smoothing (default 0.25).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """BM25 + hierarchy sampling weights -> weights/ (sample_id, concepts, sampling_weight,
    tags). Tags come from meta.tags or the caption; see docs/sampling.md."""
    from infra.config import from_dict
    from knowledge_graph.sampling import WeightsConfig, weights_step
    from pipelines.cli import _existing_run, _report

    data: dict = {}
    if kg_dir is not None:
        data["kg"] = str(kg_dir)
    if alpha is not None:
        data["bm25"] = {"alpha": alpha}
    try:
        cfg = from_dict(WeightsConfig, data, source="CLI")
        stats = weights_step(_existing_run(run_dir), cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        _fail(err)
    _report(run_dir, "weights", stats, as_json)
