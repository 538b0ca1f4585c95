"""XmlDump: hand-written dumps (any schema, non-English siteinfo, compressions, cut files) and
the real enwiki fragment checked against values counted independently from its raw text."""

from __future__ import annotations

import bz2
import gc
import gzip
import html
import re
import threading
import tracemalloc
import warnings
from collections import Counter
from pathlib import Path
from xml.etree.ElementTree import Element

import pytest

from knowledge_graph.dumps import DumpTruncatedWarning
from knowledge_graph.dumps.xml import Page, SiteInfo, XmlDump
from knowledge_graph.wikitext import extract_links
from tests.conftest import SHARED_DATA

FRAGMENT = (
    SHARED_DATA
    / "wikipedia"
    / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)

FR_SITEINFO = """  <siteinfo>
    <sitename>Wikipédia</sitename>
    <dbname>frwiki</dbname>
    <base>https://fr.wikipedia.org/wiki/Wikip%C3%A9dia:Accueil_principal</base>
    <generator>MediaWiki 1.42</generator>
    <case>first-letter</case>
    <namespaces>
      <namespace key="-1" case="first-letter">Spécial</namespace>
      <namespace key="0" case="first-letter" />
      <namespace key="4" case="first-letter">Wikipédia</namespace>
      <namespace key="6" case="first-letter">Fichier</namespace>
      <namespace key="10" case="first-letter">Modèle</namespace>
      <namespace key="14" case="first-letter">Catégorie</namespace>
    </namespaces>
  </siteinfo>
"""


def page_xml(page_id: int, title: str, text: str, ns: int = 0, redirect: str | None = None) -> str:
    redirect_tag = f'    <redirect title="{html.escape(redirect)}" />\n' if redirect else ""
    return (
        f"  <page>\n    <title>{html.escape(title)}</title>\n    <ns>{ns}</ns>\n"
        f"    <id>{page_id}</id>\n{redirect_tag}    <revision>\n      <id>{page_id * 10}</id>\n"
        f'      <text xml:space="preserve">{html.escape(text)}</text>\n'
        f"    </revision>\n  </page>\n"
    )


def dump_xml(pages: list[str], siteinfo: str = FR_SITEINFO, schema: str | None = "0.11") -> str:
    xmlns = f' xmlns="http://www.mediawiki.org/xml/export-{schema}/"' if schema else ""
    head = f'<mediawiki{xmlns} version="{schema}" xml:lang="fr">\n'
    return head + siteinfo + "".join(pages) + "</mediawiki>\n"


PARIS = (
    "'''Paris''' est la capitale de la [[France]], sur la [[Seine|Seine]].\n"
    "[[Fichier:Paris.jpg|vignette|La [[tour Eiffel]] vue du [[Trocadéro]]]]\n"
    "{{Modèle:Palette}} [[Modèle:Palette]] [[Wikipédia:Accueil]] [[en:Paris]]\n"
    "[[Catégorie:Ville de France]] [[Category:Also a category]]"
)
FR_PAGES = [
    page_xml(1, "Paris", PARIS),
    page_xml(2, "Capitale de la France", "#REDIRECTION [[Paris]]", redirect="Paris"),
    page_xml(3, "Modèle:Palette", "<noinclude>[[Catégorie:Modèle]]</noinclude>", ns=10),
    page_xml(4, "Catégorie:Ville de France", "[[Catégorie:Ville]]", ns=14),
    page_xml(5, "AT&T", "Texte & <b>balises</b> [[Télécommunications]]"),
]


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def read_all(path: Path) -> tuple[XmlDump, list[Page]]:
    dump = XmlDump(path)
    return dump, list(dump.pages())


def make_pages(n: int, start: int = 1, words: int = 150) -> list[str]:
    """``n`` articles with varied text (~1 KB each), so that bz2 level 1 spans several blocks."""
    return [
        page_xml(
            i, f"Article {i}", " ".join(f"w{(i * 7919 + j * 104729) % 99991}" for j in range(words))
        )
        for i in range(start, start + n)
    ]


# --- hand-written dumps ---------------------------------------------------------------------


