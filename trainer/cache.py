"""Latent / text cache: run the frozen VAE and text encoder over a manifest once
(``zfoundry cache-latents``) and train from the result instead of decoding images.

Layout of ``CACHE_DIR``: ``{i:05d}.parquet`` per manifest shard ``i``, row for row:
``sample_id``, ``latent`` (float32 bytes of the (C, 1, h, w) target latents at the row's training
resolution), ``latent_shape``, ``source_latent`` (i2i), and per text column that the row has
(``caption_*`` for T2I rows, ``instruction`` for I2I rows) a ``text:<column>`` list of feature
pieces (float32 bytes, (L, D) each; one piece for T2I, the editing pipeline's pieces for I2I),
``error`` for rows whose image could not be decoded; ``_empty.pt`` holds the features of the
empty caption (dropout) for both tasks; ``_cache.json`` the settings the cache was made with
(shard sha256s, encoders, resolution) -- training from a cache made with other settings fails
naming the difference. Shards already cached with the same settings are skipped (resumable).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from infra.storage import write_bytes_atomic, write_parquet_atomic
from trainer.config import CAPTION_COLUMNS, DataConfig, EncoderConfig
from trainer.data import Example, Manifest, StageData, _decode
from trainer.encoders import EncodedBatch, Encoders

SETTINGS = "_cache.json"
EMPTY = "_empty.pt"


def cache_settings(manifest: Manifest, encoders: EncoderConfig, data: DataConfig) -> dict:
    return {
        "shards": [s["sha256"] for s in manifest.data["shards"]],
        "encoders": asdict(encoders),
        "resolution": [data.resolution, data.min_tokens, data.max_tokens],
        "buckets": manifest.sampling.get("resolution_buckets"),
    }


def _blob(t: Tensor) -> bytes:
    return t.detach().float().contiguous().numpy().tobytes()


def build_cache(
    manifest: Manifest,
    encoders_config: EncoderConfig,
    data_config: DataConfig,
    out: Path,
    *,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Write the cache for every shard (module docstring); returns counts."""
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    settings = cache_settings(manifest, encoders_config, data_config)
    previous = json.loads((out / SETTINGS).read_text()) if (out / SETTINGS).is_file() else None
    previous = previous and {k: v for k, v in previous.items() if k != "dims"}
    if previous is not None and previous != settings:
        for f in out.glob("*.parquet"):  # made with other settings: start over
            f.unlink()
    encoders = Encoders(encoders_config, torch.device(device), torch.float32)
    data = StageData(manifest, data_config, seed=0)
    counts = {"shards": 0, "skipped_shards": 0, "rows": 0, "errors": 0}
    shards = manifest.data["shards"]
    for i in tqdm(range(len(shards)), desc="cache-latents", disable=not progress):
        target = out / f"{i:05d}.parquet"
        if target.is_file() and previous == settings:
            counts["skipped_shards"] += 1
            continue
        table = manifest.read_shard(i, verify=data_config.verify_shards)
        rows = [_cache_row(r, data, encoders) for r in table.to_pylist()]
        counts["errors"] += sum(r["error"] is not None for r in rows)
        counts["rows"] += len(rows)
        counts["shards"] += 1
        write_parquet_atomic(pa.fs.LocalFileSystem(), str(target), _to_table(rows))
    empty = {"t2i": encoders.captions([""], "t2i"), "i2i": encoders.captions([""], "i2i")[0]}
    torch.save(empty, out / EMPTY)
    dims = {"caption_dim": encoders.caption_dim, "latent_channels": encoders.latent_channels}
    write_bytes_atomic(pa.fs.LocalFileSystem(), str(out / SETTINGS),
                       json.dumps({**settings, "dims": dims}, indent=2).encode())  # fmt: skip
    return counts


