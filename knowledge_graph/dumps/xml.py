"""Streaming reader for the MediaWiki ``pages-articles`` XML dump.

``XmlDump(path).pages()`` yields one ``Page`` per ``<page>`` with the text of its last revision,
from plain XML, ``.bz2`` (multistream included) or ``.gz``, picked by magic bytes. The parser is
fed fixed-size chunks and every page element is dropped once read, so memory stays flat however
large the dump. Tags are matched in whatever XML namespace the root uses (any export schema).

A dump cut off mid-file (cut XML, or a compressed stream without its end marker) yields every
complete page, then warns ``DumpTruncatedWarning`` and records where it stopped in
``truncated``; an XML error anywhere else raises ``ValueError`` with the file and position.
"""

from __future__ import annotations

import bz2
import gzip
import queue
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO
from xml.etree.ElementTree import Element, ParseError, XMLPullParser
from xml.parsers.expat import errors as expat_errors

from knowledge_graph.dumps import DumpTruncatedWarning

CHUNK_BYTES = 1 << 16
"""Uncompressed bytes fed to the XML parser at a time."""

# Canonical (English) namespace names, which MediaWiki accepts on every wiki whatever its
# language, and universal aliases. Local names come from the dump's <siteinfo>.
CANONICAL_NAMESPACES: dict[int, str] = {
    -2: "Media",
    -1: "Special",
    0: "",
    1: "Talk",
    2: "User",
    3: "User talk",
    4: "Project",
    5: "Project talk",
    6: "File",
    7: "File talk",
    8: "MediaWiki",
    9: "MediaWiki talk",
    10: "Template",
    11: "Template talk",
    12: "Help",
    13: "Help talk",
    14: "Category",
    15: "Category talk",
    100: "Portal",
    101: "Portal talk",
    108: "Book",
    109: "Book talk",
    118: "Draft",
    119: "Draft talk",
    710: "TimedText",
    711: "TimedText talk",
    828: "Module",
    829: "Module talk",
}
NAMESPACE_ALIASES: dict[str, int] = {
    "Image": 6,
    "Image talk": 7,
    "Wikipedia": 4,
    "Wikipedia talk": 5,
    "WP": 4,
    "WT": 5,
}

CASES = ("first-letter", "case-sensitive")

# Parse errors at the very end of the input that mean "the document stops here".
_CUT_ERRORS = frozenset(
    expat_errors.codes[getattr(expat_errors, name)]
    for name in (
        "XML_ERROR_NO_ELEMENTS",
        "XML_ERROR_UNCLOSED_TOKEN",
        "XML_ERROR_PARTIAL_CHAR",
        "XML_ERROR_UNCLOSED_CDATA_SECTION",
    )
)

_UNSUPPORTED_MAGIC = {b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"7z\xbc\xaf": "7z"}


def _ns_key(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


@dataclass(frozen=True)
class SiteInfo:
    """The wiki a dump comes from: its title case rule and namespace names."""

    sitename: str
    dbname: str
    base: str
    case: str
    """``"first-letter"`` (titles start upper-case) or ``"case-sensitive"``."""
    namespaces: dict[int, str] = field(hash=False)
    """Namespace key -> local name (``""`` for 0)."""
    _lookup: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.case not in CASES:
            raise ValueError(f"SiteInfo.case must be one of {CASES}, got {self.case!r}")
        names = [*CANONICAL_NAMESPACES.items(), *((k, n) for n, k in NAMESPACE_ALIASES.items())]
        names += self.namespaces.items()
        lookup = {_ns_key(name): key for key, name in names if name}
        object.__setattr__(self, "_lookup", lookup)

    @classmethod
    def default(cls) -> SiteInfo:
        """English Wikipedia's settings, for snippets that come without a ``<siteinfo>``."""
        return cls(
            sitename="Wikipedia",
            dbname="enwiki",
            base="https://en.wikipedia.org/wiki/Main_Page",
            case="first-letter",
            namespaces={**CANONICAL_NAMESPACES, 4: "Wikipedia", 5: "Wikipedia talk"},
        )

    def split_namespace(self, title: str) -> tuple[int, str]:
        """``(namespace, rest)`` of ``title`` by its prefix before the first ``:``, matched
        case-insensitively (spaces and underscores alike) against the local and the canonical
        names; ``(0, title)`` when that prefix is no namespace (``"Star Wars: Episode I"``)."""
        colon = title.find(":")
        if colon <= 0:
            return 0, title
        ns = self._lookup.get(_ns_key(title[:colon]))
        if ns is None:
            return 0, title
        return ns, title[colon + 1 :].lstrip(" _")


@dataclass(frozen=True)
class Page:
    """One ``<page>`` of the dump, with the text of its last revision."""

    page_id: int
    ns: int
    title: str
    redirect: str | None
    """Target of ``<redirect title=...>``, as written in the dump; None if not a redirect."""
    text: str


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"BZh"):
        return "bz2"
    if magic.startswith(b"\x1f\x8b"):
        return "gzip"
    for prefix, name in _UNSUPPORTED_MAGIC.items():
        if magic.startswith(prefix):
            raise ValueError(f"{path}: {name}-compressed dumps are not supported (bz2, gz, xml)")
    return "xml"


