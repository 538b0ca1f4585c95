"""Wikipedia dumps -> ``KG_DIR/nodes/``, ``edges/``, ``aliases/``: ``zfoundry kg build``.

Two phases:

1. **Stage** each dump file (streaming; one Parquet folder per file under ``_staging/``,
   committed with a marker, so an interrupted build resumes at the next file):
   * XML ``pages-articles``: namespace-0 pages (id, title, redirect flag, disambiguation
     flag), redirects (title -> normalised target title) and links (source page id ->
     normalised target title) from the wikitext.
   * SQL ``page`` (namespace 0), ``redirect`` (namespace-0 targets), ``page_props``
     (disambiguation ids), ``pagelinks`` from namespace 0 to namespace 0 (current schema
     with ``linktarget``, or the older title schema).
2. **Resolve** in DuckDB (hash joins over the staged Parquet, out of core): nodes are
   namespace-0 pages that are not redirects (``node_id`` dense in page-id order); link
   targets resolve through titles and redirect chains (up to ``redirect_hops``); links to
   missing pages, self-loops and duplicate pairs are dropped and counted. Edges are written
   sorted by (src, dst); ``aliases/`` keeps each resolved redirect title -> node (``title``,
   ``node_id``, ``hops``) for tag-to-concept mapping.

Integer ids and Arrow/Parquet throughout; the only Python objects per link are the strings
the wikitext regex produces for one batch of pages, flushed to Parquet every
``LINK_BATCH`` links. The kind of each dump comes from its file name or ``KIND=PATH``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from knowledge_graph.dumps import DumpTruncatedWarning

log = logging.getLogger(__name__)

KINDS = ("xml", "page", "redirect", "page_props", "pagelinks", "linktarget", "wikispeedia")
LINK_BATCH = 2_000_000
FORMAT = "zfoundry.kg/1"

NODES = pa.schema(
    [
        ("node_id", pa.int64()),
        ("page_id", pa.int64()),
        ("title", pa.string()),
        ("is_disambiguation", pa.bool_()),
        ("out_degree", pa.int64()),
        ("in_degree", pa.int64()),
    ]
)
EDGES = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
ALIASES = pa.schema([("title", pa.string()), ("node_id", pa.int64()), ("hops", pa.int32())])


@dataclass(frozen=True)
class Dump:
    kind: str
    path: Path

    @classmethod
    def parse(cls, spec: str | Path) -> Dump:
        """``KIND=PATH`` or a path whose file name tells the kind (as dumps.wikimedia.org
        names them: ``*pages-articles*.xml*``, ``*-page.sql*``, ``*-pagelinks.sql*`` ...)."""
        text = str(spec)
        kind, sep, rest = text.partition("=")
        if sep and kind in KINDS:
            path = Path(rest)
        else:
            path, kind = Path(text), _kind_from_name(Path(text).name)
        if not path.exists():
            raise FileNotFoundError(f"dump: {path} does not exist")
        return cls(kind, path)


def _kind_from_name(name: str) -> str:
    low = name.lower()
    if ".xml" in low:
        return "xml"
    for kind in ("page_props", "pagelinks", "linktarget", "redirect", "page"):
        if re.search(rf"(^|[-_.]){kind}\.sql", low):
            return kind
    raise ValueError(
        f"dump: cannot tell the kind of {name!r} from its name; pass KIND=PATH with KIND one "
        f"of {', '.join(KINDS)}"
    )


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


# ---------------------------------------------------------------- staging


def stage(dump: Dump, folder: Path, *, progress: bool = False) -> dict[str, Any]:
    """Stage one dump file into ``folder`` (replaced); returns its counters."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DumpTruncatedWarning)
        counters = _STAGERS[dump.kind](dump.path, folder, progress)
    truncated = [str(w.message) for w in caught if issubclass(w.category, DumpTruncatedWarning)]
    for w in caught:  # re-raise what we caught, so the caller (and the CLI) sees it
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return counters | {"kind": dump.kind, "truncated": truncated or None}


