"""Ingest: raw pools -> the ``samples`` table. Registers every file; never judges content.

Sources are local paths or filesystem URIs (``s3://``, ``gs://``; read through pyarrow):

- **folder**: every file under the tree is a sample, except sidecars: ``stem.txt``
  (caption -> ``caption_alt``) and ``stem.json`` (a JSON object -> ``meta``) next to a
  non-sidecar file with the same stem. A ``.txt``/``.json`` with no such partner is a
  sample of its own (profiling will reject it).
- **parquet**: a Parquet file or folder with an image-bytes column (binary, or a
  ``{bytes, path}`` struct as Hugging Face datasets stores images) and/or a URI column;
  the caption column -> ``caption_alt``; every other non-binary column -> ``meta``.
- **webdataset**: ``.tar`` shards (WebDataset / img2dataset output). Members sharing a key
  (the member path up to the first dot of its file name) form a group; ``key.txt`` is the
  caption, ``key.json`` the metadata (its ``caption`` field when there is no ``.txt``), and
  every other member is a sample with ``meta.__key__`` / ``meta.__url__`` kept. A tar cut
  off mid-file keeps every complete member and warns.

``sample_id`` = first 24 hex digits of sha256(source name + key), where key is the path
relative to the source root (folders, tars: ``shard.tar/member``) or the key column /
``file#row`` (Parquet), so it is stable across runs, machines and storage locations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from infra.config import Location, require
from infra.storage import public_uri, redact, resolve_uri

log = logging.getLogger(__name__)
SIDECAR_EXTENSIONS = (".txt", ".json")


@dataclass(frozen=True, kw_only=True)
class Source:
    """One raw pool to ingest."""

    path: Location
    """A folder of images, a Parquet file or folder, or WebDataset ``.tar`` shards: a local
    path or a URI (``s3://bucket/prefix``)."""
    name: str | None = None
    """Source name stored in ``samples.source`` and hashed into ``sample_id``
    (default: the folder or file name)."""
    kind: Literal["auto", "folder", "parquet", "webdataset"] = "auto"
    """How to read ``path``; ``auto``: ``.tar`` files -> webdataset, else ``.parquet`` files ->
    parquet, else folder."""
    inline: bool = True
    """Folders: copy image bytes into ``samples.image`` (else only ``uri`` is kept)."""
    image_column: str | None = "image"
    """Parquet: column with image bytes (binary, or a struct with a ``bytes`` field)."""
    uri_column: str | None = None
    """Parquet: column with image paths/URIs, read lazily by the profile stage."""
    caption_column: str | None = "caption"
    """Parquet: column with the alt caption (skipped when absent)."""
    key_column: str | None = None
    """Parquet: column with a unique key per row (default: ``file_name#row``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.path, Location):  # built in code with a Path or plain str
            object.__setattr__(self, "path", Location(str(self.path)))
        if not self.path.is_uri:  # one spelling per folder: absolute, no trailing slash
            object.__setattr__(self, "path", Location(os.path.abspath(self.path)))
        fs, root = resolve_uri(self.path)
        if self.kind == "auto":
            require(_kind(fs, root) is not None, "path", redact(self.path), "must exist")
        else:
            found = fs.get_file_info(root).type != pafs.FileType.NotFound
            require(found, "path", redact(self.path), "must exist")

    @property
    def source_name(self) -> str:
        _, root = resolve_uri(self.path)
        return self.name or posixpath.basename(root.rstrip("/")).removesuffix(".parquet")

    @property
    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        fs, root = resolve_uri(self.path)
        return _kind(fs, root) or "folder"


# Files img2dataset writes beside its tars; anything else next to tars is ambiguous.
_TAR_COMPANIONS = (".tar", ".parquet", ".json")


def _kind(fs: pafs.FileSystem, root: str) -> str | None:
    """webdataset / parquet when every file is of that kind, folder when none is; a mix
    is refused so that no file is silently skipped."""
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return None
    names = [info.path] if info.type == pafs.FileType.File else [f for f, _ in _files(fs, root)]
    names = [n for n in names if not posixpath.basename(n).startswith(".")]
    tars = [n for n in names if n.endswith(".tar")]
    parquets = [n for n in names if n.endswith(".parquet")]
    if tars and all(n.endswith(_TAR_COMPANIONS) for n in names):
        return "webdataset"
    if parquets and not tars and len(parquets) == len(names):
        return "parquet"
    if tars or parquets:
        raise ValueError(
            f"kind: {redact(root)} mixes {len(tars)} .tar / {len(parquets)} .parquet files with "
            f"{len(names) - len(tars) - len(parquets)} others; set kind = folder, parquet or "
            f"webdataset explicitly"
        )
    return "folder"


def _files(fs: pafs.FileSystem, root: str) -> list[tuple[str, str]]:
    """Sorted (relative path, full path) of every file under ``root`` (or ``root`` itself)."""
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [(info.base_name, info.path)]
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    base = root.rstrip("/") + "/"
    return sorted((i.path[len(base) :], i.path) for i in infos if i.type == pafs.FileType.File)


def make_sample_id(source: str, key: str) -> str:
    return hashlib.sha256(f"{source}\x1f{key}".encode()).hexdigest()[:24]


def iter_samples(src: Source, warnings: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Sample rows of one source in a deterministic order; problems that lose no file
    (a damaged tar's unreadable tail) are appended to ``warnings``."""
    fs, root = resolve_uri(src.path)
    if src.resolved_kind == "folder":
        yield from _iter_folder(src, fs, root)
    elif src.resolved_kind == "parquet":
        yield from _iter_parquet(src, fs, root)
    else:
        yield from _iter_tars(src, fs, root, warnings if warnings is not None else [])


def validate_source(src: Source) -> None:
    """Check what can be checked before reading rows: Parquet column names."""
    if src.resolved_kind != "parquet":
        return
    fs, root = resolve_uri(src.path)
    for rel, full in _files(fs, root):
        if rel.endswith(".parquet") and not posixpath.basename(rel).startswith(("_", ".")):
            with fs.open_input_file(full) as handle:
                _check_columns(src, pq.ParquetFile(handle).schema_arrow.names, public_uri(fs, full))


@dataclass(frozen=True)
class Deferred:
    """Bytes of a folder sample, read by :func:`materialize` only when its shard is written."""

    fs: pafs.FileSystem
    path: str


def _read_text(fs: pafs.FileSystem, path: str) -> str:
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8", errors="replace")


def _meta_from_json(text: str, name: str) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        return {"_sidecar_error": f"invalid JSON in {name}: {err}", "_sidecar_raw": text}
    return meta if isinstance(meta, dict) else {"sidecar": meta}


def _iter_folder(src: Source, fs: pafs.FileSystem, root: str) -> Iterator[dict[str, Any]]:
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for rel, full in _files(fs, root):
        stem = posixpath.splitext(rel)[0]
        groups.setdefault((posixpath.dirname(rel), stem), []).append((rel, full))
    entries = []
    for members in groups.values():
        primary = [m for m in members if not m[0].lower().endswith(SIDECAR_EXTENSIONS)]
        sidecars = [m for m in members if m not in primary] if primary else []
        txt = next((m[1] for m in sidecars if m[0].lower().endswith(".txt")), None)
        js = next((m[1] for m in sidecars if m[0].lower().endswith(".json")), None)
        entries += [(rel, full, txt, js) for rel, full in (primary or members)]
    for rel, full, txt, js in sorted(entries):
        meta = _meta_from_json(_read_text(fs, js), posixpath.basename(js)) if js else {}
        caption = _read_text(fs, txt).strip() if txt else None
        data = Deferred(fs, full) if src.inline else None
        uri = public_uri(fs, full, src.path)
        yield _row(src.source_name, rel, uri, data, caption, meta)


def _row(source, key, uri, data, caption, meta) -> dict[str, Any]:
    return {
        "sample_id": make_sample_id(source, key),
        "source": source,
        "key": key,
        "uri": uri,
        "image": data,
        "caption_alt": caption,
        "meta": json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str),
        "content_sha256": hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else None,
    }


