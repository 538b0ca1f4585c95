"""extract_links / normalise_title / is_disambiguation: one exact case per wikitext syntax, a
few properties, and links of real enwiki articles checked against their raw wikitext."""

from __future__ import annotations

import html
import re

import pytest

from knowledge_graph import wikitext
from knowledge_graph.dumps.xml import SiteInfo, XmlDump
from knowledge_graph.wikitext import extract_links, is_disambiguation, normalise_title
from tests.conftest import SHARED_DATA

EN = SiteInfo.default()
CASE_SENSITIVE = SiteInfo("Wiktionary", "enwiktionary", "", "case-sensitive", {0: ""})
FRAGMENT = (
    SHARED_DATA
    / "wikipedia"
    / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)

LINK_CASES = {
    "plain": ("see [[Target]] here", ["Target"]),
    "piped": ("[[Target|the label]]", ["Target"]),
    "pipe trick": ("[[Paris, Texas|]]", ["Paris, Texas"]),
    "section anchor": ("[[Target#Section|s]] [[Other#Sec]]", ["Target", "Other"]),
    "pure anchor": ("[[#Section]] [[#Other|x]] [[Kept]]", ["Kept"]),
    "trailing letters": ("many [[Foo]]s and [[bar]]ing", ["Foo", "Bar"]),
    "first letter": ("[[foo bar]] [[éclair]] [[iPod]]", ["Foo bar", "Éclair", "IPod"]),
    "sharp s stays": ("[[ßeta]]", ["ßeta"]),
    "underscores, spaces": ("[[ New_York__City ]] [[a \u00a0 b]]", ["New York City", "A b"]),
    "html entities": ("[[AT&amp;T]] [[O&#39;Neil]] [[Caf&eacute;]]", ["AT&T", "O'Neil", "Café"]),
    "percent encoding": ("[[Foo%20bar]] [[O%27Neil]] [[Caf%C3%A9]]", ["Foo bar", "O'Neil", "Café"]),
    "bidi marks": ("[[Foo\u200e]]", ["Foo"]),
    "leading colon": ("[[:Foo]] [[:Category:Bar]] [[:File:x.jpg]] [[ :baz]]", ["Foo", "Baz"]),
    "category": ("[[Category:Cities| ]] [[category:Towns]] [[ Category : X ]]", []),
    "file with nested links": (
        "[[File:x.jpg|thumb|caption with [[Inner link]] and [[Other|o]]]] [[After]]",
        ["Inner link", "Other", "After"],
    ),
    "image, media": ("[[Image:y.png|[[In caption]]]] [[Media:z.ogg]]", ["In caption"]),
    "other namespaces": (
        "[[Template:Cite]] [[Wikipedia:About]] [[WP:MOS]] [[User talk:X]] [[Portal:Arts]]"
        " [[Help:Link]] [[Draft:D]] [[Module:M]] [[Special:Random]] [[Talk:T]] [[Book talk:B]]",
        [],
    ),
    "colon in article title": (
        "[[Star Wars: Episode I]] [[Re: Zero]]",
        ["Star Wars: Episode I", "Re: Zero"],
    ),
    "interlanguage": ("[[fr:Paris]] [[de:Berlin]] [[zh-yue:X]] [[be-tarask:Y]] [[simple:Z]]", []),
    "inline interlanguage": ("[[:fr:Paris|Paris]] [[:de:Berlin]]", []),
    "interwiki": (
        "[[w:Foo]] [[wikt:word|w]] [[Wiktionary:word]] [[commons:Category:C]] [[s:Text]]"
        " [[wikisource:T]] [[wikiquote:Q]] [[meta:M]] [[mw:API]] [[:nost:Old]] [[Commons:C]]",
        [],
    ),
    "comment": ("<!-- [[Hidden]] --> [[Seen]] <!--\n[[Also hidden]]\n-->", ["Seen"]),
    "comment inside a link": ("[[Foo<!-- note -->bar]]", ["Foobar"]),
    "unclosed comment": ("[[Before]] <!-- [[After]]", ["Before"]),
    "nowiki": (
        "<nowiki>[[Not]]</nowiki> [[Yes]] <NOWIKI>[[No]]</NOWIKI> [[Yes]]<nowiki />s",
        ["Yes", "Yes"],
    ),
    "nowiki inside a link": ("[[Foo<nowiki/>bar]] [[Baz|<nowiki>[x]</nowiki>]]", ["Baz"]),
    "verbatim tags": (
        '<pre>[[P]]</pre> <math>[[M]]</math> <syntaxhighlight lang="x">[[S]]</syntaxhighlight>',
        [],
    ),
    "invalid targets": (
        "[[a{b]] [[a<b>]] [[{{PAGENAME}}]] [[]] [[ ]] [[|label]] [[a\tb]]"
        " [[%5Bx%5D]] [[a&#124;b]] [[a%ZZb]]",
        ["A%ZZb"],
    ),
    "newline in target": ("[[Foo\nBar]] [[Ok|label\non two lines]]", ["Ok"]),
    "unclosed links": ("[[Foo|bar and [[Baz]] then [[Qux", ["Baz"]),
    "brackets in label": ("[[Foo|a [b] c]] [[[Bar]]]", ["Foo", "Bar"]),
    "external links": ("[http://example.org Example] [[Real]]", ["Real"]),
    "templates around links": (
        "{{Infobox|capital=[[Paris]]}} {{lang|fr|[[Seine]]}}",
        ["Paris", "Seine"],
    ),
    "duplicates kept in order": ("[[B]] [[A]] [[b]] [[B|x]]", ["B", "A", "B", "B"]),
    "refs and gallery": (
        "<ref>[[In ref]]</ref><gallery>File:a.jpg|[[In gallery]]</gallery>",
        ["In ref", "In gallery"],
    ),
}


