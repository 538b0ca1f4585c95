"""Streaming reader for MediaWiki SQL table dumps (``enwiki-latest-page.sql.gz`` and friends).

The files are ``mysqldump`` output: comments, ``DROP TABLE``, one ``CREATE TABLE`` whose column
list gives the names, order, types and nullability of the values, then ``INSERT INTO `t` VALUES
(..),(..);`` lines of about 1 MB. Strings are single-quoted with MySQL backslash escapes;
numbers and ``NULL`` are bare. Names always come from the file's ``CREATE TABLE``, never from
positions, so older layouts (``page_restrictions``, ``page_counter``) read the same way.

Two parsers, a line at a time (memory: one INSERT line, one 8 MB group of lines, one batch):

* the fast one turns INSERT bodies into CSV (``),(`` -> newline) that pyarrow's C++ reader
  parses with ``'`` quotes and ``\\`` escapes, several lines per call. On one core: ~4M rows/s
  (~3M from .gz) for the all-integer current ``pagelinks``, by far the largest dump; ~1.5M
  for old title pagelinks, ~0.5M for the 12-column ``page`` (the exact parser: 2-4x slower);
* the exact one is a compiled regex per table matching a whole tuple, capturing only the
  requested columns, with a last alternative ``([\\s\\S])`` that takes any character where no
  tuple starts: a well-formed line never fills it, so one ``any()`` validates the line. It
  reads the lines the CSV reader would get wrong (escapes other than ``\\'`` and ``\\"``, a
  line cut off), and any group of lines failing the fast path's checks, so errors and cuts
  are located exactly.

Schemas assumed (MediaWiki ``tables.sql``; the readers below use only these names): page
(page_id, page_namespace, page_title, page_is_redirect, ...), pagelinks (pl_from,
pl_from_namespace, pl_target_id -> linktarget.lt_id since 2024; before: pl_from, pl_namespace,
pl_title, pl_from_namespace), linktarget (lt_id, lt_namespace, lt_title), redirect (rd_from,
rd_namespace, rd_title, rd_interwiki, rd_fragment), page_props (pp_page, pp_propname,
pp_value, pp_sortkey). Plain ``INSERT INTO `t` VALUES`` only: no column lists, ``_binary``
introducers or ``0x`` hex literals (``--hex-blob``), which Wikimedia's dumps do not use.
"""

from __future__ import annotations

import bz2
import gc
import gzip
import io
import os
import re
import warnings
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from knowledge_graph.dumps import DumpTruncatedWarning

StrPath = str | os.PathLike[str]

_CHUNK = 1 << 20
"""Decompressed bytes read at a time."""
_CSV_GROUP = 8 << 20
"""Fast path: bytes of INSERT lines handed to one pyarrow CSV call."""

_I64, _I32, _STR = pa.int64(), pa.int32(), pa.string()
PAGE_SCHEMA = pa.schema(dict(page_id=_I64, namespace=_I32, title=_STR, is_redirect=pa.bool_()))
REDIRECT_SCHEMA = pa.schema(
    dict(page_id=_I64, namespace=_I32, title=_STR, interwiki=_STR, fragment=_STR)
)
LINKTARGET_SCHEMA = pa.schema(dict(target_id=_I64, namespace=_I32, title=_STR))
PAGE_PROPS_SCHEMA = pa.schema(dict(page_id=_I64))
PAGELINKS_SCHEMAS = {
    "linktarget": pa.schema(dict(src=_I64, target_id=_I64, from_namespace=_I32)),
    "title": pa.schema(dict(src=_I64, namespace=_I32, title=_STR, from_namespace=_I32)),
}
"""Output of ``iter_pagelinks`` for each ``pagelinks_schema`` layout."""

# --- CREATE TABLE ---------------------------------------------------------------------------

_KINDS = {  # SQL type -> kind; other types are refused
    "int": re.compile(r"(tiny|small|medium|big)?int(eger)?|year"),
    "float": re.compile(r"float|double|real|dec(imal)?|numeric|fixed"),
    "str": re.compile(
        r"(var)?(char|binary)|(tiny|medium|long)?(text|blob)|enum|set|json|date(time)?|time(stamp)?"
    ),
}
_ARROW = {"int": _I64, "float": pa.float64(), "str": _STR}
_CREATE_RE = re.compile(rb"CREATE TABLE (?:IF NOT EXISTS )?`([^`]+)`")
_COLUMN_RE = re.compile(rb"\s*`([^`]+)`\s+(\w+)")