def materialize(row: dict[str, Any]) -> dict[str, Any]:
    """Read a folder sample's bytes (deferred so resumed ingests skip finished shards)."""
    if isinstance(row["image"], Deferred):
        try:
            with row["image"].fs.open_input_file(row["image"].path) as f:
                data = f.read()
        except OSError:  # unreadable now: keep the row; profile retries the uri and rejects
            return row | {"image": None}
        row = row | {"image": data, "content_sha256": hashlib.sha256(data).hexdigest()}
    return row


def _iter_parquet(src: Source, fs: pafs.FileSystem, root: str) -> Iterator[dict[str, Any]]:
    for rel, full in _files(fs, root):
        name = posixpath.basename(rel)
        if not name.endswith(".parquet") or name.startswith(("_", ".")):
            continue
        with fs.open_input_file(full) as handle:
            uri = public_uri(fs, full, src.path)
            yield from _parquet_rows(src, pq.ParquetFile(handle), rel, uri)


def _parquet_rows(src: Source, pf: pq.ParquetFile, rel: str, uri: str) -> Iterator[dict]:
    _check_columns(src, pf.schema_arrow.names, uri)
    used = {src.image_column, src.uri_column, src.caption_column}
    columns = [f.name for f in pf.schema_arrow if f.name in used or not _has_binary(f.type)]
    row_index = 0
    for batch in pf.iter_batches(batch_size=256, columns=columns):
        for rec in batch.to_pylist():
            yield _parquet_row(src, rec, rel, row_index, uri)
            row_index += 1