class _Writer:
    """Buffered Parquet parts of one staged table."""

    def __init__(self, folder: Path, name: str, schema: pa.Schema):
        self.dir = folder / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.schema, self.parts, self.rows = schema, 0, 0

    def write(self, columns: dict[str, Any]) -> None:
        table = pa.table(columns, schema=self.schema)
        if table.num_rows:
            pq.write_table(table, self.dir / f"{self.parts:05d}.parquet")
            self.parts += 1
            self.rows += table.num_rows


PAGES = pa.schema(
    [
        ("page_id", pa.int64()),
        ("title", pa.string()),
        ("is_redirect", pa.bool_()),
        ("is_disambiguation", pa.bool_()),
    ]
)
REDIRECTS = pa.schema([("page_id", pa.int64()), ("target", pa.string())])
LINKS = pa.schema([("src", pa.int64()), ("target", pa.string())])


def _stage_xml(path: Path, folder: Path, progress: bool) -> dict[str, Any]:
    from knowledge_graph.dumps.xml import XmlDump
    from knowledge_graph.wikitext import extract_links, is_disambiguation, normalise_title

    dump = XmlDump(path, progress=progress)
    pages_w = _Writer(folder, "pages", PAGES)
    redirects_w = _Writer(folder, "redirects", REDIRECTS)
    links_w = _Writer(folder, "links", LINKS)
    page_cols: dict[str, list] = {name: [] for name in PAGES.names}
    red_ids: list[int] = []
    red_targets: list[str] = []
    link_src: list[int] = []
    link_dst: list[str] = []
    by_ns: dict[int, int] = {}
    bad_redirects = 0
    t0 = time.perf_counter()
    for page in dump.pages():
        by_ns[page.ns] = by_ns.get(page.ns, 0) + 1
        if page.ns != 0:
            continue
        site = dump.siteinfo
        is_redirect = page.redirect is not None
        page_cols["page_id"].append(page.page_id)
        page_cols["title"].append(page.title)
        page_cols["is_redirect"].append(is_redirect)
        page_cols["is_disambiguation"].append(
            not is_redirect and is_disambiguation(page.text, page.title)
        )
        if is_redirect:
            target = normalise_title(page.redirect, site)
            if target is not None and target[0] == 0:
                red_ids.append(page.page_id)
                red_targets.append(target[1])
            else:
                bad_redirects += 1  # into another namespace, or not a valid title
        else:
            targets = extract_links(page.text, site)
            link_src.extend([page.page_id] * len(targets))
            link_dst.extend(targets)
            if len(link_src) >= LINK_BATCH:
                links_w.write({"src": link_src, "target": link_dst})
                link_src, link_dst = [], []
        if len(page_cols["page_id"]) >= LINK_BATCH // 10:
            pages_w.write(page_cols)
            page_cols = {name: [] for name in PAGES.names}
    pages_w.write(page_cols)
    redirects_w.write({"page_id": red_ids, "target": red_targets})
    links_w.write({"src": link_src, "target": link_dst})
    wall = time.perf_counter() - t0
    return {
        "pages_read": dump.pages_read,
        "pages_by_namespace": {str(k): v for k, v in sorted(by_ns.items())},
        "links_extracted": links_w.rows,
        "redirects_out_of_namespace_0": bad_redirects,
        "pages_per_s": round(dump.pages_read / wall, 1) if wall else None,
    }


def _stage_page(path: Path, folder: Path, progress: bool) -> dict[str, Any]:
    from knowledge_graph.dumps.sql import read_page

    ns0 = read_page(path, namespaces=[0])  # filtered while streaming (60M rows in enwiki)
    w = _Writer(folder, "pages", PAGES)
    w.write(
        {
            "page_id": ns0.column("page_id"),
            "title": ns0.column("title"),
            "is_redirect": ns0.column("is_redirect").cast(pa.bool_()),
            "is_disambiguation": pa.nulls(ns0.num_rows, pa.bool_()),  # from page_props
        }
    )
    return {"pages_by_namespace": {"0": ns0.num_rows}}


