"""Run directories: tables as folders of Parquet shards, written atomically, with markers.

Layout (DESIGN.md): ``RUN_DIR/<table>/00000.parquet`` ... plus bookkeeping files whose names
start with ``_`` (``_00000.done.json`` shard markers, ``_SUCCESS.json`` table marker,
``_tmp-*`` files being written), which Parquet readers ignore. ``RUN_DIR/stats/`` holds
per-stage counters. Every path goes through a pyarrow filesystem, so the same code serves
local paths and object-store URIs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import urllib.parse
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from infra.tables import BINARY_COLUMNS

ROW_GROUP_ROWS = 1024
_MARKER = re.compile(r"_(?:([a-z][a-z0-9_]*)-)?(\d+)\.done\.json")  # _[prefix-]00042.done.json


def shard_name(index: int, prefix: str = "") -> str:
    """``00042.parquet``, or ``profile-00042.parquet`` with a prefix (rejects shards)."""
    return f"{prefix}-{index:05d}.parquet" if prefix else f"{index:05d}.parquet"


def resolve_uri(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or URI.

    URIs may carry pyarrow's options, e.g.
    ``s3://KEY:SECRET@bucket/run?endpoint_override=host:9000&scheme=http``; one filesystem is
    kept per scheme, credentials and options, so per-row reads do not reconnect.
    """
    text = str(location)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" not in text:
        return _LOCAL, os.path.abspath(text)
    parts = urllib.parse.urlsplit(text, allow_fragments=False)  # '#' may be in a key
    userinfo, _, host = parts.netloc.rpartition("@")
    fs = _remote_fs(parts.scheme, userinfo, host, parts.query)
    return fs, f"{host}{parts.path}".rstrip("/") if parts.path != "/" else host


_LOCAL = pafs.LocalFileSystem()


@functools.lru_cache(maxsize=64)
def _remote_fs(scheme: str, userinfo: str, host: str, query: str) -> pafs.FileSystem:
    auth = f"{userinfo}@" if userinfo else ""
    return pafs.FileSystem.from_uri(f"{scheme}://{auth}{host}{'?' + query if query else ''}")[0]


def join_uri(location: str, *parts: str) -> str:
    """``location`` + path parts, keeping a URI's query (its filesystem options) at the end."""
    if "://" not in location:
        return os.path.join(location, *parts)
    head, sep, query = location.partition("?")
    return "/".join([head.rstrip("/"), *parts]) + sep + query