def _check_columns(src: Source, names: list[str], uri: str) -> None:
    for col, field in (("image_column", src.image_column), ("uri_column", src.uri_column)):
        if field and field not in names and not (col == "image_column" and src.uri_column):
            raise ValueError(f"{redact(uri)}: {col}={field!r} not among columns {names}")
    if src.key_column and src.key_column not in names:
        raise ValueError(f"{redact(uri)}: key_column={src.key_column!r} not among columns {names}")


def _has_binary(tp: pa.DataType) -> bool:
    """Binary payloads (other image columns, embeddings as bytes) stay out of ``meta``."""
    if pa.types.is_binary(tp) or pa.types.is_large_binary(tp) or pa.types.is_fixed_size_binary(tp):
        return True
    return any(_has_binary(tp.field(i).type) for i in range(tp.num_fields))


def _parquet_row(src: Source, rec: dict, rel: str, i: int, file_uri: str) -> dict[str, Any]:
    image = rec.pop(src.image_column, None) if src.image_column else None
    uri = rec.pop(src.uri_column, None) if src.uri_column else None
    if isinstance(image, dict):  # Hugging Face datasets' Image feature: {bytes, path}
        if image.get("bytes") is None and image.get("path") and uri is None:
            uri = image["path"]  # stored by path only: read lazily like a URI column
        image = image.get("bytes")
    caption = rec.pop(src.caption_column, None) if src.caption_column else None
    key = str(rec[src.key_column]) if src.key_column else f"{rel}#{i}"
    if uri is None:
        uri = f"{file_uri}#{i}"  # where the inline bytes came from
    elif "://" not in str(uri) and not posixpath.isabs(str(uri)):
        uri = _sibling(file_uri, str(uri))  # relative to the Parquet file
    return _row(src.source_name, key, str(uri), image, caption, rec)


def _sibling(file_uri: str, relative: str) -> str:
    base, sep, options = file_uri.partition("?")
    scheme, colon, path = base.rpartition("://")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), relative))
    return f"{scheme}{colon}{joined}{sep}{options}"


def _split_key(member: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the file name."""
    head, base = posixpath.split(member)
    stem, _, ext = base.partition(".")
    return posixpath.join(head, stem), ext.lower()


def _iter_tars(src: Source, fs, root: str, warnings: list[str]) -> Iterator[dict[str, Any]]:
    for rel, full in _files(fs, root):
        if rel.endswith(".tar"):
            yield from _tar_samples(src, fs, rel, full, warnings)


def _tar_samples(src: Source, fs, rel: str, full: str, warnings: list[str]) -> Iterator[dict]:
    tar_uri = public_uri(fs, full, src.path)
    group: dict[str, tuple[str, bytes]] = {}  # member name -> (extension, bytes)
    key = None
    with fs.open_input_stream(full) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    data = tf.extractfile(member).read()
                    member_key, ext = _split_key(member.name)
                    if member_key != key and group:
                        yield from _group_samples(src, rel, tar_uri, key, group)
                        group = {}
                    key = member_key
                    group[member.name] = (ext, data)  # by full name: k.jpg and k.JPG both stay
        except (tarfile.ReadError, EOFError, OSError) as err:
            message = f"{redact(tar_uri)}: cut off or damaged after key {key!r} ({err})"
            log.warning("%s; complete members kept", message)
            warnings.append(message)
    if group:
        yield from _group_samples(src, rel, tar_uri, key, group)


def _group_samples(src, rel, tar_uri, key, group) -> Iterator[dict[str, Any]]:
    """One WebDataset key: ``.txt`` / ``.json`` members are sidecars of the others."""
    txt = next((d for _, (e, d) in group.items() if e == "txt"), None)
    js = next(((n, d) for n, (e, d) in group.items() if e == "json"), None)
    meta = _meta_from_json(js[1].decode("utf-8", errors="replace"), js[0]) if js else {}
    caption = txt.decode("utf-8", errors="replace").strip() if txt is not None else None
    if caption is None and isinstance(meta.get("caption"), str):
        caption = meta["caption"]
    meta |= {"__key__": key, "__url__": redact(tar_uri)}
    primary = {n: d for n, (e, d) in group.items() if e not in ("txt", "json")}
    if not primary:  # a lone sidecar is a sample of its own, as in folders
        primary = {n: d for n, (_, d) in group.items()}
    for name, data in sorted(primary.items()):
        yield _row(src.source_name, f"{rel}/{name}", f"{tar_uri}#{name}", data, caption, meta)