@dataclass(frozen=True)
class _Column:
    name: str
    kind: str  # int, float or str
    nullable: bool


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[_Column, ...]

    def schema(self, names: Sequence[str] | None = None) -> pa.Schema:
        by_name = {c.name: c for c in self.columns}
        cols = self.columns if names is None else [by_name[n] for n in names]
        return pa.schema([pa.field(c.name, _ARROW[c.kind], c.nullable) for c in cols])


def _parse_create_table(dump: _DumpLines, lines: Iterator[tuple[int, bytes, bool]]) -> _Table:
    """Consume ``lines`` (of ``dump``) up to the end of its CREATE TABLE; return the columns."""
    for lineno, line, _ in lines:
        if line.startswith(b"INSERT "):
            raise ValueError(f"{dump.path}: line {lineno}: INSERT before any CREATE TABLE")
        if match := _CREATE_RE.match(line):
            name = match.group(1).decode()
            break
    else:
        raise ValueError(f"{dump.path}: no CREATE TABLE; not a mysqldump file?{dump.cut_note()}")
    columns = []
    for lineno, line, _ in lines:
        if line.startswith(b")") and columns:
            return _Table(name, tuple(columns))
        if match := _COLUMN_RE.match(line):
            column, sql_type = match.group(1).decode(), match.group(2).decode().lower()
            kind = next((k for k, r in _KINDS.items() if r.fullmatch(sql_type)), None)
            if kind is None:
                raise ValueError(f"{dump.path}: line {lineno}: `{column}`: unknown type {sql_type}")
            columns.append(_Column(column, kind, b"NOT NULL" not in line.upper()))
    raise ValueError(f"{dump.path}: the file ends inside CREATE TABLE `{name}`{dump.cut_note()}")


# --- bytes and lines ------------------------------------------------------------------------


class _DumpLines:
    """``(lineno, line, terminated)`` of a plain, gzip or bzip2 file (told apart by magic
    bytes), decompressed a chunk at a time; ``terminated`` is False only for a last line with
    no newline. A compressed stream that stops early ends cleanly and is noted in ``cuts``."""

    def __init__(self, path: Path, progress: bool = False) -> None:
        self.path, self.progress = path, progress
        self.cuts: list[str] = []
        self.lineno = 0

    def cut_note(self) -> str:
        return f" ({'; '.join(self.cuts)})" if self.cuts else ""

    def __iter__(self) -> Iterator[tuple[int, bytes, bool]]:
        tail: list[bytes] = []  # pieces of a line longer than a chunk: joined once
        for chunk in self._chunks():
            pieces = chunk.split(b"\n")
            if len(pieces) > 1:
                pieces[0] = b"".join([*tail, pieces[0]])
                for line in pieces[:-1]:
                    self.lineno += 1
                    yield self.lineno, line[:-1] if line.endswith(b"\r") else line, True
                tail = []
            tail.append(pieces[-1])
        if last := b"".join(tail):
            self.lineno += 1
            yield self.lineno, last, False

    def _chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as raw:
            magic = raw.read(3)
            raw.seek(0)
            kind = "gzip" if magic[:2] == b"\x1f\x8b" else "bzip2" if magic == b"BZh" else ""
            opener = {"gzip": lambda f: gzip.GzipFile(fileobj=f), "bzip2": bz2.BZ2File}
            stream = opener[kind](raw) if kind else raw
            bar = None
            if self.progress:
                from tqdm.auto import tqdm

                size, name = os.path.getsize(self.path), self.path.name
                bar = tqdm(total=size, unit="B", unit_scale=True, desc=name)
            try:
                while chunk := self._read(stream, raw, kind):
                    if bar is not None:
                        bar.update(raw.tell() - bar.n)
                    yield chunk
            finally:
                if bar is not None:
                    bar.close()

    def _read(self, stream: io.BufferedIOBase, raw: io.BufferedIOBase, kind: str) -> bytes:
        try:
            return stream.read1(_CHUNK)
        except EOFError as exc:  # read1 raises it before returning any data, so none is lost
            self.cuts.append(f"the {kind} stream is cut off: {exc}")
            return b""
        except (OSError, zlib.error) as exc:
            if not kind:
                raise
            raise ValueError(
                f"{self.path}: corrupt {kind} data after line {self.lineno} "
                f"({raw.tell():,} compressed bytes): {exc}"
            ) from exc