def _stage_redirect(path: Path, folder: Path, progress: bool) -> dict[str, Any]:
    from knowledge_graph.dumps.sql import read_redirect

    table = read_redirect(path)
    keep = pc.equal(table.column("namespace"), 0)
    interwiki = table.column("interwiki")
    keep = pc.and_(keep, pc.or_kleene(pc.is_null(interwiki), pc.equal(interwiki, "")))
    ns0 = table.filter(keep)
    _Writer(folder, "redirects", REDIRECTS).write(
        {"page_id": ns0.column("page_id"), "target": ns0.column("title")}
    )
    return {
        "redirects_read": table.num_rows,
        "redirects_out_of_namespace_0": table.num_rows - ns0.num_rows,
    }


def _stage_page_props(path: Path, folder: Path, progress: bool) -> dict[str, Any]:
    from knowledge_graph.dumps.sql import read_page_props

    table = read_page_props(path)
    w = _Writer(folder, "disambiguation", pa.schema([("page_id", pa.int64())]))
    w.write({"page_id": table.column("page_id")})
    return {"disambiguation_pages": table.num_rows}


def _stage_linktarget(path: Path, folder: Path, progress: bool) -> dict[str, Any]:
    from knowledge_graph.dumps.sql import read_linktarget

    ns0 = read_linktarget(path, namespaces=[0])
    w = _Writer(
        folder, "linktargets", pa.schema([("target_id", pa.int64()), ("title", pa.string())])
    )
    w.write({"target_id": ns0.column("target_id"), "title": ns0.column("title")})
    return {"linktargets_namespace_0": ns0.num_rows}


def _stage_pagelinks(path: Path, folder: Path, progress: bool) -> dict[str, Any]:
    from knowledge_graph.dumps.sql import iter_pagelinks, pagelinks_schema

    schema = pagelinks_schema(path)
    by_id = pa.schema([("src", pa.int64()), ("target_id", pa.int64())])
    w = _Writer(
        folder, "links" if schema == "title" else "link_ids", LINKS if schema == "title" else by_id
    )
    read = 0
    for batch in iter_pagelinks(path):
        read += batch.num_rows
        keep = pc.equal(batch.column("from_namespace"), 0)
        if schema == "title":
            keep = pc.and_(keep, pc.equal(batch.column("namespace"), 0))
            part = batch.filter(keep)
            w.write({"src": part.column("src"), "target": part.column("title")})
        else:
            part = batch.filter(keep)
            w.write({"src": part.column("src"), "target_id": part.column("target_id")})
    return {"pagelinks_read": read, "pagelinks_schema": schema, "links_extracted": w.rows}


_STAGERS = {
    "xml": _stage_xml,
    "page": _stage_page,
    "redirect": _stage_redirect,
    "page_props": _stage_page_props,
    "linktarget": _stage_linktarget,
    "pagelinks": _stage_pagelinks,
}


# ---------------------------------------------------------------- resolve


def _glob(staging: Path, table: str) -> str | None:
    files = sorted(staging.glob(f"*/{table}/*.parquet"))
    if not files:
        return None
    return "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"