def _cache_row(record: dict, data: StageData, encoders: Encoders) -> dict:
    size = data.size_for(record["width"], record["height"])
    task = record.get("task") or "t2i"
    row: dict[str, Any] = {"sample_id": record["sample_id"], "error": None, "texts": {}}
    try:
        image = _decode(record["image"], size)
        source = _decode(record.get("source_image"), size) if task == "i2i" else None
    except Exception as err:
        row["error"] = f"{type(err).__name__}: {err}"[:200]
        return row
    row["latent"] = encoders.latents([image])[0]
    if source is not None:
        row["source_latent"] = encoders.latents([source])[0]
    columns = ["instruction"] if task == "i2i" else list(CAPTION_COLUMNS)
    for column in columns:
        text = record.get(column)
        if text and text.strip():
            feats = encoders.captions([text], task)[0]
            row["texts"][column] = feats if isinstance(feats, list) else [feats]
    return row


def _to_table(rows: list[dict]) -> pa.Table:
    names = sorted({c for r in rows for c in r["texts"]})
    out: dict[str, list] = {"sample_id": [], "latent": [], "latent_shape": [], "source_latent": []}
    out |= {"error": [], **{f"text:{c}": [] for c in names}}
    for r in rows:
        out["sample_id"].append(r["sample_id"])
        z = r.get("latent")
        out["latent"].append(None if z is None else _blob(z))
        out["latent_shape"].append(None if z is None else list(z.shape))
        src = r.get("source_latent")
        out["source_latent"].append(None if src is None else _blob(src))
        out["error"].append(r["error"])
        for c in names:
            pieces = r["texts"].get(c)
            out[f"text:{c}"].append(None if pieces is None else [_blob(p) for p in pieces])
    return pa.table(out)


class CachedEncoders:
    """Drop-in for ``Encoders`` when training from a cache: looks examples up by position."""

    def __init__(
        self, cache: Path, manifest: Manifest, encoders: EncoderConfig, data: DataConfig
    ) -> None:
        if not (cache / SETTINGS).is_file():
            raise FileNotFoundError(f"{cache}: no {SETTINGS}; run `zfoundry cache-latents`")
        made = json.loads((cache / SETTINGS).read_text())
        want = cache_settings(manifest, encoders, data)
        diff = sorted(k for k in want if made.get(k) != want[k])
        if diff:
            raise ValueError(f"{cache} was made with other settings ({', '.join(diff)} differ); "
                             "re-run `zfoundry cache-latents` for this stage")  # fmt: skip
        self.cache = cache
        self.caption_dim = made["dims"]["caption_dim"]
        self.latent_channels = made["dims"]["latent_channels"]
        self.empty = torch.load(cache / EMPTY, weights_only=True)
        self._tables: dict[int, pa.Table] = {}
        self.skipped: list[dict] = []  # rows the cache could not encode, drained by the trainer

    def table(self, shard: int) -> pa.Table:
        if shard not in self._tables:
            if len(self._tables) >= 8:  # keep a few shards: steps draw from all of them
                self._tables.pop(next(iter(self._tables)))
            self._tables[shard] = pq.read_table(self.cache / f"{shard:05d}.parquet")
        return self._tables[shard]

    def features(self, blobs: list[bytes]) -> list[Tensor]:
        return [torch.from_numpy(np.frombuffer(b, np.float32).reshape(-1, self.caption_dim).copy())
                for b in blobs]  # fmt: skip

    def encode(self, examples: list[Example]) -> EncodedBatch:
        task = examples[0].task
        latents, captions, refs = [], [], []
        kept = []
        for e in examples:
            row = self.table(e.shard).slice(e.row, 1).to_pylist()[0]
            if row["error"] is not None:
                self.skipped.append({"sample_id": e.sample_id, "reason": "cache",
                                     "detail": row["error"]})  # fmt: skip
                continue
            kept.append(e.sample_id)
            shape = row["latent_shape"]
            latents.append(
                torch.from_numpy(np.frombuffer(row["latent"], np.float32).reshape(shape).copy())
            )
            if task == "i2i":
                src = np.frombuffer(row["source_latent"], np.float32).reshape(shape).copy()
                refs.append([torch.from_numpy(src)])
            if e.text_kind == "dropout" or not e.text.strip():
                pieces = self.empty[task]
            else:
                pieces = self.features(row[f"text:{e.text_kind}"])
            captions.append(pieces if task == "i2i" else pieces[0])
        return EncodedBatch(task, latents, captions, refs if task == "i2i" else None,
                            tuple(kept))  # fmt: skip