def test_reads_pages_redirects_and_french_siteinfo(tmp_path):
    dump, pages = read_all(write(tmp_path / "frwiki.xml", dump_xml(FR_PAGES)))
    assert [(p.page_id, p.ns, p.title, p.redirect) for p in pages] == [
        (1, 0, "Paris", None),
        (2, 0, "Capitale de la France", "Paris"),
        (3, 10, "Modèle:Palette", None),
        (4, 14, "Catégorie:Ville de France", None),
        (5, 0, "AT&T", None),
    ]
    assert pages[0].text == PARIS
    assert pages[4].text == "Texte & <b>balises</b> [[Télécommunications]]"
    site = dump.siteinfo
    assert (site.sitename, site.dbname, site.case) == ("Wikipédia", "frwiki", "first-letter")
    assert site.namespaces == {
        -1: "Spécial",
        0: "",
        4: "Wikipédia",
        6: "Fichier",
        10: "Modèle",
        14: "Catégorie",
    }
    assert dump.pages_read == 5
    assert dump.truncated is None
    # Namespace names come from the siteinfo: "Catégorie", "Fichier" and "Modèle" are not
    # namespaces on English Wikipedia, where they would be article titles.
    assert extract_links(PARIS, site) == ["France", "Seine", "Tour Eiffel", "Trocadéro"]
    english = extract_links(PARIS, SiteInfo.default())
    assert "Catégorie:Ville de France" in english
    assert "Fichier:Paris.jpg" not in english  # cut at "[[": the caption holds links


def test_split_namespace_local_and_canonical_names():
    fr = SiteInfo("Wikipédia", "frwiki", "", "first-letter", {0: "", 6: "Fichier", 14: "Catégorie"})
    assert fr.split_namespace("Catégorie:Ville de France") == (14, "Ville de France")
    assert fr.split_namespace("catégorie : Ville") == (14, "Ville")
    assert fr.split_namespace("Category:Cities") == (14, "Cities")  # canonical English name
    assert fr.split_namespace("Image:Paris.jpg") == (6, "Paris.jpg")
    assert fr.split_namespace("Fichier:Paris.jpg") == (6, "Paris.jpg")
    assert fr.split_namespace("Project:Accueil") == (4, "Accueil")
    assert fr.split_namespace("User_talk:X") == (3, "X")
    assert fr.split_namespace("Star Wars: Episode I") == (0, "Star Wars: Episode I")
    assert fr.split_namespace("Paris") == (0, "Paris")
    assert fr.split_namespace(":Paris") == (0, ":Paris")
    en = SiteInfo.default()
    assert en.split_namespace("Catégorie:Ville") == (0, "Catégorie:Ville")
    assert en.split_namespace("Wikipedia_talk:Foo") == (5, "Foo")
    assert en.split_namespace("Module:Citation") == (828, "Citation")
    assert en.split_namespace("MediaWiki:Common.css") == (8, "Common.css")
    with pytest.raises(ValueError, match="case"):
        SiteInfo("x", "x", "", "lower", {})


@pytest.mark.parametrize("schema", ["0.10", "0.11", None])
def test_any_export_schema(tmp_path, schema):
    _, pages = read_all(write(tmp_path / "d.xml", dump_xml(FR_PAGES[:2], schema=schema)))
    assert [p.title for p in pages] == ["Paris", "Capitale de la France"]


def test_siteinfo_defaults_and_old_schema_without_ns(tmp_path):
    old = page_xml(7, "Template:Infobox", "x").replace("    <ns>0</ns>\n", "")
    dump = XmlDump(write(tmp_path / "old.xml", dump_xml([old], siteinfo="", schema="0.3")))
    assert dump.siteinfo == SiteInfo.default()
    assert [(p.ns, p.title) for p in dump.pages()] == [(10, "Template:Infobox")]


def test_last_revision_and_deleted_text(tmp_path):
    two = page_xml(8, "History", "old text").replace(
        "    </revision>\n",
        '    </revision>\n    <revision><text xml:space="preserve">new text</text></revision>\n',
    )
    deleted = page_xml(9, "Hidden", "x").replace(
        '<text xml:space="preserve">x</text>', '<text deleted="deleted" />'
    )
    _, pages = read_all(write(tmp_path / "d.xml", dump_xml([two, deleted])))
    assert [(p.title, p.text) for p in pages] == [("History", "new text"), ("Hidden", "")]


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress])
def test_compressed_picked_by_magic_bytes_not_suffix(tmp_path, compress):
    xml = dump_xml(FR_PAGES)
    dump, pages = read_all(write(tmp_path / "looks-plain.xml", compress(xml.encode())))
    assert [p.page_id for p in pages] == [1, 2, 3, 4, 5]
    assert dump.bytes_read == len(xml.encode())
    assert dump.siteinfo.namespaces[14] == "Catégorie"