def resolve(staging: Path, out: Path, *, redirect_hops: int, memory_limit: str | None) -> dict:
    """Nodes and edges from the staged tables (module docstring); returns counters."""
    con = duckdb.connect()
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET temp_directory = '{staging / '_duckdb_tmp'}'")
    pages = _glob(staging, "pages")
    if pages is None:
        raise ValueError("kg build: no pages staged; give an XML dump or the page.sql dump")
    disamb = _glob(staging, "disambiguation")
    disamb_sql = f"OR page_id IN (SELECT page_id FROM read_parquet({disamb}))" if disamb else ""
    # one row per title (the smallest page id if a title repeats across files)
    con.execute(
        f"""CREATE TABLE pages AS
        SELECT page_id, title, is_redirect,
               coalesce(is_disambiguation, false) {disamb_sql} AS is_disambiguation
        FROM (SELECT *, row_number() OVER (PARTITION BY title ORDER BY page_id) AS k
              FROM read_parquet({pages})) WHERE k = 1"""
    )
    con.execute(
        """CREATE TABLE nodes AS
        SELECT (row_number() OVER (ORDER BY page_id) - 1)::BIGINT AS node_id, page_id, title,
               is_disambiguation
        FROM pages WHERE NOT is_redirect"""
    )
    # title -> node through up to `redirect_hops` redirects
    con.execute("CREATE TABLE alias AS SELECT title, node_id, 0 AS hops FROM nodes")
    redirects = _glob(staging, "redirects")
    counters: dict[str, Any] = {}
    if redirects:
        con.execute(
            f"""CREATE TABLE red AS SELECT p.title AS title, r.target AS target
            FROM read_parquet({redirects}) r JOIN pages p USING (page_id)
            WHERE p.is_redirect"""
        )
        for hop in range(1, redirect_hops + 1):
            added = con.execute(
                f"""INSERT INTO alias
                SELECT red.title, a.node_id, {hop} FROM red JOIN alias a ON red.target = a.title
                WHERE a.hops = {hop - 1} AND red.title NOT IN (SELECT title FROM alias)"""
            ).fetchone()[0]
            if not added:
                break
        counters["redirects"] = con.execute("SELECT count(*) FROM red").fetchone()[0]
        counters["redirects_resolved"] = con.execute(
            "SELECT count(*) FROM alias WHERE hops > 0"
        ).fetchone()[0]
    else:
        counters["redirects"] = counters["redirects_resolved"] = 0
    counters["redirects_unresolved"] = counters["redirects"] - counters["redirects_resolved"]
    (out / "aliases").mkdir(parents=True)
    con.execute(
        f"""COPY (SELECT title, node_id, hops::INTEGER AS hops FROM alias WHERE hops > 0
                  ORDER BY title)
        TO '{out / "aliases" / "00000.parquet"}' (FORMAT parquet, COMPRESSION zstd)"""
    )
    links = _glob(staging, "links")
    link_ids = _glob(staging, "link_ids")
    sources = []
    if links:
        sources.append(f"SELECT src, target FROM read_parquet({links})")
    if link_ids:
        targets = _glob(staging, "linktargets")
        if targets is None:
            raise ValueError(
                "kg build: pagelinks uses the linktarget schema; give the linktarget.sql dump"
            )
        sources.append(
            f"SELECT l.src, t.title AS target FROM read_parquet({link_ids}) l "
            f"JOIN read_parquet({targets}) t USING (target_id)"  # namespace-0 targets only
        )
    if not sources:
        sources.append("SELECT NULL::BIGINT AS src, NULL::VARCHAR AS target WHERE false")
    con.execute(
        f"""CREATE TABLE raw AS
        SELECT s.node_id AS src, a.node_id AS dst, a.hops
        FROM ({" UNION ALL ".join(sources)}) l
        JOIN nodes s ON s.page_id = l.src
        LEFT JOIN alias a ON a.title = l.target"""
    )
    c = con.execute(
        """SELECT count(*), count(dst), count_if(hops > 0), count_if(src = dst) FROM raw"""
    ).fetchone()
    counters |= {
        "links": c[0],
        "links_to_missing_pages": c[0] - c[1],
        "links_via_redirect": c[2],
        "self_loops": c[3],
    }
    (out / "edges").mkdir(parents=True)
    con.execute(
        f"""COPY (SELECT DISTINCT src, dst FROM raw WHERE dst IS NOT NULL AND src != dst
                  ORDER BY src, dst)
        TO '{out / "edges" / "00000.parquet"}' (FORMAT parquet, COMPRESSION zstd)"""
    )
    edges = con.execute(
        f"SELECT count(*) FROM read_parquet('{out / 'edges' / '00000.parquet'}')"
    ).fetchone()[0]
    counters["duplicate_links"] = c[1] - c[3] - edges
    counters["edges"] = edges
    (out / "nodes").mkdir(parents=True)
    edges_file = f"read_parquet('{out / 'edges' / '00000.parquet'}')"
    con.execute(
        f"""COPY (
            SELECT n.node_id, n.page_id, n.title, n.is_disambiguation,
                   coalesce(o.d, 0)::BIGINT AS out_degree, coalesce(i.d, 0)::BIGINT AS in_degree
            FROM nodes n
            LEFT JOIN (SELECT src, count(*) d FROM {edges_file} GROUP BY src) o
                ON o.src = n.node_id
            LEFT JOIN (SELECT dst, count(*) d FROM {edges_file} GROUP BY dst) i
                ON i.dst = n.node_id
            ORDER BY n.node_id)
        TO '{out / "nodes" / "00000.parquet"}' (FORMAT parquet, COMPRESSION zstd)"""
    )
    counters["nodes"] = con.execute("SELECT count(*) FROM nodes").fetchone()[0]
    counters["disambiguation_nodes"] = con.execute(
        "SELECT count_if(is_disambiguation) FROM nodes"
    ).fetchone()[0]
    counters["isolated_nodes"] = con.execute(
        f"""SELECT count(*) FROM read_parquet('{out / "nodes" / "00000.parquet"}')
        WHERE in_degree = 0 AND out_degree = 0"""
    ).fetchone()[0]
    return counters


