"""``zfoundry kg ...``: the Wikipedia knowledge graph (build, prune, taxonomy, add, boost,
stats) and ``zfoundry weights``."""

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
    help="Wikipedia knowledge graph: dumps -> nodes/ + edges/, PageRank pruning, tag taxonomy "
    "(concepts/), added concepts, prompt boosts, stats and a run's coverage.",
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
    generatability: Annotated[
        str | None,
        typer.Option(
            help="Also drop concepts an image cannot show; judge: rules, head, rules+head "
            "(the shipped embedding head) or backend (needs --judge-model)."
        ),
    ] = None,
    judge_threshold: Annotated[
        float | None, typer.Option(help="Head probability to count as generatable (0.5).")
    ] = None,
    judge_model: Annotated[
        str | None, typer.Option(help="Text-generation model for --generatability backend.")
    ] = None,
    judge_url: Annotated[
        str | None, typer.Option(help="... served at this OpenAI-compatible URL instead.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """PageRank over edges/ (sparse power iteration; cuGraph when present) and the cut:
    adds `pagerank` and `kept` to nodes/; with --generatability also `generatable`,
    `generatability_score` and `generatability_reason`, and `kept` requires `generatable`."""
    from infra.config import from_dict
    from knowledge_graph.prune import PruneConfig, prune

    given = {
        "keep_fraction": keep_fraction,
        "min_score": min_score,
        "min_in_links": min_in_links,
        "damping": damping,
        "tol": tol,
    }
    judge = {"judge": generatability, "threshold": judge_threshold}
    if generatability is not None:
        given["generatability"] = {k: v for k, v in judge.items() if v is not None}
    try:
        if generatability is None and judge_threshold is not None:
            raise ConfigError("needs --generatability", source="CLI", key="--judge-threshold")
        cfg = from_dict(
            PruneConfig, {k: v for k, v in given.items() if v is not None}, source="CLI"
        )
        backend = _backend(judge_model, judge_url, "--judge")
        if (backend is None) == (generatability == "backend"):
            raise ConfigError(
                "--judge-model goes with --generatability backend, and that needs it",
                source="CLI",
                key="--judge-model",
            )
        stats = prune(kg_dir, cfg, backend=backend, progress=not as_json)
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
        Path | None,
        typer.Option(
            help="Also write a PNG here: PageRank by rank, or with --run the weight "
            "histogram and concept balance."
        ),
    ] = None,
    run_dir: Annotated[
        str | None,
        typer.Option(
            "--run",
            help="Coverage of this run's weights/: voids (concepts without samples), top "
            "concepts, weight distribution.",
        ),
    ] = None,
    few: Annotated[int, typer.Option(help="With --run: 'few samples' means 1..FEW.")] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Counts, the PageRank distribution and the top / bottom kept concepts; with --run, how
    that run's samples cover the concepts."""
    from knowledge_graph.prune import kg_stats, plot_pagerank

    if run_dir is not None:
        _coverage(kg_dir, run_dir, top, few, plot, as_json)
        return
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
    match_threshold: Annotated[
        float | None,
        typer.Option(help="Least cosine for an embedding match (default: the taxonomy's)."),
    ] = None,
    embeddings: Annotated[
        bool,
        typer.Option(
            "--embeddings/--no-embeddings",
            help="Embedding matches for otherwise unmapped tags (needs kg taxonomy).",
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """BM25 + hierarchy sampling weights -> weights/ (sample_id, concepts, sampling_weight,
    tags). Tags come from meta.tags or the caption and map to the graph's concepts (title,
    redirect, taxonomy tag, embedding); the taxonomy gives the hierarchy and `kg boost` the
    prior. See docs/sampling.md."""
    from infra.config import from_dict
    from knowledge_graph.sampling import WeightsConfig, weights_step
    from pipelines.cli import _existing_run, _report

    data: dict = {}
    if kg_dir is not None:
        data["kg"] = str(kg_dir)
    if alpha is not None:
        data["bm25"] = {"alpha": alpha}
    if match_threshold is not None:
        data["match_threshold"] = match_threshold
    data["embeddings"] = embeddings
    try:
        cfg = from_dict(WeightsConfig, data, source="CLI")
        stats = weights_step(_existing_run(run_dir), cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        _fail(err)
    _report(run_dir, "weights", stats, as_json)


def _coverage(kg_dir: Path, run_dir: str, top: int, few: int, plot, as_json: bool) -> None:
    from knowledge_graph.sampling import coverage, plot_coverage
    from pipelines.cli import _existing_run

    run = _existing_run(run_dir)
    try:
        stats = coverage(run, kg_dir, top=top, few=few)
        if plot is not None:
            stats["plot"] = str(plot_coverage(run, kg_dir, plot))
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    if as_json:
        print(json.dumps(stats, sort_keys=True))
        return
    console = Console()
    _print_counters(f"coverage of {run_dir} over {kg_dir}", stats)
    q = Table(title="sampling_weight distribution", title_justify="left")
    for name in stats["weight_quantiles"]:
        q.add_column(name, justify="right")
    q.add_row(*(f"{v:.3g}" for v in stats["weight_quantiles"].values()))
    console.print(q)
    t = Table(title="Top concepts", title_justify="left")
    for col in ("name", "samples", "mean_weight"):
        t.add_column(col, justify="left" if col == "name" else "right")
    for row in stats["top_concepts"]:
        t.add_row(row["name"], str(row["samples"]), f"{row['mean_weight']:.3g}")
    console.print(t)
    if stats["top_voids"]:
        voids = ", ".join(stats["top_voids"])
        console.print(f"Voids (no samples; highest PageRank first): {voids}")


def _lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} is not a file")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _backend(model: str | None, url: str | None, flag: str):
    """The text-generation backend ``{flag}-model`` / ``{flag}-url`` name, or None."""
    if model is None:
        if url is not None:
            raise ConfigError(f"needs {flag}-model", source="CLI", key=f"{flag}-url")
        return None
    from captioner.backends import BackendConfig, backend_from_config
    from infra.config import from_dict

    cfg = from_dict(
        BackendConfig,
        {"kind": "http" if url else "transformers", "model": model, "url": url},
        source="CLI",
    )
    return backend_from_config(cfg)


def _namer(model: str | None, url: str | None):
    """A taxonomy namer through the text-generation backend, or None (nearest tag)."""
    backend = _backend(model, url, "--namer")
    if backend is None:
        return None
    from captioner.backends import ask_short_name

    return lambda members: ask_short_name(backend, [members])[0]


@kg.command("taxonomy")
def taxonomy_cmd(
    kg_dir: KgDir,
    run_dir: Annotated[
        str | None, typer.Option("--run", help="Take the tags of this run's samples.")
    ] = None,
    tags_file: Annotated[
        Path | None,
        typer.Option("--tags", help="Or a text file of tags, one per line (repeats count)."),
    ] = None,
    levels: Annotated[
        str | None, typer.Option(help="Clusters per level, finest first (default 256,32,8).")
    ] = None,
    encoder: Annotated[
        str | None, typer.Option(help="Text encoder: minilm (default, bundled) or clip.")
    ] = None,
    encoder_model: Annotated[
        str | None,
        typer.Option(help="Encoder model: sentence-transformers id/folder, or open_clip name."),
    ] = None,
    match_threshold: Annotated[
        float | None, typer.Option(help="Least cosine for an embedding match (default 0.75).")
    ] = None,
    embed_titles: Annotated[
        bool | None,
        typer.Option(
            "--embed-titles/--no-embed-titles",
            help="Embed the kept titles for embedding matches (default on).",
        ),
    ] = None,
    min_tag_count: Annotated[
        int | None, typer.Option(help="Leave out tags seen fewer times (default 1).")
    ] = None,
    namer_model: Annotated[
        str | None,
        typer.Option(help="Name clusters with this text-generation model (hub id / folder)."),
    ] = None,
    namer_url: Annotated[
        str | None, typer.Option(help="... served at this OpenAI-compatible URL instead.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Tag taxonomy -> KG_DIR/concepts/: the pool's tags embedded, clustered by hierarchical
    k-means, each cluster named (nearest tag, or a text-generation model) and attached to
    the graph by title, redirect or embedding similarity."""
    from infra.config import from_dict
    from knowledge_graph.concepts import ConceptsConfig, build_concepts

    try:
        if (run_dir is None) == (tags_file is None):
            raise ConfigError("give exactly one of --run and --tags", source="CLI", key="--run")
        data: dict = {}
        if levels is not None:
            try:
                data["taxonomy"] = {"levels": [int(x) for x in levels.split(",")]}
            except ValueError:
                raise ConfigError(
                    f"must be integers separated by commas, got {levels!r}",
                    source="CLI",
                    key="--levels",
                ) from None
        enc = {k: v for k, v in (("kind", encoder), ("model", encoder_model)) if v is not None}
        if enc:
            data["encoder"] = enc
        for key, value in (
            ("match_threshold", match_threshold),
            ("embed_titles", embed_titles),
            ("min_tag_count", min_tag_count),
        ):
            if value is not None:
                data[key] = value
        cfg = from_dict(ConceptsConfig, data, source="CLI")
        namer = _namer(namer_model, namer_url)
        if tags_file is not None:
            import pyarrow as pa

            from knowledge_graph.tags import normalise_tag

            tags = [t for t in map(normalise_tag, _lines(tags_file, "--tags")) if t]
            tag_lists, source = pa.array([tags], pa.list_(pa.string())), str(tags_file)
        else:
            from knowledge_graph.sampling import run_tags
            from pipelines.cli import _existing_run

            tag_lists = run_tags(_existing_run(run_dir), max_words=cfg.max_words)
            source = run_dir
        stats = build_concepts(
            kg_dir, tag_lists, cfg, namer=namer, source=source, progress=not as_json
        )
    except (ConfigError, FileNotFoundError, ValueError) as err:
        _fail(err)
    if as_json:
        print(json.dumps(stats, sort_keys=True))
    else:
        _print_counters(f"kg taxonomy -> {kg_dir / 'concepts'}", stats)
        Console().print(f"levels: {stats['levels']}  attached: {stats['attached']}")


@kg.command("add")
def add_cmd(
    kg_dir: KgDir,
    concepts: Annotated[
        Path, typer.Option("--concepts", help="Text file of new concepts, one per line.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Insert new (e.g. trending) concepts into the taxonomy, each under the most similar
    level-1 cluster, attached to the graph when a title matches."""
    from knowledge_graph.concepts import add_new_concepts

    try:
        stats = add_new_concepts(kg_dir, _lines(concepts, "--concepts"), progress=not as_json)
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    if as_json:
        print(json.dumps(stats, sort_keys=True))
        return
    _print_counters(f"kg add -> {kg_dir / 'concepts'}", stats)
    t = Table(title="Added", title_justify="left")
    for col in ("concept_id", "name", "parent", "node_id", "match"):
        t.add_column(col)
    for row in stats["new"]:
        t.add_row(
            *(
                str(row[c]) if row[c] is not None else ""
                for c in ("concept_id", "name", "parent", "node_id", "match")
            )
        )
    Console().print(t)


@kg.command("boost")
def boost_cmd(
    kg_dir: KgDir,
    prompts: Annotated[
        Path, typer.Option("--prompts", help="User-prompt log: a text file, one per line.")
    ],
    beta: Annotated[
        float | None, typer.Option(help="Factor 1 + beta ln(1 + mentions) (default 1).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Up-weight concepts that user prompts mention often: writes concepts/boost.parquet,
    which `zfoundry weights` multiplies into the prior."""
    from infra.config import from_dict
    from knowledge_graph.concepts import BoostConfig, boost_from_prompts

    try:
        cfg = from_dict(BoostConfig, {} if beta is None else {"beta": beta}, source="CLI")
        stats = boost_from_prompts(kg_dir, _lines(prompts, "--prompts"), cfg, progress=not as_json)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        _fail(err)
    if as_json:
        print(json.dumps(stats, sort_keys=True))
        return
    _print_counters(f"kg boost -> {kg_dir / 'concepts' / 'boost.parquet'}", stats)
    t = Table(title="Most boosted", title_justify="left")
    for col in ("name", "prompt_count", "boost"):
        t.add_column(col, justify="left" if col == "name" else "right")
    for row in stats["top"]:
        t.add_row(row["name"], str(row["prompt_count"]), f"{row['boost']:.3g}")
    Console().print(t)