class _Prefetcher:
    """Reads a decompressing stream chunk by chunk in a background thread (the bz2 and zlib
    decompressors release the GIL), so decompression overlaps parsing and the caller's work.
    ``read()`` returns the next chunk, ``b""`` at the end, or raises what the stream raised."""

    def __init__(self, stream: BinaryIO, size: int, depth: int = 4) -> None:
        self._stream, self._size = stream, size
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xml-dump-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        item: bytes | BaseException = b"-"
        while item and not isinstance(item, BaseException) and not self._stop.is_set():
            try:
                item = self._stream.read1(self._size)  # read() would drop data before a cut
            except BaseException as exc:  # handed over to the reading thread
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    pass

    def read(self) -> bytes:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _Tags:
    """Tag names qualified with the XML namespace of the dump's root element."""

    def __init__(self, root_tag: str) -> None:
        ns = root_tag[: root_tag.index("}") + 1] if root_tag.startswith("{") else ""
        self.siteinfo, self.page, self.title = ns + "siteinfo", ns + "page", ns + "title"
        self.ns, self.id, self.redirect = ns + "ns", ns + "id", ns + "redirect"
        self.revision, self.text = ns + "revision", ns + "text"
        self.namespaces, self.namespace = ns + "namespaces", ns + "namespace"
        self.site_fields = {ns + n: n for n in ("sitename", "dbname", "base", "case")}


def _parse_siteinfo(elem: Element, tags: _Tags) -> SiteInfo:
    fields = dict(sitename="", dbname="", base="", case="first-letter")
    namespaces: dict[int, str] = {}
    for child in elem:
        if child.tag in tags.site_fields:
            fields[tags.site_fields[child.tag]] = (child.text or "").strip()
        elif child.tag == tags.namespaces:
            for ns in child.iter(tags.namespace):
                namespaces[int(ns.get("key"))] = (ns.text or "").strip()
    return SiteInfo(**fields, namespaces=namespaces)


