"""Manifest -> sampled, length-aware batches of decoded examples.

* ``Manifest.load``: ``manifest.json`` from ``zfoundry select``; shard paths are relative to it.
  Each shard's sha256 is checked against the manifest before its rows are used.
* ``StageData`` keeps a light index of every row (no image bytes): its target resolution
  (``resolution = "buckets"``: the manifest bucket nearest in aspect ratio; ``"tokens"``:
  ``trainer.buckets.resolution_for``), task, sampling weight and caption lengths.
* An **epoch** (``plan``): ``samples_per_epoch`` draws with replacement, proportional to
  ``sampling_weight``, split between T2I and I2I rows by ``t2i_i2i_ratio`` (all T2I when the
  manifest has no I2I rows); each task's draws go through ``length_aware_batches`` (token
  budget per rank, same number of batches per rank) and the two tasks' steps are shuffled
  together, so a step holds one task. Everything is seeded by ``(seed, epoch)``.
* ``load``: one rank's batch -> ``Example`` objects: images decoded, resized and centre-cropped
  to the row's resolution (``resize_crop``), the training text chosen per example from a
  generator seeded by ``(seed, epoch, step, rank)``: a caption column by ``caption_probs``
  (a missing or empty caption falls back to ``caption_alt``), the metadata text
  (``caption_alt``) with ``metadata_caption_prob``, and ``""`` with ``caption_dropout``. I2I rows
  train on their ``instruction`` with the ``source_image`` as the reference.

A row whose image cannot be decoded is left out of its batch and reported (``Example`` lists
stay shorter; the trainer logs the ``sample_id`` to ``skipped.jsonl``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import Tensor

from infra.storage import read_bytes, resolve_uri
from trainer.batching import length_aware_batches
from trainer.buckets import nearest_bucket, resize_crop, resolution_for, tokens_for
from trainer.config import CAPTION_COLUMNS, DataConfig

MANIFEST_FORMAT = "zfoundry.manifest/1"
TEMPLATE_TOKENS = 12  # chat-template tokens around a caption (Qwen3: ~10), for budgeting
CHARS_PER_TOKEN = 3  # conservative caption length estimate before tokenisation
IMAGE_COLUMNS = ("image", "source_image")


@dataclass(frozen=True)
class Manifest:
    location: str  # manifest.json
    data: dict[str, Any]

    @classmethod
    def load(cls, location: str) -> Manifest:
        """``FileNotFoundError`` / ``ValueError`` naming the manifest when it is missing, a
        folder, not JSON, not a ``zfoundry select`` manifest or without shards."""
        where = f"manifest {location}"
        if "://" not in str(location) and os.path.isdir(location):
            inside = os.path.join(location, "manifest.json")
            hint = f"; did you mean {inside}?" if os.path.isfile(inside) else ""
            raise ValueError(f"{where}: a folder, not a manifest.json{hint}")
        try:
            data = json.loads(read_bytes(str(location)))
        except FileNotFoundError:
            raise FileNotFoundError(f"no manifest at {location}; run `zfoundry select`") from None
        except OSError as err:
            raise ValueError(f"{where}: cannot read it ({err})") from None
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{where}: not JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got a {type(data).__name__}")
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{where}: format {data.get('format')!r}, "
                             f"expected {MANIFEST_FORMAT!r}")  # fmt: skip
        shards = data.get("shards")
        if not shards:
            raise ValueError(f"{where}: the manifest lists no shards (0 rows selected?)")
        if not isinstance(shards, list) or not all(
            isinstance(e, dict) and isinstance(e.get("path"), str) for e in shards
        ):
            raise ValueError(f"{where}: shards must be a list of {{path, sha256, rows}} objects")
        return cls(str(location), data)

    @property
    def sampling(self) -> dict[str, Any]:
        return self.data.get("sampling", {})

    def shard_location(self, index: int) -> str:
        return posixpath.join(posixpath.dirname(self.location), self.data["shards"][index]["path"])

    def read_shard(self, index: int, columns: list[str] | None = None, verify: bool = True):
        """One shard as an Arrow table; with ``verify``, its bytes must match the manifest."""
        entry, where = self.data["shards"][index], self.shard_location(index)
        fs, path = resolve_uri(where)
        try:
            with fs.open_input_file(path) as f:
                data = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: no such shard (manifest {self.location} lists "
                                    "it); re-run `zfoundry select`") from None  # fmt: skip
        if verify and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ValueError(f"{where}: sha256 differs from the manifest (shard changed or "
                             f"corrupt); re-run `zfoundry select`")  # fmt: skip
        return pq.read_table(pa.BufferReader(data), columns=columns)


@dataclass
class Example:
    """One decoded training example."""

    sample_id: str
    task: str  # t2i | i2i
    image: Tensor | None  # (3, H, W) in [-1, 1]; None when training from a cache
    text: str  # the caption (t2i) or instruction (i2i) trained on; "" when dropped
    text_kind: str  # caption column, "instruction", or "dropout"
    source: Tensor | None = None  # (3, H, W) reference image of an i2i row
    shard: int = -1  # position in the manifest (for cached latents)
    row: int = -1


@dataclass(frozen=True)
class Step:
    """One optimizer step: a task and one array of row positions per rank."""

    epoch: int
    index: int  # step within the epoch
    task: str
    batches: list[np.ndarray]


class StageData:
    def __init__(self, manifest: Manifest, config: DataConfig, *, seed: int, world_size: int = 1):
        self.manifest, self.config, self.seed, self.world_size = manifest, config, seed, world_size
        sampling = manifest.sampling
        self.caption_probs = config.caption_probs or sampling.get("caption_probs", {})
        self.caption_probs = self.caption_probs or {"caption_alt": 1.0}
        ratio = config.t2i_i2i_ratio or tuple(sampling.get("t2i_i2i_ratio", (4, 1)))
        self.buckets = [tuple(b) for b in sampling.get("resolution_buckets", [(256, 256)])]
        self._tables: dict[int, pa.Table] = {}
        self.index = self._build_index()
        tasks = np.asarray(self.index["task"])
        self.pools = {t: np.flatnonzero(tasks == t) for t in ("t2i", "i2i")}
        self.ratio = {"t2i": ratio[0], "i2i": ratio[1] if len(self.pools["i2i"]) else 0}
        if not sum(self.ratio[t] for t in self.pools if len(self.pools[t])):
            raise ValueError(f"t2i_i2i_ratio {tuple(ratio)} selects no task the manifest has "
                             f"(t2i rows: {len(self.pools['t2i'])}, i2i rows: "
                             f"{len(self.pools['i2i'])})")  # fmt: skip

    def _build_index(self) -> dict[str, np.ndarray]:
        cols: dict[str, list] = {k: [] for k in ("shard", "row", "width", "height", "task")}
        cols |= {"weight": [], "tokens": [], "sample_id": []}
        for i, entry in enumerate(self.manifest.data["shards"]):
            table = self._table(i)
            names = set(table.column_names)
            text = [c for c in (*CAPTION_COLUMNS, "instruction") if c in names]
            longest = np.zeros(table.num_rows, np.int64)
            for c in text:
                lens = pa.compute.utf8_length(table.column(c).fill_null("")).to_numpy()
                longest = np.maximum(longest, lens)
            sizes = [self.size_for(w, h) for w, h in zip(table.column("width").to_pylist(),
                                                          table.column("height").to_pylist(),
                                                          strict=True)]  # fmt: skip
            task = table.column("task").to_pylist() if "task" in names else ["t2i"] * len(sizes)
            image_tokens = np.array([tokens_for(s) for s in sizes], np.int64)
            refs = np.array([t == "i2i" for t in task]) * image_tokens  # the reference image
            caption = TEMPLATE_TOKENS + np.ceil(longest / CHARS_PER_TOKEN).astype(np.int64)
            cols["shard"] += [i] * table.num_rows
            cols["row"] += list(range(table.num_rows))
            cols["width"] += [s[0] for s in sizes]
            cols["height"] += [s[1] for s in sizes]
            cols["task"] += task
            cols["weight"] += table.column("sampling_weight").to_pylist()
            cols["tokens"] += list(image_tokens + refs + caption)
            cols["sample_id"] += table.column("sample_id").to_pylist()
            if entry.get("rows") is not None and entry["rows"] != table.num_rows:
                raise ValueError(f"{self.manifest.shard_location(i)}: {table.num_rows} rows, "
                                 f"the manifest says {entry['rows']}")  # fmt: skip
        index = {k: np.asarray(v) for k, v in cols.items()}
        bad = ~np.isfinite(index["weight"]) | (index["weight"] < 0)
        if bad.any():
            raise ValueError(f"{int(bad.sum())} rows have a negative or non-finite "
                             f"sampling_weight (e.g. {index['sample_id'][bad][0]})")  # fmt: skip
        return index

    def _table(self, shard: int) -> pa.Table:
        if shard not in self._tables:
            if len(self._tables) >= 4:  # keep a few decoded shards
                self._tables.pop(next(iter(self._tables)))
            self._tables[shard] = self.manifest.read_shard(shard, verify=self.config.verify_shards)
        return self._tables[shard]

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        c = self.config
        if c.resolution == "tokens":
            return resolution_for(width, height, min_tokens=c.min_tokens, max_tokens=c.max_tokens)
        return nearest_bucket(width, height, self.buckets)

    def __len__(self) -> int:
        return len(self.index["shard"])

    def plan(self, epoch: int) -> list[Step]:
        """The steps of one epoch (see the module docstring); seeded by ``(seed, epoch)``."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        n = self.config.samples_per_epoch or len(self)
        active = [t for t in ("t2i", "i2i") if self.ratio[t] and len(self.pools[t])]
        total = sum(self.ratio[t] for t in active)
        steps: list[tuple[str, list[np.ndarray]]] = []
        for k, task in enumerate(active):
            pool = self.pools[task]
            share = n - sum(round(n * self.ratio[t] / total) for t in active[:k]) if (
                k == len(active) - 1) else round(n * self.ratio[task] / total)  # fmt: skip
            weights = self.index["weight"][pool].astype(np.float64)
            if weights.sum() <= 0:
                continue
            drawn = rng.choice(pool, size=share, p=weights / weights.sum())
            plan = length_aware_batches(
                self.index["tokens"][drawn],
                token_budget=self.config.token_budget,
                seed=self.seed,
                epoch=epoch * 2 + k,
                world_size=self.world_size,
                max_batch_size=self.config.max_batch_size or None,
            )
            steps += [(task, [drawn[b] for b in step]) for step in plan]
        order = rng.permutation(len(steps))
        return [Step(epoch, i, steps[j][0], steps[j][1]) for i, j in enumerate(order)]

    def load(
        self, step: Step, rank: int = 0, *, decode: bool = True
    ) -> tuple[list[Example], list[dict]]:
        """Rank ``rank``'s examples of ``step`` and the rows that could not be decoded.
        ``decode=False`` (training from a cache) only chooses the texts."""
        rng = np.random.default_rng([self.seed, step.epoch, step.index, rank])
        examples, skipped = [], []
        for pos in step.batches[rank]:
            shard, index = int(self.index["shard"][pos]), int(self.index["row"][pos])
            row = self._table(shard).slice(index, 1)
            if not decode:  # training from a cache: only the texts are needed, not the bytes
                row = row.drop_columns([c for c in IMAGE_COLUMNS if c in row.column_names])
            record = row.to_pylist()[0]
            size = (int(self.index["width"][pos]), int(self.index["height"][pos]))
            image = source = None
            text, kind = self._text(record, step.task, rng)  # drawn even for skipped rows
            try:
                if decode:
                    image = _decode(record["image"], size)
                    if step.task == "i2i":
                        source = _decode(record["source_image"], size)
            except (OSError, ValueError, Image.DecompressionBombError, KeyError) as err:
                skipped.append({"sample_id": record["sample_id"], "reason": type(err).__name__,
                                "detail": str(err)[:200]})  # fmt: skip
                continue
            examples.append(
                Example(record["sample_id"], step.task, image, text, kind, source, shard, index)
            )
        return examples, skipped

    def _text(self, record: dict, task: str, rng: np.random.Generator) -> tuple[str, str]:
        c = self.config
        draw = rng.random(3)
        if draw[0] < c.caption_dropout:
            return "", "dropout"
        if task == "i2i":
            return record.get("instruction") or "", "instruction"
        alt = record.get("caption_alt") or ""
        if draw[1] < c.metadata_caption_prob:
            return (alt, "caption_alt") if alt.strip() else ("", "caption_alt")
        names = sorted(self.caption_probs)
        p = np.array([self.caption_probs[k] for k in names], np.float64)
        column = names[int(np.searchsorted(np.cumsum(p / p.sum()), draw[2], side="right"))]
        column = column if column in names else names[-1]
        text = record.get(column) or ""
        text, column = (text, column) if text.strip() else (alt, "caption_alt")
        return (text, column) if text.strip() else ("", column)


def _decode(data: bytes | None, size: tuple[int, int]) -> Tensor:
    """Image bytes -> (3, H, W) float32 in [-1, 1] at ``size`` (W, H); raises on bad data."""
    if not data:
        raise ValueError("no image bytes")
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        rgb = resize_crop(im, size)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0)
    return x.permute(2, 0, 1).contiguous()
