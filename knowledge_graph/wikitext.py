"""Just enough wikitext for a concept graph: article link targets and disambiguation pages.

``extract_links`` finds ``[[...]]`` links with one compiled regex pass (after dropping
``<!-- comments -->``) and keeps the targets in namespace 0, normalised the way MediaWiki
resolves titles (``normalise_title``), so they can be matched against page titles and
redirect targets of the same wiki. It runs on every page of a dump, so the common path is a
handful of ``str`` operations per link.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from urllib.parse import unquote

from knowledge_graph.dumps.xml import SiteInfo

# Interwiki prefixes of the Wikimedia interwiki map that show up in article text (matched
# case-insensitively, like MediaWiki). Language codes are recognised by shape (_LANGUAGE).
INTERWIKI_PREFIXES: frozenset[str] = frozenset(
    """w wikipedia wikt wiktionary commons c s wikisource q wikiquote b wikibooks n wikinews
    v wikiversity voy wikivoyage species wikispecies d wikidata f wikifunctions m meta metawiki
    metawikimedia mw mediawikiwiki wmf foundation wikimedia incubator outreach wikitech phab
    phabricator gerrit translatewiki toollabs toolforge nost simple doi arxiv rfc""".split()  # noqa: SIM905
)

DISAMBIGUATION_TEMPLATES: tuple[str, ...] = (
    "Disambiguation",
    "Disambig",
    "Disamb",
    "Dab",
    "Hndis",
    "Geodis",
    "Numberdis",
    "Human name disambiguation",
    "Place name disambiguation",
    "Letter disambiguation",
    "Letter-number combination disambiguation",
    "School disambiguation",
    "Hospital disambiguation",
    "Species Latin name disambiguation",
    "Genus disambiguation",
    "Disambiguation cleanup",
)
"""Templates that mark a disambiguation page; extend it (a new tuple) to add local ones."""

# Regions whose content MediaWiki does not read as wikitext.
_VERBATIM_TAGS = "nowiki|pre|math|chem|ce|syntaxhighlight|source|score|timeline|hiero|graph"

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_VERBATIM_START = re.compile(rf"<(?i:{_VERBATIM_TAGS})\b")
_VERBATIM = re.compile(rf"<({_VERBATIM_TAGS})\b[^>]*?(?:/>|>.*?</\1\s*>)", re.S | re.I)
# Group 1: the target, free of characters illegal in titles. The label (after "|") may hold
# single brackets but no "[[", so a file whose caption contains links never matches as a whole
# and the links inside its caption do. Possessive loops keep a failed match linear.
_LINK = re.compile(r"\[\[([^\[\]{}|<>\x00-\x1f\x7f]*)(?:\|(?:[^\[\]]++|\[(?!\[)|\](?!\]))*+)?\]\]")
_ILLEGAL = re.compile(r"[\[\]{}|<>\x00-\x1f\x7f]")
_BIDI = re.compile(r"[\u200e\u200f\u202a-\u202e]")
_LANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*")

_CACHE_SIZE = 1 << 18  # resolved targets kept per site (Zipf: the frequent ones hit)
_caches: dict[SiteInfo, dict[str, tuple[int, str] | None]] = {}


def normalise_title(raw: str, site: SiteInfo) -> tuple[int, str] | None:
    """``(namespace, title)`` of a link target, redirect target or ``page_title`` as MediaWiki
    resolves it, the namespace prefix removed from ``title``; None for a same-page anchor, an
    interwiki or interlanguage link, or an empty or invalid title.

    Percent-encoding and HTML entities are decoded, the ``#fragment`` and a leading ``:`` are
    dropped, underscores and whitespace runs become one space, and the first letter is
    upper-cased on ``first-letter`` wikis.
    """
    return None if _ILLEGAL.search(raw) else _normalise(raw, site)


def _normalise(title: str, site: SiteInfo) -> tuple[int, str] | None:
    """``normalise_title`` of a string known to hold no illegal character."""
    if "%" in title or "&" in title:
        try:
            title = html.unescape(unquote(title, errors="strict"))
        except UnicodeDecodeError:
            return None
        if _ILLEGAL.search(title):
            return None
    if "#" in title:
        title = title[: title.index("#")]
    if not title.isascii():
        title = _BIDI.sub("", title)
    title = " ".join(title.replace("_", " ").split())
    if title.startswith(":"):
        title = title.lstrip(": ")
    if not title:
        return None
    ns = 0
    colon = title.find(":")
    if colon > 0:
        ns, rest = site.split_namespace(title)
        if ns == 0:
            prefix = title[:colon].rstrip()
            if prefix.lower() in INTERWIKI_PREFIXES or _LANGUAGE.fullmatch(prefix):
                return None
        elif not rest:
            return None
        title = rest
    if site.case == "first-letter" and title[0].islower():
        upper = title[0].upper()
        if len(upper) == 1:  # "ß".upper() == "SS": MediaWiki keeps such letters
            title = upper + title[1:]
    return ns, title


def extract_links(text: str, site: SiteInfo) -> list[str]:
    """Titles of the namespace-0 pages ``text`` links to, in order, duplicates kept.

    Links in comments and verbatim regions (``<nowiki>``, ``<pre>``, ``<math>``...) are ignored;
    files, categories, templates and other namespaces, interwiki and interlanguage links and
    same-page anchors are left out; links inside a file's caption are kept.
    """
    if "<!--" in text:
        text = _COMMENT.sub("", text)
    if _VERBATIM_START.search(text):
        text = _VERBATIM.sub("\x7f", text)  # like MediaWiki's strip markers, breaks a link
    cache = _caches.get(site)
    if cache is None or len(cache) > _CACHE_SIZE:
        if len(_caches) > 8:
            _caches.clear()
        cache = _caches[site] = {}
    links = []
    for target in _LINK.findall(text):
        resolved = cache.get(target, False)
        if resolved is False:
            resolved = cache[target] = _normalise(target, site)
        if resolved is not None and resolved[0] == 0:
            links.append(resolved[1])
    return links


@lru_cache(maxsize=8)
def _disambiguation_regex(templates: tuple[str, ...]) -> re.Pattern[str]:
    names = sorted({" ".join(t.replace("_", " ").split()) for t in templates}, key=len)[::-1]
    alternatives = "|".join(re.escape(n).replace(r"\ ", "[ _]+") for n in names)
    return re.compile(
        rf"\{{\{{[\s_]*(?:template[\s_]*:[\s_]*)?(?:{alternatives})[\s_]*(?:\||\}}\}})",
        re.I,
    )


def is_disambiguation(text: str, title: str | None = None) -> bool:
    """Whether a page is a disambiguation page: ``__DISAMBIG__``, a template of
    ``DISAMBIGUATION_TEMPLATES`` (letter case, spaces and underscores aside, with or without
    parameters), or a title ending in ``" (disambiguation)"``."""
    if title is not None and title.endswith(" (disambiguation)"):
        return True
    if "__DISAMBIG__" in text:
        return True
    return _disambiguation_regex(DISAMBIGUATION_TEMPLATES).search(text) is not None