@pytest.mark.parametrize("case", LINK_CASES, ids=list(LINK_CASES))
def test_extract_links(case):
    text, expected = LINK_CASES[case]
    assert extract_links(text, EN) == expected


def test_case_sensitive_wiki_keeps_first_letter():
    assert extract_links("[[foo bar]] [[Foo_bar]] [[fr:x]]", CASE_SENSITIVE) == [
        "foo bar",
        "Foo bar",
    ]


def test_namespaces_come_from_the_site():
    fr = SiteInfo("Wikipédia", "frwiki", "", "first-letter", {0: "", 14: "Catégorie"})
    text = "[[Catégorie:Ville]] [[Category:Ville]] [[Paris]]"
    assert extract_links(text, fr) == ["Paris"]
    assert extract_links(text, EN) == ["Catégorie:Ville", "Paris"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Albert_Einstein", (0, "Albert Einstein")),  # SQL dumps write underscores
        ("albert einstein", (0, "Albert einstein")),
        ("Category:Physicists_by_century", (14, "Physicists by century")),
        ("category:physicists", (14, "Physicists")),
        ("Template_talk:Infobox", (11, "Infobox")),
        ("Computer accessibility#History", (0, "Computer accessibility")),
        ("Star Wars: Episode I", (0, "Star Wars: Episode I")),
        (":Foo", (0, "Foo")),
        ("#Section", None),
        ("fr:Paris", None),
        ("wikt:word", None),
        ("Category:", None),
        ("a|b", None),
        ("a%7Cb", None),
        ("", None),
    ],
)
def test_normalise_title(raw, expected):
    assert normalise_title(raw, EN) == expected


def test_normalised_titles_are_fixed_points():
    titles = [t for text, _ in LINK_CASES.values() for t in extract_links(text, EN)]
    assert titles
    assert all(normalise_title(t, EN) == (0, t) for t in titles)


def test_links_of_concatenated_snippets_concatenate():
    texts = [text for text, _ in LINK_CASES.values() if "<!--" not in text]  # comments run on
    joined = "\n".join(texts)
    assert extract_links(joined, EN) == [t for x in texts for t in extract_links(x, EN)]