def build_kg(
    dumps: Iterable[str | Path | Dump],
    out: str | Path,
    *,
    redirect_hops: int = 5,
    memory_limit: str | None = None,
    progress: bool = False,
    keep_staging: bool = False,
) -> dict[str, Any]:
    """Build ``out/nodes`` and ``out/edges`` from the dumps; re-running with the same dump
    files does nothing, an interrupted build resumes at the first unstaged file."""
    t0 = time.perf_counter()
    dumps = [d if isinstance(d, Dump) else Dump.parse(d) for d in dumps]
    if not dumps:
        raise ValueError("dump: give at least one dump file")
    out = Path(out)
    if any(d.kind == "wikispeedia" for d in dumps):
        if len(dumps) > 1:
            raise ValueError("dump: wikispeedia=FOLDER is a whole graph; give it alone")
        from knowledge_graph.wikispeedia import read_wikispeedia

        ws = read_wikispeedia(dumps[0].path)
        stats = write_graph(out, ws["titles"], ws["src"], ws["dst"], source="wikispeedia")
        stats["links_to_missing_pages"] = ws["unknown_links"]
        stats["wall_seconds"] = round(time.perf_counter() - t0, 3)
        (out / "stats" / "build.json").write_text(json.dumps(stats, indent=2))
        return stats
    settings = {
        "format": FORMAT,
        "dumps": [{"kind": d.kind, "file": _fingerprint(d.path)} for d in dumps],
        "redirect_hops": redirect_hops,
    }
    success = out / "_SUCCESS.json"
    if success.exists() and json.loads(success.read_text()).get("settings") == settings:
        return json.loads((out / "stats" / "build.json").read_text()) | {"skipped_step": True}
    staging = out / "_staging"
    per_dump = []
    for i, dump in enumerate(dumps):
        key = hashlib.sha256(json.dumps(settings["dumps"][i]).encode()).hexdigest()[:16]
        folder = staging / f"{i:03d}-{dump.kind}-{key}"
        marker = folder / "_done.json"
        if marker.exists():
            per_dump.append(json.loads(marker.read_text()))
            continue
        log.info("staging %s dump %s", dump.kind, dump.path)
        counters = stage(dump, folder, progress=progress) | {"file": str(dump.path)}
        marker.write_text(json.dumps(counters))
        per_dump.append(counters)
    keep = {f"{i:03d}-" for i in range(len(dumps))}
    for old in staging.iterdir():  # folders of dumps no longer given
        if (
            old.is_dir()
            and not any(old.name.startswith(k) for k in keep)
            and old.name != "_duckdb_tmp"
        ):
            shutil.rmtree(old)
    # concepts/ and the vector cache hold node ids / titles of the old graph
    for name in ("nodes", "edges", "aliases", "stats", "concepts", "_cache"):
        shutil.rmtree(out / name, ignore_errors=True)
    success.unlink(missing_ok=True)
    counters = resolve(staging, out, redirect_hops=redirect_hops, memory_limit=memory_limit)
    stats = {
        "stage": "kg_build",
        "dumps": per_dump,
        **counters,
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    (out / "stats").mkdir(parents=True, exist_ok=True)
    (out / "stats" / "build.json").write_text(json.dumps(stats, indent=2))
    success.write_text(json.dumps({"settings": settings, "nodes": counters["nodes"]}))
    if not keep_staging:
        shutil.rmtree(staging / "_duckdb_tmp", ignore_errors=True)
    return stats


def read_edges(kg_dir: str | Path) -> tuple[Any, Any, int]:
    """(src int32, dst int32, n nodes) from ``edges/``, read file by file into preallocated
    arrays (no int64 copy of the whole edge list)."""
    import numpy as np

    kg_dir = Path(kg_dir)
    meta = pq.read_metadata(kg_dir / "nodes" / "00000.parquet")
    n = meta.num_rows
    files = sorted((kg_dir / "edges").glob("*.parquet"))
    total = sum(pq.read_metadata(f).num_rows for f in files)
    src, dst = np.empty(total, np.int32), np.empty(total, np.int32)
    pos = 0
    for f in files:
        pf = pq.ParquetFile(f)
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=["src", "dst"])
            k = t.num_rows
            src[pos : pos + k] = t.column("src").to_numpy()
            dst[pos : pos + k] = t.column("dst").to_numpy()
            pos += k
    return src, dst, n