def redact_all(value: Any) -> Any:
    """``value`` (nested dicts/lists) with every URI's credentials redacted, for storing."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_all(v) for v in value]
    return value


def redact(location: str) -> str:
    """A location safe to print: credentials in a URI replaced by ``***``."""
    if "://" not in location:
        return location
    parts = urllib.parse.urlsplit(location, allow_fragments=False)
    if "@" not in parts.netloc:
        return location
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def public_uri(fs: pafs.FileSystem, path: str, location: str = "") -> str:
    """Where a file lives, to store in a table: ``path`` on a local filesystem, else a URI with
    the filesystem options of ``location`` (the listed root: endpoint, scheme, region) but never
    its credentials (pyarrow takes those only as ``user:password@``); readers take them from
    their environment, or from the root again (:func:`with_credentials`)."""
    if fs.type_name == "local":
        return path
    options = location.partition("?")[2] if "://" in location else ""
    return f"{fs.type_name}://{path}" + (f"?{options}" if options else "")


def with_credentials(uri: str, location: str) -> str:
    """``uri`` (as :func:`public_uri` stores it) with the ``user:password@`` of ``location``
    when both name the same scheme and bucket and ``uri`` has none; else ``uri`` unchanged. A
    stage reading files listed from a configured root uses this, so a root given with
    credentials needs none in the environment."""
    if "://" not in uri or "://" not in location:
        return uri
    u = urllib.parse.urlsplit(uri, allow_fragments=False)
    loc = urllib.parse.urlsplit(location, allow_fragments=False)
    userinfo, _, host = loc.netloc.rpartition("@")
    if not userinfo or u.scheme != loc.scheme or u.netloc != host:
        return uri
    return u._replace(netloc=f"{userinfo}@{host}").geturl()


class RunDir:
    """One run's folder of tables. Cheap to construct and picklable (ships to Ray tasks)."""

    def __init__(self, location: str | Path):
        self.location = str(location) if "://" in str(location) else os.path.abspath(location)
        self.fs, self.root = resolve_uri(self.location)

    def __reduce__(self):
        return (RunDir, (self.location,))

    def __repr__(self) -> str:
        return f"RunDir({redact(self.location)!r})"

    @property
    def display(self) -> str:
        """The location without credentials."""
        return redact(self.location)

    def uri(self, *parts: str) -> str:
        """A location under the run directory usable anywhere (keeps a URI's options)."""
        return join_uri(self.location, *parts)

    # paths -----------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def table_path(self, table: str) -> str:
        return self.path(table)

    def marker_path(self, table: str, index: int, prefix: str = "") -> str:
        """``_00042.done.json``, or ``_video-00042.done.json`` for a stage writing shards
        with a prefix into a table other stages write too (``edit_pairs/``)."""
        return self.path(
            table, "_" + shard_name(index, prefix).removesuffix(".parquet") + ".done.json"
        )

    def success_path(self, table: str) -> str:
        return self.path(table, "_SUCCESS.json")

    # queries ---------------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def has_table(self, table: str) -> bool:
        return bool(self.data_files(table))

    def tables(self) -> list[str]:
        """Folders under the run directory that hold at least one data file."""
        if not self.exists(self.root):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.root))
        names = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
        return [n for n in names if not n.startswith(("_", ".")) and self.has_table(n)]

    def data_files(self, table: str) -> list[str]:
        """Sorted Parquet files of a table, bookkeeping (``_``-prefixed) files excluded."""
        base = self.table_path(table)
        if not self.exists(base):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base))
        return sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith(("_", "."))
        )

    def committed_files(self, table: str) -> list[str]:
        """Data files a reader should see: for tables with shard markers only marked shards
        (not what a killed run left half-done); ``rejects/`` files only for shards whose
        stage marked them done; every file of tables written whole."""
        files = self.data_files(table)
        if table == "rejects":
            done = {
                (m["stage"], i)
                for t in self.tables()
                if t != "rejects"
                for (_, i), m in self.markers(t).items()
                if "stage" in m
            }
            keep = []
            for f in files:
                stage, _, index = f.rsplit("/", 1)[1].removesuffix(".parquet").rpartition("-")
                if (stage, int(index)) in done:
                    keep.append(f)
            return keep
        markers = self.markers(table)
        if not markers:
            return files
        names = {shard_name(i, prefix) for prefix, i in markers}
        return [f for f in files if f.rsplit("/", 1)[1] in names]

    def completed(self, table: str, prefix: str = "") -> dict[int, dict[str, Any]]:
        """Shard index -> marker contents, for every shard of ``table`` (with that shard-name
        prefix) marked complete."""
        return {i: m for (p, i), m in self.markers(table).items() if p == prefix}

    def markers(self, table: str) -> dict[tuple[str, int], dict[str, Any]]:
        """(shard-name prefix, index) -> marker contents, for every marked shard of ``table``."""
        base = self.table_path(table)
        if not self.exists(base):
            return {}
        done = {}
        for info in self.fs.get_file_info(pafs.FileSelector(base)):
            match = _MARKER.fullmatch(info.base_name)
            if match:  # the index may outgrow 5 digits
                done[(match.group(1) or "", int(match.group(2)))] = self.read_json(info.path)
        return dict(sorted(done.items()))

    # writes ----------------------------------------------------------------------------
    def write_parquet(self, table_name: str, file_name: str, table: pa.Table) -> dict[str, Any]:
        """Write ``table`` to ``RUN_DIR/table_name/file_name``; returns rows, bytes, sha256."""
        return write_parquet_atomic(self.fs, self.path(table_name, file_name), table)

    def replace_table(self, name: str, table: pa.Table, rows_per_file: int = 1_000_000) -> None:
        """Replace a global step's table: ``table`` written whole in files of ``rows_per_file``
        rows (``00000.parquet``, ...), files of an earlier version removed, then
        ``_SUCCESS.json``. The marker is gone while files change, so readers never mix."""
        old = set(self.data_files(name))
        self.delete([self.success_path(name)])
        written = set()
        for i, start in enumerate(range(0, max(table.num_rows, 1), rows_per_file)):
            self.write_parquet(name, f"{i:05d}.parquet", table.slice(start, rows_per_file))
            written.add(self.path(name, f"{i:05d}.parquet"))
        self.delete(old - written)
        self.write_json(self.success_path(name), {"rows": table.num_rows})

    def write_json(self, path: str, payload: Any) -> None:
        data = json.dumps(payload, indent=2, sort_keys=True).encode() + b"\n"
        write_bytes_atomic(self.fs, path, data)

    def read_json(self, path: str) -> Any:
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def delete(self, paths: Iterable[str]) -> None:
        for p in paths:
            if self.exists(p):
                self.fs.delete_file(p)


def _tmp_sibling(path: str) -> str:
    head, _, tail = path.rpartition("/")
    return f"{head}/_tmp-{uuid.uuid4().hex[:12]}-{tail}"


def write_parquet_atomic(fs: pafs.FileSystem, path: str, table: pa.Table) -> dict[str, Any]:
    """Write deterministic Parquet bytes; readers never see a partial file.

    The file is encoded in memory, hashed, written under a ``_tmp-`` name and renamed.
    Returns ``{"rows", "bytes", "sha256"}`` of the file.
    """
    compression = {
        name: ("none" if name in BINARY_COLUMNS else "zstd") for name in table.column_names
    }
    repeated = [n for n in table.column_names if n in BINARY_COLUMNS and _repeats(table[n])]
    dictionary = [n for n in table.column_names if n not in BINARY_COLUMNS or n in repeated]
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression=compression,
        use_dictionary=dictionary,
        row_group_size=ROW_GROUP_ROWS,
        # Image columns are dictionary-encoded only when values repeat (an edited image is in
        # 2N edit pairs), so each distinct image is stored once per row group. The raised limit
        # keeps it so past the first write batch (1024 rows), where pyarrow would otherwise fall
        # back to plain encoding once the dictionary passed 1 MB.
        dictionary_pagesize_limit=_IMAGE_DICTIONARY_BYTES if repeated else None,
    )
    data = sink.getvalue()
    write_bytes_atomic(fs, path, data)
    return {"rows": table.num_rows, "bytes": data.size, "sha256": hashlib.sha256(data).hexdigest()}


_IMAGE_DICTIONARY_BYTES = 1 << 30


def _repeats(column: pa.ChunkedArray) -> bool:
    """Whether a column holds the same non-null value more than once."""
    return pc.count_distinct(column).as_py() < len(column) - column.null_count


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = _tmp_sibling(path)
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    finally:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)


def read_bytes(uri: str) -> bytes:
    """All bytes at a local path or filesystem URI (``s3://``, ``gs://``, ``file://``)."""
    fs, path = resolve_uri(uri)
    with fs.open_input_file(path) as f:
        return f.read()