class XmlDump:
    """A ``pages-articles`` XML dump (plain, bz2 incl. multistream, or gzip), read as a stream.

    After ``pages()`` is exhausted: ``pages_read``, ``bytes_read`` (uncompressed) and
    ``truncated`` (None, or a dict saying where a cut dump stopped) describe the pass.
    """

    def __init__(self, path: str | Path, *, progress: bool = False) -> None:
        self.path = Path(path)
        self.progress = progress
        self.format = _sniff(self.path)
        self.pages_read = 0
        self.bytes_read = 0
        self.truncated: dict | None = None
        self._siteinfo: SiteInfo | None = None

    def _decompressed(self, raw: BinaryIO) -> BinaryIO:
        if self.format == "bz2":
            return bz2.BZ2File(raw)  # reads concatenated (multistream) streams too
        if self.format == "gzip":
            return gzip.GzipFile(fileobj=raw)
        return raw

    @property
    def siteinfo(self) -> SiteInfo:
        """The dump's ``<siteinfo>``, read from the start of the file (English defaults if none)."""
        if self._siteinfo is None:
            self._siteinfo = self._read_siteinfo()
        return self._siteinfo

    def _read_siteinfo(self) -> SiteInfo:
        parser, tags = XMLPullParser(("start", "end")), None
        with open(self.path, "rb") as raw, self._decompressed(raw) as stream:
            while True:
                try:
                    chunk = stream.read1(1 << 16)
                except EOFError:
                    chunk = b""
                if not chunk:
                    return SiteInfo.default()
                try:
                    parser.feed(chunk)
                except ParseError as exc:
                    raise ValueError(
                        f"{self.path}: malformed XML at {exc.position}: {exc}"
                    ) from None
                for event, elem in parser.read_events():
                    if tags is None:
                        tags = _Tags(elem.tag)
                    elif event == "end" and elem.tag == tags.siteinfo:
                        return _parse_siteinfo(elem, tags)
                    elif elem.tag == tags.page:
                        return SiteInfo.default()

    def pages(self) -> Iterator[Page]:
        """Every complete ``<page>`` in file order; memory stays flat."""
        self.pages_read = self.bytes_read = 0
        self.truncated = None
        bar = self._progress_bar()
        with open(self.path, "rb") as raw, self._decompressed(raw) as stream:
            reader = _Prefetcher(stream, CHUNK_BYTES) if stream is not raw else None
            try:
                read = reader.read if reader else partial(raw.read, CHUNK_BYTES)
                yield from self._parse(read, raw, bar)
            finally:
                if reader is not None:
                    reader.close()
                if bar is not None:
                    bar.close()
        if self.truncated is not None:
            warnings.warn(DumpTruncatedWarning(self.truncated["message"]), stacklevel=2)

    def _parse(self, read: Callable[[], bytes], raw: BinaryIO, bar) -> Iterator[Page]:
        parser = XMLPullParser(("start", "end"))
        root: Element | None = None
        tags: _Tags | None = None
        last_title: str | None = None
        while True:
            events, cut = self._next_events(parser, read)
            for event, elem in events:
                if event == "start":
                    if root is None:
                        root, tags = elem, _Tags(elem.tag)
                elif elem.tag == tags.page:
                    page = self._page(elem, tags)
                    elem.clear()
                    del root[:]  # drop finished pages from the tree
                    self.pages_read += 1
                    last_title = page.title
                    yield page
                elif elem.tag == tags.siteinfo and self._siteinfo is None:
                    self._siteinfo = _parse_siteinfo(elem, tags)
            if bar is not None:
                bar.update(raw.tell() - bar.n)
            if cut is not None:
                break
        if cut:
            self.truncated = {
                "path": str(self.path),
                "reason": cut,
                "pages_read": self.pages_read,
                "last_title": last_title,
                "uncompressed_bytes": self.bytes_read,
                "message": (
                    f"{self.path}: dump is truncated: {cut}; kept the {self.pages_read} complete "
                    f"pages before the cut (last complete page {last_title!r}), stopped after "
                    f"about {self.bytes_read} uncompressed bytes"
                ),
            }

    def _next_events(
        self, parser: XMLPullParser, read: Callable[[], bytes]
    ) -> tuple[list, str | None]:
        """Feed one chunk; returns its events and, at the end of the input, ``""`` for a clean
        end or the reason the document is cut."""
        try:
            chunk = read()
        except EOFError as exc:  # compressed stream without its end-of-stream marker
            return [], f"compressed stream ended early ({exc})"
        except OSError as exc:
            raise ValueError(
                f"{self.path}: corrupt {self.format} data after {self.bytes_read} "
                f"uncompressed bytes: {exc}"
            ) from None
        try:
            if chunk:
                self.bytes_read += len(chunk)
                parser.feed(chunk)
                return list(parser.read_events()), None
            parser.close()
            return list(parser.read_events()), ""
        except ParseError as exc:
            if not chunk and exc.code in _CUT_ERRORS:
                return list(parser.read_events()), f"XML ends mid-document ({exc})"
            line, column = exc.position
            raise ValueError(
                f"{self.path}: malformed XML at line {line}, column {column} "
                f"(within the first {self.bytes_read} uncompressed bytes): {exc}"
            ) from None

    def _page(self, elem: Element, tags: _Tags) -> Page:
        title = ns = page_id = redirect = revision = None
        for child in elem:
            tag = child.tag
            if tag == tags.title:
                title = child.text
            elif tag == tags.ns:
                ns = child.text
            elif tag == tags.id:
                page_id = child.text
            elif tag == tags.redirect:
                redirect = child.get("title")
            elif tag == tags.revision:
                revision = child
        if title is None or page_id is None:
            raise ValueError(
                f"{self.path}: <page> without <title> or <id> after {self.pages_read} pages "
                f"(within the first {self.bytes_read} uncompressed bytes)"
            )
        text = revision.findtext(tags.text) if revision is not None else None
        return Page(
            page_id=int(page_id),
            ns=int(ns) if ns is not None else self.siteinfo.split_namespace(title)[0],
            title=title,
            redirect=redirect,
            text=text or "",
        )

    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        total = self.path.stat().st_size
        return tqdm(total=total, unit="B", unit_scale=True, desc=self.path.name)