def test_multistream_bz2_reads_every_stream(tmp_path):
    head = dump_xml([]).replace("</mediawiki>\n", "")
    parts = [head, *("".join(make_pages(40, start)) for start in (1, 41, 81)), "</mediawiki>\n"]
    data = b"".join(bz2.compress(p.encode()) for p in parts)
    assert data.count(b"BZh9") == 5
    dump, pages = read_all(write(tmp_path / "multi.xml.bz2", data))
    assert [p.page_id for p in pages] == list(range(1, 121))
    assert dump.truncated is None


def test_rejects_unsupported_compression(tmp_path):
    with pytest.raises(ValueError, match="xz"):
        XmlDump(write(tmp_path / "d.xml.xz", b"\xfd7zXZ\x00rest"))


# --- cut and malformed dumps ----------------------------------------------------------------


def test_plain_xml_cut_mid_page(tmp_path):
    xml = dump_xml(FR_PAGES)
    cut = xml.index("Texte &amp;")  # inside the <text> of the last page, "AT&T"
    path = write(tmp_path / "cut.xml", xml[:cut])
    dump = XmlDump(path)
    with pytest.warns(DumpTruncatedWarning) as caught:
        pages = list(dump.pages())
    assert [p.title for p in pages] == [
        "Paris",
        "Capitale de la France",
        "Modèle:Palette",
        "Catégorie:Ville de France",
    ]
    message = str(caught[0].message)
    assert str(path) in message and "'Catégorie:Ville de France'" in message
    assert "4 complete pages" in message and str(len(xml[:cut].encode())) in message
    assert dump.truncated["pages_read"] == 4
    assert dump.truncated["last_title"] == "Catégorie:Ville de France"
    assert dump.truncated["uncompressed_bytes"] == len(xml[:cut].encode())


def test_plain_xml_cut_right_after_a_page(tmp_path):
    xml = dump_xml(FR_PAGES)
    cut = xml.index("</page>") + len("</page>\n")
    dump = XmlDump(write(tmp_path / "cut.xml", xml[:cut]))
    with pytest.warns(DumpTruncatedWarning, match="'Paris'"):
        assert [p.title for p in dump.pages()] == ["Paris"]