def write_graph(
    out: str | Path,
    titles: list[str] | pa.Array,
    src: Any,
    dst: Any,
    *,
    is_disambiguation: Any = None,
    aliases: pa.Table | None = None,
    source: str = "edge list",
) -> dict[str, Any]:
    """A graph from arrays (e.g. the Wikispeedia TSVs, or another tool's link graph): node i
    is ``titles[i]``; self-loops and duplicate pairs are dropped and counted, as in a build.
    ``aliases`` (``title``, ``node_id``, ``hops``) become ``aliases/``."""
    import numpy as np

    out = Path(out)
    n = len(titles)
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    if len(src) != len(dst):
        raise ValueError(f"src and dst: lengths differ ({len(src)} vs {len(dst)})")
    if len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n):
        raise ValueError(f"src/dst: node ids must be in [0, {n})")
    loops = src == dst
    key = np.unique(src[~loops] * n + dst[~loops])
    s, d = key // n, key % n
    for name in ("nodes", "edges", "aliases", "stats", "concepts", "_cache", "_staging"):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "_SUCCESS.json").unlink(missing_ok=True)
    (out / "nodes").mkdir(parents=True)
    (out / "edges").mkdir()
    (out / "stats").mkdir()
    dis = np.zeros(n, bool) if is_disambiguation is None else np.asarray(is_disambiguation, bool)
    nodes = pa.table(
        {
            "node_id": np.arange(n, dtype=np.int64),
            "page_id": pa.nulls(n, pa.int64()),
            "title": pa.array(titles, pa.string()),
            "is_disambiguation": dis,
            "out_degree": np.bincount(s, minlength=n).astype(np.int64),
            "in_degree": np.bincount(d, minlength=n).astype(np.int64),
        },
        schema=NODES,
    )
    pq.write_table(nodes, out / "nodes" / "00000.parquet", compression="zstd")
    pq.write_table(pa.table({"src": s, "dst": d}, schema=EDGES), out / "edges" / "00000.parquet")
    if aliases is not None:
        (out / "aliases").mkdir()
        aliases = aliases.select(["title", "node_id", "hops"]).cast(ALIASES)
        ids = aliases.column("node_id").to_numpy()
        if len(ids) and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"aliases: node ids must be in [0, {n})")
        pq.write_table(aliases, out / "aliases" / "00000.parquet")
    stats = {
        "stage": "kg_build",
        "source": source,
        "links": len(src),
        "self_loops": int(loops.sum()),
        "duplicate_links": int((~loops).sum() - len(key)),
        "links_to_missing_pages": 0,
        "redirects_resolved": 0 if aliases is None else aliases.num_rows,
        "edges": len(key),
        "nodes": n,
        "disambiguation_nodes": int(dis.sum()),
        "isolated_nodes": int(
            ((nodes["out_degree"].to_numpy() == 0) & (nodes["in_degree"].to_numpy() == 0)).sum()
        ),
    }
    (out / "stats" / "build.json").write_text(json.dumps(stats, indent=2))
    (out / "_SUCCESS.json").write_text(json.dumps({"settings": {"source": source}, "nodes": n}))
    return stats