# --- INSERT parsers -------------------------------------------------------------------------

_ESCAPES = {  # MySQL string escapes; any other \x is x
    bytes([c]): v
    for c, v in zip(b"0bnrtZ%_", b"\0 \b \n \r \t \x1a \\% \\_".split(b" "), strict=True)
}
_ESCAPE_RE = re.compile(rb"\\([\s\S])")
_INNER = rb"[^'\\]*(?:\\[\s\S][^'\\]*)*"  # a string literal's inside, escapes included
_VALUES = {"int": rb"-?\d+", "float": rb"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?",
           "str": rb"'" + _INNER + rb"'"}  # fmt: skip


def _unescape(array: pa.Array) -> pa.Array:
    """Unescape a binary array: ``\\'`` (by far the most common escape) in C++, others in
    Python (only the values that have them)."""
    simple = pc.replace_substring(array, "\\'", "'")  # wrong only where hard is true
    hard = pc.or_(pc.match_substring(array, "\\\\"), pc.match_substring(simple, "\\"))
    hard = hard.fill_null(False)
    if not pc.any(hard).as_py():
        return simple
    sub = lambda m: _ESCAPES.get(m.group(1), m.group(1))  # noqa: E731
    fixed = [_ESCAPE_RE.sub(sub, v) for v in array.filter(hard).to_pylist()]
    return pc.replace_with_mask(simple, hard, pa.array(fixed, pa.binary()))