def test_bz2_cut_mid_stream(tmp_path):
    xml = dump_xml(make_pages(400)).encode()
    data = bz2.compress(xml, compresslevel=1)  # 100 KB blocks: several complete before the cut
    cut = data[: len(data) * 2 // 3]
    # Independently: what a decompressor recovers from the cut bytes, and its complete pages.
    recovered = bz2.BZ2Decompressor().decompress(cut)
    complete = recovered.count(b"</page>")
    assert 0 < complete < 400
    last = re.findall(rb"<title>([^<]*)</title>", recovered[: recovered.rindex(b"</page>")])[-1]
    dump = XmlDump(write(tmp_path / "cut.xml.bz2", cut))
    with pytest.warns(DumpTruncatedWarning, match=f"'{last.decode()}'") as caught:
        pages = list(dump.pages())
    assert [p.page_id for p in pages] == list(range(1, complete + 1))
    assert dump.truncated["last_title"] == last.decode() == pages[-1].title
    assert dump.truncated["uncompressed_bytes"] == len(recovered)
    assert "compressed stream ended early" in str(caught[0].message)


def test_multistream_bz2_cut_in_second_stream(tmp_path):
    head = dump_xml([]).replace("</mediawiki>\n", "")
    first = bz2.compress((head + "".join(make_pages(30))).encode())
    second = bz2.compress("".join(make_pages(30, start=31)).encode())
    dump = XmlDump(write(tmp_path / "cut.xml.bz2", first + second[: len(second) // 2]))
    with pytest.warns(DumpTruncatedWarning, match="'Article 30'"):
        assert [p.page_id for p in dump.pages()] == list(range(1, 31))


def test_gzip_cut_mid_stream(tmp_path):
    xml = dump_xml(make_pages(50)).encode()
    data = gzip.compress(xml)
    dump = XmlDump(write(tmp_path / "cut.xml.gz", data[: len(data) // 2]))
    with pytest.warns(DumpTruncatedWarning):
        pages = list(dump.pages())
    assert 0 < len(pages) < 50
    assert [p.page_id for p in pages] == list(range(1, len(pages) + 1))


@pytest.mark.parametrize("where", ["middle", "end"])
def test_malformed_xml_raises_with_file_and_position(tmp_path, where):
    bad = FR_PAGES[1].replace("</title>", "</titel>")
    pages = [FR_PAGES[0], bad, *FR_PAGES[2:]] if where == "middle" else [*FR_PAGES, bad]
    path = write(tmp_path / "bad.xml", dump_xml(pages))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: malformed XML at line \d+"):
        list(XmlDump(path).pages())


# --- streaming ------------------------------------------------------------------------------


def test_memory_stays_flat(tmp_path):
    path = write(tmp_path / "big.xml", dump_xml(make_pages(4000, words=250)))
    size = path.stat().st_size
    assert size > 7_000_000
    tracemalloc.start()
    try:
        count = sum(1 for _ in XmlDump(path).pages())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 4000
    assert peak < size / 8, f"peak {peak} bytes for a {size}-byte dump"


def test_finished_pages_leave_the_tree(tmp_path):
    """Cleared pages must also be detached from the root, or millions of empty elements pile up."""
    path = write(tmp_path / "tiny.xml", dump_xml(make_pages(8000, words=3)))
    pages = XmlDump(path).pages()
    for _ in range(7999):
        next(pages)
    live = sum(type(o) is Element for o in gc.get_objects())
    assert live < 3000, f"{live} XML elements alive after 7999 pages"
    assert len(list(pages)) == 1


def test_stopping_early_stops_the_prefetch_thread(tmp_path):
    path = write(tmp_path / "d.xml.bz2", bz2.compress(dump_xml(make_pages(200)).encode(), 1))
    pages = XmlDump(path).pages()
    assert next(pages).title == "Article 1"
    pages.close()
    assert not [t for t in threading.enumerate() if t.name == "xml-dump-prefetch"]


def test_progress_bar_and_repeat_passes(tmp_path):
    dump = XmlDump(write(tmp_path / "d.xml.gz", gzip.compress(dump_xml(FR_PAGES).encode())))
    dump.progress = True
    first = list(dump.pages())
    assert first == list(dump.pages()) and dump.pages_read == 5


# --- the real enwiki fragment ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fragment() -> tuple[XmlDump, list[Page], str]:
    if not FRAGMENT.is_file():
        pytest.skip(f"shared Wikipedia fragment not found at {FRAGMENT} (set ZFOUNDRY_SHARED_DATA)")
    dump = XmlDump(FRAGMENT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DumpTruncatedWarning)
        pages = list(dump.pages())
    return dump, pages, bz2.decompress(FRAGMENT.read_bytes()).decode()


def test_fragment_pages_match_raw_text(fragment):
    dump, pages, raw = fragment
    assert dump.format == "bz2" and dump.truncated is None
    assert dump.bytes_read == len(raw.encode())
    heads = re.findall(r"<page>\s*<title>(.*?)</title>\s*<ns>(-?\d+)</ns>\s*<id>(\d+)</id>", raw)
    assert [(p.title, p.ns, p.page_id) for p in pages] == [
        (html.unescape(t), int(ns), int(i)) for t, ns, i in heads
    ]
    assert Counter(p.ns for p in pages) == Counter(int(ns) for _, ns, _ in heads) == {0: 205, 4: 1}
    redirects = [html.unescape(t) for t in re.findall(r'<redirect title="(.*?)" />', raw)]
    assert [p.redirect for p in pages if p.redirect is not None] == redirects
    assert len(redirects) == 100
    texts = re.findall(r"<text[^>]*>(.*?)</text>", raw, re.S)
    assert [p.text for p in pages] == [html.unescape(t) for t in texts]
    assert pages[0] == Page(
        10,
        0,
        "AccessibleComputing",
        "Computer accessibility",
        "#REDIRECT [[Computer accessibility]]\n\n{{Redr|move|from CamelCase|up}}",
    )


def test_fragment_siteinfo(fragment):
    dump, _, raw = fragment
    site = dump.siteinfo
    assert (site.sitename, site.dbname, site.case) == ("Wikipedia", "enwiki", "first-letter")
    keys = [int(k) for k in re.findall(r'<namespace key="(-?\d+)"', raw)]
    assert sorted(site.namespaces) == sorted(keys) and len(keys) == 35
    assert site.namespaces[0] == "" and site.namespaces[14] == "Category"
    assert site.namespaces[2302] == "Gadget definition"
    assert XmlDump(FRAGMENT).siteinfo == site  # read from the file's start, without pages()


def test_fragment_cut_in_half(fragment, tmp_path):
    data = FRAGMENT.read_bytes()
    cut = data[: len(data) // 2]
    recovered = bz2.BZ2Decompressor().decompress(cut).decode("utf-8", "replace")
    complete = recovered.count("</page>")
    dump = XmlDump(write(tmp_path / "half.xml.bz2", cut))
    with pytest.warns(DumpTruncatedWarning, match="dump is truncated"):
        pages = list(dump.pages())
    assert pages == fragment[1][:complete] and 50 < complete < 206