@pytest.mark.parametrize(
    "text",
    [
        "'''Mercury''' may refer to:\n* [[Mercury (planet)]]\n{{disambiguation}}",
        "{{Disambiguation|geo|surname}}",
        "{{ disambiguation\n| geo }}",
        "{{Disambig}} {{dab}} {{disamb}}",
        "{{hndis|Smith, John}}",
        "{{geodis}}",
        "{{Human name disambiguation}}",
        "{{human_name_disambiguation|Smith}}",
        "{{Place name disambiguation}}",
        "{{Template:Disambiguation}}",
        "text __DISAMBIG__ text",
    ],
)
def test_is_disambiguation(text):
    assert is_disambiguation(text)


@pytest.mark.parametrize(
    "text",
    [
        "'''Paris''' is the capital of [[France]]. {{Other uses}}",
        "{{Disambiguation needed|date=May 2020}}",
        "{{Redirect|Mercury|other uses|Mercury (disambiguation)}}",
        "[[Category:Disambiguation pages]]",
        "{{dablink|x}} {{Dabx}}",
        "<nowiki>__DISAMBIG</nowiki>",
    ],
)
def test_is_not_disambiguation(text):
    assert not is_disambiguation(text)


def test_disambiguation_by_title_and_extended_templates(monkeypatch):
    assert is_disambiguation("", title="Mercury (disambiguation)")
    assert not is_disambiguation("", title="Mercury")
    assert not is_disambiguation("{{Begriffsklärung}}")
    extended = (*wikitext.DISAMBIGUATION_TEMPLATES, "Begriffsklärung")
    monkeypatch.setattr(wikitext, "DISAMBIGUATION_TEMPLATES", extended)
    assert is_disambiguation("{{begriffsklärung}}")


# --- the real enwiki fragment ---------------------------------------------------------------


@pytest.fixture(scope="module")
def articles() -> tuple[SiteInfo, dict[str, str]]:
    if not FRAGMENT.is_file():
        pytest.skip(f"shared Wikipedia fragment not found at {FRAGMENT} (set ZFOUNDRY_SHARED_DATA)")
    dump = XmlDump(FRAGMENT)
    texts = {p.title: p.text for p in dump.pages() if p.ns == 0 and p.redirect is None}
    return dump.siteinfo, texts


def test_real_article_links(articles):
    site, texts = articles
    links = extract_links(texts["Anarchism"], site)
    # The lead of the raw wikitext: [[political philosophy]], [[self-governance|self-governed]],
    # [[stateless society|stateless societies]], [[Hierarchy|hierarchical]], ...
    assert links[:5] == [
        "Political philosophy",
        "Self-governance",
        "Stateless society",
        "Hierarchy",
        "Free association (communism and anarchism)",
    ]
    assert {"Peter Kropotkin", "Mikhail Bakunin", "Murray Bookchin", "State (polity)"} <= set(links)
    # [[wikt:anarchism|anarchism]] is an interwiki link; categories and files are no articles.
    assert not [t for t in links if t.lower().startswith(("wikt:", "category:", "file:"))]
    # Aristotle links [[Retrocausality]] only inside an HTML comment.
    assert "[[Retrocausality]]" in texts["Aristotle"]
    assert "Retrocausality" not in extract_links(texts["Aristotle"], site)


def test_real_links_are_raw_targets(articles):
    """Every extracted link is, up to letter case, entities and underscores, the start of some
    ``[[...`` in the raw text (found by a plain regex)."""
    site, texts = articles
    total = 0
    for title, text in texts.items():
        raw = {
            " ".join(html.unescape(t).replace("_", " ").split()).lower()
            for t in re.findall(r"\[\[\s*:?([^\]|#\n]*)", text)
        }
        links = extract_links(text, site)
        missing = [t for t in links if t.lower() not in raw and "%" not in t]
        assert not missing, (title, missing[:5])
        total += len(links)
    assert total > 10_000


def test_real_disambiguation_pages(articles):
    _, texts = articles
    # Counted independently: pages holding one of the usual templates, by a plain regex.
    plain = re.compile(r"\{\{(?:[Dd]isambiguation|[Dd]isambig|[Dd]ab|[Gg]eodis|[Hh]ndis)[|}]")
    expected = sorted(t for t, text in texts.items() if plain.search(text))
    assert sorted(t for t, text in texts.items() if is_disambiguation(text, t)) == expected
    assert len(expected) == 8