def _utf8(array: pa.Array) -> pa.Array:
    try:
        return array.cast(pa.string())
    except pa.ArrowInvalid:  # invalid UTF-8 in this line: replace it in Python
        values = array.to_pylist()
        return pa.array([None if v is None else v.decode("utf-8", "replace") for v in values], _STR)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """findall makes a tuple per row; cyclic GC passes over them would halve the speed."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _RegexParser:
    """The exact parser: one regex per tuple (see the module docstring)."""

    def __init__(self, path: Path, table: _Table, names: Sequence[str]) -> None:
        self.path, self.table, self.schema = path, table, table.schema(names)
        fields, slots, group = [], {}, 0
        for col in table.columns:
            null = rb"|NULL" if col.nullable else rb""
            if col.name not in names:
                fields.append(rb"(?:" + _VALUES[col.kind] + null + rb")")
            elif col.kind == "str":  # the inside of the quotes, and a group for NULL
                fields.append(rb"(?:'(" + _INNER + rb")'" + (rb"|(NULL))" if null else rb")"))
                slots[col.name] = (col, group, group + 1 if null else None)
                group += 2 if null else 1
            else:
                fields.append(rb"(" + _VALUES[col.kind] + null + rb")")
                slots[col.name] = (col, group, None)
                group += 1
        self.slots, self.bad = [slots[n] for n in names], group  # bad: the catch-all group
        self.pattern = re.compile(rb"\(" + rb",".join(fields) + rb"\)(?:,|\Z)|([\s\S])")

    def parse(self, lineno: int, line: bytes, start: int, cut: bool) -> list[pa.RecordBatch]:
        """Rows of ``line[start:]``; of a line cut off (``cut``), its complete tuples."""
        with _gc_paused():  # the per-row tuples all die inside _arrays
            try:
                arrays = self._arrays(lineno, line, start, cut)
            except pa.ArrowInvalid as exc:  # a number out of range, say
                raise ValueError(f"{self.path}: line {lineno}: {exc}") from exc
        return [pa.RecordBatch.from_arrays(arrays, schema=self.schema)]

    def _arrays(self, lineno: int, line: bytes, start: int, cut: bool) -> list[pa.Array]:
        end = len(line) - 1 if line.endswith(b";") else len(line)
        found = self.pattern.findall(line, start, end)
        groups = list(zip(*found, strict=True)) if found else [()] * (self.bad + 1)
        del found
        n = len(groups[self.bad])
        if any(groups[self.bad]):
            if not cut:
                pos = next(
                    m.start() for m in self.pattern.finditer(line, start, end) if m[self.bad + 1]
                )
                columns = ", ".join(c.name for c in self.table.columns)
                raise ValueError(
                    f"{self.path}: line {lineno}, byte {pos}: malformed row for "
                    f"`{self.table.name}` ({columns}) at {line[pos : pos + 60]!r}"
                )
            n = next(i for i, b in enumerate(groups[self.bad]) if b)
        arrays = []
        for col, g, null_group in self.slots:
            array = pa.array(groups[g][:n], pa.binary())
            if col.kind != "str":
                if col.nullable and b"NULL" in groups[g]:
                    array = pc.if_else(pc.equal(array, b"NULL"), None, array)
                arrays.append(array.cast(_ARROW[col.kind]))
                continue
            if b"\\" in line:
                array = _unescape(array)
            if null_group is not None and any(nulls := groups[null_group][:n]):
                array = pc.if_else(pc.equal(pa.array(nulls, pa.binary()), b""), array, None)
            arrays.append(_utf8(array))
        return arrays


_GLUED = re.compile(rb"'(?<=[^,(\\\n]')(?=[^,)\n])")  # a quote neither opening nor closing


class _CsvParser:
    """The fast path: INSERT bodies become CSV that pyarrow's C++ reader parses several lines
    per call (``),(`` -> newline; one inside a string comes back as a newline, which no value
    can hold otherwise, and is put back). Lines with escapes other than \\' and \\" go to the
    exact _RegexParser, and so does a group failing its checks: the unescaped quotes must
    number two per non-null string, each next to a separator, and NOT NULL columns must hold
    no null. (Still accepted here, unlike there: spaces around numbers and 0x ints, which
    mysqldump does not write.)"""

    def __init__(self, path: Path, table: _Table, names: Sequence[str]) -> None:
        self.exact, self.names = _RegexParser(path, table, names), names
        self.strings = [c for c in table.columns if c.kind == "str"]
        counted = [c.name for c in self.strings if c.nullable and c.name not in names]
        self.options = (
            pacsv.ReadOptions(column_names=[c.name for c in table.columns], use_threads=False),
            pacsv.ParseOptions(
                quote_char="'",
                escape_char="\\",
                double_quote=False,
                newlines_in_values=True,
                ignore_empty_lines=False,
            ),
            pacsv.ConvertOptions(
                column_types={c.name: _ARROW[c.kind] for c in table.columns if c.kind != "str"}
                | {c.name: pa.binary() for c in self.strings},
                include_columns=[*names, *counted],
                null_values=["NULL"],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        self.pending: list[tuple[int, bytes, int]] = []
        self.size = self.quotes = 0

    def parse(self, lineno: int, line: bytes, start: int, cut: bool) -> list[pa.RecordBatch]:
        quotes, lossy = line.count(b"'"), False
        if backslashes := line.count(b"\\"):
            escaped = line.count(b"\\'")  # pyarrow reads \' and \" as MySQL does, no others
            lossy = backslashes != escaped + line.count(b'\\"')
            quotes -= escaped
        if cut or lossy:
            return self.flush() + self.exact.parse(lineno, line, start, cut)
        self.pending.append((lineno, line, start))
        self.size += len(line)
        self.quotes += quotes
        return self.flush() if self.size >= _CSV_GROUP else []

    def flush(self) -> list[pa.RecordBatch]:
        if not self.pending:
            return []
        pending, quotes = self.pending, self.quotes
        self.pending, self.size, self.quotes = [], 0, 0
        data = b"\n".join(memoryview(line)[start + 1 : -2] for _, line, start in pending)  # (..);
        try:
            table = pacsv.read_csv(pa.py_buffer(data.replace(b"),(", b"\n")), *self.options)
        except pa.ArrowInvalid:
            table = None
        if table is None or not self._valid(table, quotes) or _GLUED.search(data):
            # the exact parser reads the lines, or says what is wrong
            return [b for p in pending for b in self.exact.parse(*p, cut=False)]
        arrays = []
        for name, field in zip(self.names, self.exact.schema, strict=True):
            array = table.column(name).combine_chunks()
            if field.type == _STR:
                if pc.any(pc.match_substring(array, "\n")).as_py():
                    array = pc.replace_substring(array, "\n", "),(")
                array = _utf8(array)
            arrays.append(array)
        return [pa.RecordBatch.from_arrays(arrays, schema=self.exact.schema)]

    def _valid(self, table: pa.Table, quotes: int) -> bool:
        rows = table.num_rows
        nulls = {c.name: table.column(c.name).null_count for c in self.strings if c.nullable}
        if quotes != 2 * sum(rows - nulls.get(c.name, 0) for c in self.strings):
            return False
        return all(f.nullable or table.column(f.name).null_count == 0 for f in self.exact.schema)


def _pieces(dump: _DumpLines, table: _Table, names: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The rows of ``dump``'s INSERT lines, in pieces of any size."""
    lines = iter(dump)
    try:
        _parse_create_table(dump, lines)
        parser = _CsvParser(dump.path, table, names)
        prefix = b"INSERT INTO `" + table.name.encode() + b"` VALUES "
        for lineno, line, terminated in lines:
            cut = not terminated and not line.endswith(b");")
            if not line.startswith(prefix):
                if cut and prefix.startswith(line):
                    dump.cuts.append(f"line {lineno} is cut inside its INSERT prefix")
                elif line.startswith(b"INSERT "):
                    raise ValueError(f"{dump.path}: line {lineno}: not {prefix!r}: {line[:80]!r}")
                continue
            if terminated and not line.endswith(b");"):
                raise ValueError(f"{dump.path}: line {lineno}: INSERT does not end with ');'")
            if cut:
                dump.cuts.append(f"INSERT line {lineno} is cut off after its last complete tuple")
            yield from parser.parse(lineno, line, len(prefix), cut)
        yield from parser.flush()
    finally:
        lines.close()


