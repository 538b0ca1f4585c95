"""Ingest: raw pools -> the ``samples`` table. Registers every file; never judges content.

Sources:

- **folder**: every file under the tree is a sample, except sidecars: ``stem.txt``
  (caption -> ``caption_alt``) and ``stem.json`` (a JSON object -> ``meta``) next to a
  non-sidecar file with the same stem. A ``.txt``/``.json`` with no such partner is a
  sample of its own (profiling will reject it).
- **parquet**: a Parquet file or folder with an image-bytes column (binary, or a
  ``{bytes, path}`` struct as Hugging Face datasets stores images) and/or a URI column;
  the caption column -> ``caption_alt``; every other scalar column -> ``meta``.

``sample_id`` = first 24 hex digits of sha256(source name + key), where key is the
path relative to the source root (folders) or the key column / ``file#row`` (Parquet),
so it is stable across runs and machines.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from infra.config import require

SIDECAR_EXTENSIONS = (".txt", ".json")


@dataclass(frozen=True, kw_only=True)
class Source:
    """One raw pool to ingest."""

    path: Path
    """A folder of images, or a Parquet file / folder of Parquet files."""
    name: str | None = None
    """Source name stored in ``samples.source`` and hashed into ``sample_id``
    (default: the folder or file name)."""
    kind: Literal["auto", "folder", "parquet"] = "auto"
    """How to read ``path``; ``auto`` picks parquet for ``.parquet`` files and folders of them."""
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
        require(self.path.exists(), "path", str(self.path), "must exist")

    @property
    def source_name(self) -> str:
        return self.name or self.path.resolve().name.removesuffix(".parquet")

    @property
    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        if self.path.is_file():
            return "parquet" if self.path.suffix == ".parquet" else "folder"
        has_parquet = any(p.suffix == ".parquet" for p in self.path.iterdir())
        return "parquet" if has_parquet else "folder"


def make_sample_id(source: str, key: str) -> str:
    return hashlib.sha256(f"{source}\x1f{key}".encode()).hexdigest()[:24]


def iter_samples(src: Source) -> Iterator[dict[str, Any]]:
    """Sample rows of one source in a deterministic order."""
    if src.resolved_kind == "folder":
        yield from _iter_folder(src)
    else:
        yield from _iter_parquet(src)


def _folder_entries(root: Path) -> Iterator[tuple[Path, Path | None, Path | None]]:
    """(file, caption sidecar, json sidecar) for every sample file, sorted by path."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        by_stem: dict[str, list[str]] = {}
        for name in sorted(filenames):
            by_stem.setdefault(os.path.splitext(name)[0], []).append(name)
        for names in by_stem.values():
            primary = [n for n in names if not n.lower().endswith(SIDECAR_EXTENSIONS)]
            if not primary:  # a lone .txt/.json is a sample itself
                primary, sidecars = names, []
            else:
                sidecars = [n for n in names if n not in primary]
            txt = next((n for n in sidecars if n.lower().endswith(".txt")), None)
            js = next((n for n in sidecars if n.lower().endswith(".json")), None)
            for name in primary:
                yield (
                    Path(dirpath, name),
                    Path(dirpath, txt) if txt else None,
                    Path(dirpath, js) if js else None,
                )


def _read_meta_sidecar(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        return {"_sidecar_error": f"invalid JSON in {path.name}: {err}", "_sidecar_raw": text}
    return meta if isinstance(meta, dict) else {"sidecar": meta}


def _iter_folder(src: Source) -> Iterator[dict[str, Any]]:
    root = src.path.resolve()
    for file, txt, js in sorted(_folder_entries(root), key=lambda e: e[0].as_posix()):
        key = file.relative_to(root).as_posix()
        data = file if src.inline else None  # read by materialize(), only when written
        meta = _read_meta_sidecar(js) if js else {}
        caption = txt.read_text(encoding="utf-8", errors="replace").strip() if txt else None
        yield _row(src.source_name, key, file.as_posix(), data, caption, meta)


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
    if isinstance(row["image"], Path):
        try:
            data = row["image"].read_bytes()
        except OSError:  # unreadable now: keep the row; profile retries the uri and rejects
            return row | {"image": None}
        row = row | {"image": data, "content_sha256": hashlib.sha256(data).hexdigest()}
    return row


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.parquet") if not p.name.startswith(("_", ".")))


def _iter_parquet(src: Source) -> Iterator[dict[str, Any]]:
    root = src.path.resolve()
    for file in _parquet_files(root):
        pf = pq.ParquetFile(file)
        names = pf.schema_arrow.names
        for col, field in (("image_column", src.image_column), ("uri_column", src.uri_column)):
            if field and field not in names and not (col == "image_column" and src.uri_column):
                raise ValueError(f"{file}: {col}={field!r} not among columns {names}")
        if src.key_column and src.key_column not in names:
            raise ValueError(f"{file}: key_column={src.key_column!r} not among columns {names}")
        rel = file.relative_to(root).as_posix() if root.is_dir() else file.name
        used = {src.image_column, src.uri_column, src.caption_column}
        columns = [f.name for f in pf.schema_arrow if f.name in used or not _has_binary(f.type)]
        row_index = 0
        for batch in pf.iter_batches(batch_size=256, columns=columns):
            for rec in batch.to_pylist():
                yield _parquet_row(src, rec, rel, row_index, file)
                row_index += 1


def _has_binary(tp: pa.DataType) -> bool:
    """Binary payloads (other image columns, embeddings as bytes) stay out of ``meta``."""
    if pa.types.is_binary(tp) or pa.types.is_large_binary(tp) or pa.types.is_fixed_size_binary(tp):
        return True
    return any(_has_binary(tp.field(i).type) for i in range(tp.num_fields))


def _parquet_row(src: Source, rec: dict, rel: str, i: int, file: Path) -> dict[str, Any]:
    image = rec.pop(src.image_column, None) if src.image_column else None
    if isinstance(image, dict):  # Hugging Face datasets' Image feature: {bytes, path}
        image = image.get("bytes")
    uri = rec.pop(src.uri_column, None) if src.uri_column else None
    caption = rec.pop(src.caption_column, None) if src.caption_column else None
    key = str(rec[src.key_column]) if src.key_column else f"{rel}#{i}"
    meta = rec
    if uri is None:
        uri = f"{file.as_posix()}#{i}"  # where the inline bytes came from
    elif "://" not in str(uri) and not os.path.isabs(str(uri)):
        uri = (file.parent / str(uri)).resolve().as_posix()  # relative to the Parquet file
    return _row(src.source_name, key, str(uri), image, caption, meta)
