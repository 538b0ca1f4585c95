"""Knowledge-graph scale: CSR build + PageRank on a Wikipedia-size power-law graph, and the
dump readers' throughput on the real fragment.

    python bench/kg_scale.py            # 7M nodes, 160M edges (about 3 minutes with generation)
    python bench/kg_scale.py --quick    # 700k nodes, 16M edges, < 1 minute
    python bench/kg_scale.py --iterations 46    # fixed iteration count (see --help)

The graph is generated in this process and saved as two int32 .npy files; a fresh child
process then loads them, builds the in-link CSR and runs PageRank (damping 0.85, L1
tolerance 1e-10), and reports its own peak RSS (``ru_maxrss``: the process's real high-water
mark, including numpy buffers that tracemalloc would not see). Degrees follow power laws:
destinations ``floor(n * u^3)`` (in-degree density ~ rank^-2/3, a few hubs take millions of
links), sources ``floor(n * u^1.5)``, both through a random permutation; self-loops dropped,
duplicate pairs (about 1%) kept. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def generate(n: int, m: int, seed: int = 0, chunk: int = 10_000_000) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    perm_in = rng.permutation(n).astype(np.int32)
    perm_out = rng.permutation(n).astype(np.int32)
    src, dst = np.empty(m, np.int32), np.empty(m, np.int32)
    for s in range(0, m, chunk):
        e = min(s + chunk, m)
        dst[s:e] = perm_in[(n * rng.random(e - s) ** 3).astype(np.int64)]
        src[s:e] = perm_out[(n * rng.random(e - s) ** 1.5).astype(np.int64)]
    keep = src != dst
    return src[keep], dst[keep]


def child(work: Path, n: int, iterations: int | None) -> None:
    """Load edges, build CSR, run PageRank; print one JSON line with timings and peak RSS."""
    from knowledge_graph.pagerank import in_csr, pagerank

    src, dst = np.load(work / "src.npy"), np.load(work / "dst.npy")
    in_csr(src[:10], dst[:10], n)  # compile (or load the numba cache) outside the timing
    pagerank(src[:10], dst[:10], n, max_iter=2)
    t0 = time.perf_counter()
    csr = in_csr(src, dst, n)
    t_csr = time.perf_counter() - t0
    t1 = time.perf_counter()
    if iterations:  # exactly this many iterations (tolerance never reached)
        pr = pagerank(src, dst, n, csr=csr, use_gpu=False, tol=1e-300, max_iter=iterations)
    else:
        pr = pagerank(src, dst, n, csr=csr, use_gpu=False)
    t_pr = time.perf_counter() - t1
    top = np.argsort(pr.scores)[::-1][:3]
    print(
        json.dumps(
            {
                "csr_s": round(t_csr, 2),
                "pagerank_s": round(t_pr, 2),
                "iterations": pr.iterations,
                "converged": pr.converged,
                "l1_change": pr.l1_change,
                "per_iteration_s": round(t_pr / pr.iterations, 3),
                "peak_rss_gib": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
                ),
                "sum": float(pr.scores.sum()),
                "top_in_degree": np.bincount(dst, minlength=n)[top].tolist(),
            }
        )
    )


def readers() -> dict:
    """Pages/s of the XML reader (+ link extraction) on the shared real dump fragment."""
    import os

    shared = Path(os.environ.get("ZFOUNDRY_SHARED_DATA", REPO.parent / "shared" / "data"))
    dump = (
        shared
        / "wikipedia"
        / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )
    if not dump.exists():
        return {"xml": f"skipped: {dump} not found"}
    from knowledge_graph.dumps.xml import XmlDump
    from knowledge_graph.wikitext import extract_links

    out = {}
    for label, parse_links in (("xml_pages_per_s", False), ("xml_pages_with_links_per_s", True)):
        t0 = time.perf_counter()
        dump_ = XmlDump(dump)
        pages = links = 0
        for page in dump_.pages():
            pages += 1
            if parse_links and page.ns == 0 and page.redirect is None:
                links += len(extract_links(page.text, dump_.siteinfo))
        wall = time.perf_counter() - t0
        out[label] = round(pages / wall, 1)
        out["xml_mb_per_s"] = round(dump_.bytes_read / 2**20 / wall, 1)
        if parse_links:
            out["xml_links"] = links
    out["xml_pages"] = pages
    return out


def sql_reader(work: Path, rows: int = 2_000_000) -> dict:
    """Rows/s of ``iter_pagelinks`` on a synthetic current-schema pagelinks.sql.gz (mysqldump
    layout, ~1 MB INSERT lines), and of ``read_page`` on a 12-column page.sql.gz."""
    import gzip

    from knowledge_graph.dumps.sql import iter_pagelinks, read_page

    rng = np.random.default_rng(0)
    path = work / "synthetic-pagelinks.sql.gz"
    head = (
        "CREATE TABLE `pagelinks` (\n  `pl_from` int(8) unsigned NOT NULL DEFAULT 0,\n"
        "  `pl_from_namespace` int(11) NOT NULL DEFAULT 0,\n"
        "  `pl_target_id` bigint(20) unsigned NOT NULL,\n  PRIMARY KEY (`pl_from`)\n"
        ") ENGINE=InnoDB;\n"
    )
    src = np.sort(rng.integers(1, 70_000_000, rows))
    dst = rng.integers(1, 200_000_000, rows)
    with gzip.open(path, "wt", compresslevel=6) as f:
        f.write(head)
        for s in range(0, rows, 40_000):
            body = ",".join(
                f"({a},0,{b})"
                for a, b in zip(src[s : s + 40_000], dst[s : s + 40_000], strict=True)
            )
            f.write(f"INSERT INTO `pagelinks` VALUES {body};\n")
    t0 = time.perf_counter()
    got = sum(b.num_rows for b in iter_pagelinks(path))
    pagelinks_rate = got / (time.perf_counter() - t0)
    page = work / "synthetic-page.sql.gz"
    with gzip.open(page, "wt", compresslevel=6) as f:
        f.write(
            "CREATE TABLE `page` (\n  `page_id` int(8) unsigned NOT NULL,\n"
            "  `page_namespace` int(11) NOT NULL,\n  `page_title` varbinary(255) NOT NULL,\n"
            "  `page_is_redirect` tinyint(1) unsigned NOT NULL DEFAULT 0,\n"
            "  `page_is_new` tinyint(1) unsigned NOT NULL DEFAULT 0,\n"
            "  `page_random` double unsigned NOT NULL,\n  `page_touched` binary(14) NOT NULL,\n"
            "  `page_links_updated` varbinary(14) DEFAULT NULL,\n"
            "  `page_latest` int(8) unsigned NOT NULL,\n  `page_len` int(8) unsigned NOT NULL,\n"
            "  `page_content_model` varbinary(32) DEFAULT NULL,\n"
            "  `page_lang` varbinary(35) DEFAULT NULL,\n  PRIMARY KEY (`page_id`)\n"
            ") ENGINE=InnoDB;\n"
        )
        n_pages = rows // 4
        for s in range(0, n_pages, 5_000):
            body = ",".join(
                f"({i},{i % 3},'Title_{i}_of_a_page',{i % 7 == 0:d},0,0.{i},'20240701000000',"
                f"'20240701000000',{i},{i % 5000},'wikitext',NULL)"
                for i in range(s + 1, min(s + 5_000, n_pages) + 1)
            )
            f.write(f"INSERT INTO `page` VALUES {body};\n")
    t0 = time.perf_counter()
    pages = read_page(page).num_rows
    page_rate = pages / (time.perf_counter() - t0)
    return {
        "sql_pagelinks_rows_per_s": round(pagelinks_rate),
        "sql_page_rows_per_s": round(page_rate),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, default=7_000_000)
    ap.add_argument("--edges", type=int, default=160_000_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/zfoundry-bench/kg"))
    ap.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="run exactly this many PageRank iterations (this random graph converges in ~17; "
        "the real Wikispeedia graph needs 46 to 1e-10)",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.nodes, args.edges = 700_000, 16_000_000
    if args.child:
        child(args.work, args.nodes, args.iterations)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    src, dst = generate(args.nodes, args.edges)
    np.save(args.work / "src.npy", src)
    np.save(args.work / "dst.npy", dst)
    print(
        f"generated {len(src):,} edges over {args.nodes:,} nodes "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    del src, dst
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--nodes",
        str(args.nodes),
        "--work",
        str(args.work),
    ]
    if args.iterations:
        cmd += ["--iterations", str(args.iterations)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    measured = json.loads(res.stdout.strip().splitlines()[-1])
    total = measured["csr_s"] + measured["pagerank_s"]
    print(
        f"CSR {measured['csr_s']} s + PageRank {measured['pagerank_s']} s "
        f"({measured['iterations']} iterations, {measured['per_iteration_s']} s each) = "
        f"{total:.1f} s, peak RSS {measured['peak_rss_gib']} GiB"
    )
    reader = readers() | sql_reader(args.work)
    print(reader)
    print(
        json.dumps(
            {
                "bench": "kg_scale",
                "nodes": args.nodes,
                "edges": args.edges,
                "csr_plus_pagerank_s": round(total, 2),
                **measured,
                **reader,
            }
        )
    )


if __name__ == "__main__":
    main()
