"""Knowledge graph: build (XML snippets, the real fragment), PageRank (vs networkx / igraph on
the Wikispeedia graph), prune cut, stats, CLI."""

from __future__ import annotations

import bz2
import json
import re
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from knowledge_graph.build import Dump, build_kg, read_edges, write_graph
from knowledge_graph.dumps import DumpTruncatedWarning
from knowledge_graph.pagerank import in_csr, pagerank
from knowledge_graph.prune import PruneConfig, kg_stats, prune
from pipelines.cli import app
from tests.conftest import SHARED_DATA

FRAGMENT = (
    SHARED_DATA
    / "wikipedia"
    / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
WIKISPEEDIA = SHARED_DATA / "wikispeedia"

HEAD = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">
<siteinfo><sitename>Wikipedia</sitename><dbname>enwiki</dbname>
<base>https://en.wikipedia.org/wiki/Main_Page</base><case>first-letter</case>
<namespaces><namespace key="0" case="first-letter" />
<namespace key="10" case="first-letter">Template</namespace>
<namespace key="14" case="first-letter">Category</namespace></namespaces></siteinfo>
"""


def page(pid: int, title: str, text: str = "", ns: int = 0, redirect: str | None = None) -> str:
    red = f'<redirect title="{redirect}" />' if redirect else ""
    return (
        f"<page><title>{title}</title><ns>{ns}</ns><id>{pid}</id>{red}<revision><id>{pid}1</id>"
        f'<text xml:space="preserve">{text}</text></revision></page>\n'
    )


PAGES = [
    page(
        1,
        "Paris",
        "[[France]] capital, on the [[seine|Seine]]. [[Paris]] again. "
        "[[France#History|French]] [[Category:Cities]] [[Missing page]] [[fr:Paris]]",
    ),
    page(2, "France", "Country; see [[Paris]] and [[Republic of France]]."),
    page(3, "Seine", "River through [[Paris]] in [[Frankreich]]. [[Template:River]] {{Infobox}}"),
    page(4, "Republic of France", "#REDIRECT [[France]]", redirect="France"),
    page(5, "Frankreich", "#REDIRECT [[Republic of France]]", redirect="Republic of France"),
    page(6, "Mercury", "'''Mercury''' may refer to: [[Mercury (planet)]] {{disambiguation}}"),
    page(7, "Category:Cities", "[[Paris]]", ns=14),
    page(8, "Lonely", "No links at all."),
]


def write_dump(path, pages, *, cut: int | None = None):
    text = HEAD + "".join(pages) + "</mediawiki>\n"
    data = text.encode()
    if cut is not None:
        data = data[:cut]
    path.write_bytes(data)
    return path


def titles_edges(out):
    nodes = pq.read_table(out / "nodes").to_pylist()
    title = {n["node_id"]: n["title"] for n in nodes}
    edges = pq.read_table(out / "edges").to_pylist()
    return nodes, {(title[e["src"]], title[e["dst"]]) for e in edges}


def test_build_from_xml_snippets(tmp_path):
    dump = write_dump(tmp_path / "snip-pages-articles.xml", PAGES)
    stats = build_kg([dump], tmp_path / "kg")
    nodes, edges = titles_edges(tmp_path / "kg")
    # one node per namespace-0 article that is not a redirect
    assert [n["title"] for n in nodes] == ["Paris", "France", "Seine", "Mercury", "Lonely"]
    assert [n["node_id"] for n in nodes] == [0, 1, 2, 3, 4]
    assert {n["title"] for n in nodes if n["is_disambiguation"]} == {"Mercury"}
    assert edges == {
        ("Paris", "France"),  # [[France]] and [[France#History|French]]: one edge
        ("Paris", "Seine"),  # [[seine|Seine]]: first letter upper-cased
        ("France", "Paris"),
        ("Seine", "Paris"),
        ("Seine", "France"),  # via Frankreich -> Republic of France -> France (2 hops)
    }
    assert stats["nodes"] == 5 and stats["edges"] == 5
    assert stats["redirects"] == 2 and stats["redirects_resolved"] == 2
    # Paris: France, Seine, Paris, France, Missing page (not fr:, Category:); France: Paris,
    # Republic of France; Seine: Paris, Frankreich (not Template:); Mercury: Mercury (planet)
    assert stats["links"] == 10
    assert stats["links_to_missing_pages"] == 2  # Missing page, Mercury (planet)
    assert stats["links_via_redirect"] == 2
    assert stats["self_loops"] == 2  # Paris -> Paris, France -> Republic of France
    assert stats["duplicate_links"] == 1  # France twice from Paris
    assert stats["isolated_nodes"] == 2  # Mercury (its link is missing), Lonely
    by = {n["title"]: n for n in nodes}
    assert (by["Paris"]["out_degree"], by["Paris"]["in_degree"]) == (2, 2)
    aliases = pq.read_table(tmp_path / "kg" / "aliases").to_pylist()
    assert aliases == [  # redirect titles -> the node they resolve to, and how many hops
        {"title": "Frankreich", "node_id": 1, "hops": 2},
        {"title": "Republic of France", "node_id": 1, "hops": 1},
    ]
    again = build_kg([dump], tmp_path / "kg")  # same files: nothing to do
    assert again.get("skipped_step")


def test_build_truncated_dump_keeps_complete_pages(tmp_path):
    full = HEAD + "".join(PAGES)
    cut = full.index("<page><title>Seine") + 40  # inside the Seine page
    dump = write_dump(tmp_path / "cut-pages-articles.xml", PAGES, cut=cut)
    with pytest.warns(DumpTruncatedWarning, match="France"):
        stats = build_kg([dump], tmp_path / "kg")
    nodes, edges = titles_edges(tmp_path / "kg")
    assert [n["title"] for n in nodes] == ["Paris", "France"]
    assert edges == {("Paris", "France"), ("France", "Paris")}  # Seine was cut: missing
    assert "France" in stats["dumps"][0]["truncated"][0]


def test_dump_kind_from_name_or_flag(tmp_path):
    for name, kind in [
        ("enwiki-latest-pages-articles1.xml-p1p30.bz2", "xml"),
        ("enwiki-latest-page.sql.gz", "page"),
        ("enwiki-latest-pagelinks.sql.gz", "pagelinks"),
        ("enwiki-latest-linktarget.sql.gz", "linktarget"),
        ("enwiki-latest-redirect.sql.gz", "redirect"),
        ("enwiki-latest-page_props.sql.gz", "page_props"),
    ]:
        (tmp_path / name).write_bytes(b"")
        assert Dump.parse(tmp_path / name).kind == kind
    (tmp_path / "mystery.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="KIND=PATH"):
        Dump.parse(tmp_path / "mystery.gz")
    assert Dump.parse(f"redirect={tmp_path / 'mystery.gz'}").kind == "redirect"
    with pytest.raises(FileNotFoundError):
        Dump.parse(tmp_path / "absent.xml")


@pytest.fixture(scope="module")
def wikispeedia():
    if not WIKISPEEDIA.exists():
        pytest.skip(f"shared sample data not found at {WIKISPEEDIA}")
    from knowledge_graph.wikispeedia import read_wikispeedia

    return read_wikispeedia(WIKISPEEDIA)


def test_pagerank_equals_networkx_and_igraph_on_wikispeedia(wikispeedia):
    import igraph as ig
    import networkx as nx

    titles, src, dst = wikispeedia["titles"], wikispeedia["src"], wikispeedia["dst"]
    n = len(titles)
    assert n == 4598 and len(src) == 119_879  # non-comment lines of the TSVs
    ours = pagerank(src, dst, n)
    assert ours.converged and ours.l1_change < 1e-10
    assert abs(ours.scores.sum() - 1.0) < 1e-12
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(zip(src.tolist(), dst.tolist(), strict=True))
    ref = nx.pagerank(graph, alpha=0.85, tol=1e-13, max_iter=10_000)
    ref = np.array([ref[i] for i in range(n)])
    assert np.abs(ours.scores - ref).max() < 1e-10
    g = ig.Graph(n=n, edges=np.column_stack([src, dst]).tolist(), directed=True)
    prpack = np.array(g.pagerank(damping=0.85, directed=True))
    assert np.abs(ours.scores - prpack).max() < 1e-10
    top = [titles[i] for i in np.argsort(ours.scores)[::-1][:3]]
    assert top == [titles[i] for i in np.argsort(ref)[::-1][:3]]
    assert "United States" in top


def test_in_csr_groups_in_links():
    src = np.array([0, 2, 1, 2, 3])
    dst = np.array([1, 1, 2, 0, 1])
    indptr, indices = in_csr(src, dst, 4)
    assert indptr.tolist() == [0, 1, 4, 5, 5]
    assert indices[indptr[1] : indptr[2]].tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match=r"ids must be in \[0, 4\)"):
        in_csr(np.array([0]), np.array([4]), 4)


def test_pagerank_dangling_mass_is_spread_uniformly():
    # 0 -> 1; node 1 has no out-links, so its mass is spread over both nodes
    res = pagerank(np.array([0]), np.array([1]), 2, damping=0.85, tol=1e-14)
    d = 0.85
    p0 = (1.0 / 2) / (1 + d / 2)  # p0 = (d p1 + 1 - d) / 2 with p1 = 1 - p0
    assert res.scores == pytest.approx([p0, 1 - p0], abs=1e-12)


def test_prune_cut_and_stats_on_wikispeedia(tmp_path, wikispeedia):
    out = tmp_path / "ws"
    w = wikispeedia
    write_graph(out, w["titles"], w["src"], w["dst"], source="wikispeedia")
    stats = prune(out, PruneConfig(keep_fraction=0.25, min_in_links=1))
    nodes = pq.read_table(out / "nodes").to_pandas()
    pr = nodes["pagerank"].to_numpy()
    assert abs(pr.sum() - 1.0) < 1e-12
    ref = pagerank(*read_edges(out))
    assert np.array_equal(pr, ref.scores)
    kept = nodes["kept"].to_numpy()
    assert stats["kept"] == kept.sum() <= round(0.25 * len(nodes))
    # every kept node outranks every dropped node that has in-links
    referenced = nodes["in_degree"].to_numpy() >= 1
    assert pr[kept].min() >= pr[~kept & referenced].max()
    assert not kept[~referenced].any()  # never-referenced concepts are cut
    by_score = prune(out, PruneConfig(min_score=1.0 / len(nodes), min_in_links=0))
    kept2 = pq.read_table(out / "nodes", columns=["kept"]).column("kept").to_numpy()
    assert by_score["kept"] == int((pr >= 1.0 / len(nodes)).sum()) == kept2.sum()
    summary = kg_stats(out, top=3)
    assert summary["top"][0]["title"] == w["titles"][int(np.argmax(pr))]
    assert summary["pagerank_quantiles"]["p100"] == pr.max()


def test_prune_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="keep_fraction"):
        PruneConfig(keep_fraction=1.5)
    with pytest.raises(ValueError, match="damping"):
        PruneConfig(damping=1.0)
    with pytest.raises(FileNotFoundError, match="kg build"):
        prune(tmp_path, PruneConfig())


def test_cli_build_prune_stats_on_the_real_fragment(tmp_path):
    if not FRAGMENT.exists():
        pytest.skip(f"shared sample data not found at {FRAGMENT}")
    raw = bz2.decompress(FRAGMENT.read_bytes()).decode()
    pages = re.findall(r"<page>.*?</page>", raw, flags=re.S)
    ns0 = [p for p in pages if "<ns>0</ns>" in p]
    redirects = [p for p in ns0 if "<redirect " in p]
    runner = CliRunner()
    out = tmp_path / "kg"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DumpTruncatedWarning)  # the fragment is complete
        res = runner.invoke(
            app, ["kg", "build", "--dump", str(FRAGMENT), "--out", str(out), "--json"]
        )
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    assert stats["nodes"] == len(ns0) - len(redirects) == 106
    assert stats["dumps"][0]["pages_read"] == len(pages)
    assert stats["redirects"] == len(redirects)
    # Anarchism's wikitext links [[agriculture]] (first letter lower-case): an article here
    _, edges = titles_edges(out)
    assert ("Anarchism", "Agriculture") in edges
    assert stats["edges"] == len(edges)
    res = runner.invoke(app, ["kg", "prune", str(out), "--keep-fraction", "0.5", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["converged"]
    plot = tmp_path / "pr.png"
    res = runner.invoke(app, ["kg", "stats", str(out), "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    assert "Top concepts" in res.stdout and plot.stat().st_size > 1000
    res = runner.invoke(app, ["kg", "prune", str(tmp_path / "nothing")])
    assert res.exit_code != 0 and "kg build" in res.output


def test_build_from_sql_dumps_matches_the_xml_build(tmp_path):
    """The same wiki as PAGES, as the SQL dumps (current pagelinks -> linktarget schema, and
    the old title schema): the same nodes, edges and counters as the XML build."""
    from tests.knowledge_graph.test_sql_dump import (
        LINKTARGET_COLUMNS,
        PAGE_COLUMNS,
        PAGE_PROPS_COLUMNS,
        REDIRECT_COLUMNS,
        dump_text,
        write,
    )

    def page_row(pid, ns, title, red):
        return f"({pid},{ns},'{title}',{red},0,0.5,'20240701','20240701',1,10,'wikitext',NULL)"

    pages = [
        (1, 0, "Paris", 0), (2, 0, "France", 0), (3, 0, "Seine", 0),
        (4, 0, "Republic_of_France", 1), (5, 0, "Frankreich", 1), (6, 0, "Mercury", 0),
        (7, 14, "Cities", 0), (8, 0, "Lonely", 0),
    ]  # fmt: skip
    targets = {  # lt_id -> (namespace, title)
        1: (0, "France"), 2: (0, "Seine"), 3: (0, "Paris"), 4: (0, "Missing_page"),
        5: (0, "Republic_of_France"), 6: (0, "Frankreich"), 7: (0, "Mercury_(planet)"),
        8: (10, "River"),
    }  # fmt: skip
    # the XML build's links (a page links France twice: pagelinks stores a pair once, so the
    # duplicate count differs; Category:Cities -> Paris is from namespace 14: ignored)
    links = [(1, 1), (1, 2), (1, 3), (1, 4), (2, 3), (2, 5), (3, 3), (3, 6), (3, 8), (6, 7)]
    links.append((7, 3))
    d = tmp_path / "dumps"
    d.mkdir()
    rows = ",".join(page_row(*p) for p in pages)
    write(d / "w-page.sql.gz", dump_text("page", PAGE_COLUMNS, [rows]))
    red = "(4,0,'France','',''),(5,0,'Republic_of_France','','')"
    write(d / "w-redirect.sql.gz", dump_text("redirect", REDIRECT_COLUMNS, [red]))
    props = "(6,'disambiguation','',NULL),(1,'wikibase_item','Q90',NULL)"
    write(d / "w-page_props.sql.gz", dump_text("page_props", PAGE_PROPS_COLUMNS, [props]))
    lt = ",".join(f"({i},{ns},'{t}')" for i, (ns, t) in targets.items())
    write(d / "w-linktarget.sql.gz", dump_text("linktarget", LINKTARGET_COLUMNS, [lt]))
    ns_of = {p[0]: p[1] for p in pages}
    pl_new = ",".join(f"({s},{ns_of[s]},{t})" for s, t in links)
    columns_new = (
        "  `pl_from` int(8) unsigned NOT NULL DEFAULT 0,\n"
        "  `pl_from_namespace` int(11) NOT NULL DEFAULT 0,\n"
        "  `pl_target_id` bigint(20) unsigned NOT NULL,\n"
        "  PRIMARY KEY (`pl_from`,`pl_target_id`)"
    )
    write(d / "w-pagelinks.sql.gz", dump_text("pagelinks", columns_new, [pl_new]))
    common = [d / f"w-{k}.sql.gz" for k in ("page", "redirect", "page_props")]
    stats = build_kg([*common, d / "w-pagelinks.sql.gz", d / "w-linktarget.sql.gz"], tmp_path / "a")
    nodes, edges = titles_edges(tmp_path / "a")
    assert [n["title"] for n in nodes] == ["Paris", "France", "Seine", "Mercury", "Lonely"]
    assert {n["title"] for n in nodes if n["is_disambiguation"]} == {"Mercury"}
    want = {
        ("Paris", "France"), ("Paris", "Seine"), ("France", "Paris"), ("Seine", "Paris"),
        ("Seine", "France"),
    }  # fmt: skip
    assert edges == want
    assert stats["links"] == 9  # the 10 namespace-0 rows minus the Template:River target
    assert stats["links_to_missing_pages"] == 2
    assert stats["links_via_redirect"] == 2 and stats["self_loops"] == 2
    assert stats["redirects_resolved"] == 2 and stats["edges"] == 5
    # the old schema: titles in pagelinks itself
    pl_old = ",".join(f"({s},{targets[t][0]},'{targets[t][1]}',{ns_of[s]})" for s, t in links)
    columns_old = (
        "  `pl_from` int(8) unsigned NOT NULL DEFAULT 0,\n"
        "  `pl_namespace` int(11) NOT NULL DEFAULT 0,\n"
        "  `pl_title` varbinary(255) NOT NULL DEFAULT '',\n"
        "  `pl_from_namespace` int(11) NOT NULL DEFAULT 0,\n"
        "  PRIMARY KEY (`pl_from`,`pl_namespace`,`pl_title`)"
    )
    write(d / "old-pagelinks.sql.gz", dump_text("pagelinks", columns_old, [pl_old]))
    old = build_kg([*common, d / "old-pagelinks.sql.gz"], tmp_path / "b")
    assert titles_edges(tmp_path / "b")[1] == want
    assert {k: old[k] for k in ("links", "edges", "self_loops")} == {
        k: stats[k] for k in ("links", "edges", "self_loops")
    }
    with pytest.raises(ValueError, match="linktarget"):
        build_kg([*common, d / "w-pagelinks.sql.gz"], tmp_path / "c")