def _rebatch(
    pieces: Iterator[pa.RecordBatch], rows: int, schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """Re-cut ``pieces`` into batches of exactly ``rows`` rows (the last one: 1 to ``rows``)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for piece in pieces:
        pending.append(piece)
        count += piece.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending, schema)
            yield table.slice(0, rows).combine_chunks().to_batches()[0]
            rest = table.slice(rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending, schema).combine_chunks().to_batches()[0]


# --- public API -----------------------------------------------------------------------------


def _read_table(path: Path) -> _Table:
    dump = _DumpLines(path)
    lines = iter(dump)
    try:
        return _parse_create_table(dump, lines)
    finally:
        lines.close()


def read_sql_schema(path: StrPath) -> pa.Schema:
    """Arrow schema of every column of the dump's CREATE TABLE, in file order (int -> int64,
    float/double/decimal -> float64, text and binary -> string, NOT NULL -> not nullable);
    ``metadata[b"table"]`` is the table name."""
    table = _read_table(Path(path))
    return table.schema().with_metadata({"table": table.name})


def read_sql_dump(
    path: StrPath,
    *,
    columns: Sequence[str] | None = None,
    batch_rows: int = 1_000_000,
    progress: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Stream the rows of a mysqldump table dump (plain, .gz or .bz2) as record batches of
    ``columns`` (default: all, in CREATE TABLE order), each ``batch_rows`` rows but the last.

    Strings are unescaped and decoded as UTF-8 (invalid bytes -> U+FFFD); titles keep their
    underscores. A dump cut off (cut compressed stream, or a last INSERT line cut mid-tuple)
    yields every complete row, then warns with ``DumpTruncatedWarning``; malformed content
    raises ValueError naming the line. Unknown ``columns`` raise ValueError at the call.
    ``progress`` shows a tqdm bar in compressed bytes.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    path = Path(path)
    table = _read_table(path)
    available = [c.name for c in table.columns]
    names = list(available if columns is None else columns)
    unknown = [n for n in names if n not in available]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(
            f"{path}: columns {names} must be distinct names among {available}"
            + (f" (unknown: {unknown})" if unknown else "")
        )
    return _read_batches(_DumpLines(path, progress), table, names, batch_rows)


def _read_batches(
    dump: _DumpLines, table: _Table, names: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    rows = 0
    for batch in _rebatch(_pieces(dump, table, names), batch_rows, table.schema(names)):
        rows += batch.num_rows
        yield batch
    if dump.cuts:
        message = (
            f"{dump.path} ends early{dump.cut_note()}: kept the {rows:,} complete rows before "
            f"the cut; reading stopped at line {dump.lineno}"
        )
        warnings.warn(DumpTruncatedWarning(message), stacklevel=2)


_Keep = Callable[[pa.RecordBatch], pa.Array]
"""A row filter: batch -> boolean mask."""


def _friendly(
    path: StrPath,
    sources: Sequence[str],
    schema: pa.Schema,
    *,
    batch_rows: int = 1_000_000,
    keep: _Keep | None = None,
    extra: Sequence[str] = (),
) -> Iterator[pa.RecordBatch]:
    """Batches of ``sources`` renamed and cast to ``schema`` (``title``: underscores -> spaces),
    rows filtered while streaming by ``keep`` (on the raw columns, ``extra`` included)."""
    batches = read_sql_dump(path, columns=[*sources, *extra], batch_rows=batch_rows)

    def renamed() -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if keep is not None:
                batch = batch.filter(keep(batch))
            arrays = []
            for source, field in zip(sources, schema, strict=True):
                array = batch.column(source)
                if field.name == "title":
                    array = pc.replace_substring(array, "_", " ")
                arrays.append(array.cast(field.type))
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return renamed()


def _in(column: str, namespaces: Collection[int] | None) -> _Keep | None:
    if namespaces is None:
        return None
    allowed = pa.array(sorted(namespaces), _I64)
    return lambda batch: pc.is_in(batch.column(column), allowed)


def read_page(path: StrPath, *, namespaces: Collection[int] | None = None) -> pa.Table:
    """``page`` dump -> (page_id, namespace, title, is_redirect), optionally only the pages in
    ``namespaces`` (filtered while streaming: English has ~60M pages in all namespaces)."""
    sources = ("page_id", "page_namespace", "page_title", "page_is_redirect")
    batches = _friendly(path, sources, PAGE_SCHEMA, keep=_in("page_namespace", namespaces))
    return pa.Table.from_batches(batches, PAGE_SCHEMA)


def read_redirect(path: StrPath, *, namespaces: Collection[int] | None = None) -> pa.Table:
    """``redirect`` dump -> (page_id, namespace, title, interwiki, fragment): the redirect
    page and its target; ``interwiki`` and ``fragment`` as stored (often '', may be null)."""
    sources = ("rd_from", "rd_namespace", "rd_title", "rd_interwiki", "rd_fragment")
    batches = _friendly(path, sources, REDIRECT_SCHEMA, keep=_in("rd_namespace", namespaces))
    return pa.Table.from_batches(batches, REDIRECT_SCHEMA)


def read_linktarget(path: StrPath, *, namespaces: Collection[int] | None = None) -> pa.Table:
    """``linktarget`` dump -> (target_id, namespace, title)."""
    sources = ("lt_id", "lt_namespace", "lt_title")
    batches = _friendly(path, sources, LINKTARGET_SCHEMA, keep=_in("lt_namespace", namespaces))
    return pa.Table.from_batches(batches, LINKTARGET_SCHEMA)


def read_page_props(path: StrPath, propname: str = "disambiguation") -> pa.Table:
    """``page_props`` dump -> (page_id,) of the pages having ``propname`` (filtered while
    streaming; the default gives the disambiguation pages)."""
    keep = lambda batch: pc.equal(batch.column("pp_propname"), propname)  # noqa: E731
    batches = _friendly(path, ["pp_page"], PAGE_PROPS_SCHEMA, extra=["pp_propname"], keep=keep)
    return pa.Table.from_batches(batches, PAGE_PROPS_SCHEMA)


def pagelinks_schema(path: StrPath) -> Literal["linktarget", "title"]:
    """Which ``pagelinks`` layout a dump has: ``"linktarget"`` (pl_target_id, since 2024) or
    ``"title"`` (pl_namespace + pl_title). Transition-era dumps with both are read as
    ``"title"``: those columns stayed complete while pl_target_id was being filled."""
    names = read_sql_schema(path).names
    if "pl_title" in names and "pl_namespace" in names:
        return "title"
    if "pl_target_id" in names:
        return "linktarget"
    raise ValueError(f"{path}: not a pagelinks dump (columns: {names})")


_PAGELINKS_SOURCES = {
    "linktarget": ("pl_from", "pl_target_id", "pl_from_namespace"),
    "title": ("pl_from", "pl_namespace", "pl_title", "pl_from_namespace"),
}


def iter_pagelinks(path: StrPath, batch_rows: int = 1_000_000) -> Iterator[pa.RecordBatch]:
    """``pagelinks`` dump -> batches of (src, target_id, from_namespace) for the linktarget
    layout, or (src, namespace, title, from_namespace) for the title one (``pagelinks_schema``;
    ``PAGELINKS_SCHEMAS`` holds both)."""
    layout = pagelinks_schema(path)
    sources, schema = _PAGELINKS_SOURCES[layout], PAGELINKS_SCHEMAS[layout]
    return _friendly(path, sources, schema, batch_rows=batch_rows)
