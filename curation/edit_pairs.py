"""The ``edit_pairs`` table: (source sample, target sample, instruction) triples that
``select`` turns into ``task = 'i2i'`` shard rows.

The pair constructors (expert edits, video frames, rendered text; ``zfoundry pairs``) write it;
until then pairs can be imported from a JSON-lines listing of ingested files
(``import_pairs``): one object per line with ``source`` and ``target`` (keys of the samples
table, i.e. paths relative to the ingested folder), ``instruction`` and optionally
``instruction_zh``, ``kind`` (default ``expert``) and ``operations`` (a list). A line naming a
file that was not ingested raises with its line number.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from infra.storage import RunDir, read_bytes
from infra.tables import EDIT_PAIRS, conform

KINDS = ("expert", "inverse", "mixed", "video", "text_render")


def pair_id(source_id: str, target_id: str, instruction: str) -> str:
    text = f"{source_id}\x00{target_id}\x00{instruction}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def write_edit_pairs(run: RunDir, rows: list[dict]) -> int:
    """Replace ``edit_pairs/`` with ``rows`` (dicts with the EDIT_PAIRS columns except
    ``pair_id``, which is derived); returns the row count."""
    out = []
    for i, row in enumerate(rows):
        kind = row.get("kind", "expert")
        if kind not in KINDS:
            raise ValueError(f"pair {i}: kind {kind!r} must be one of {KINDS}")
        if not row.get("instruction"):
            raise ValueError(f"pair {i}: empty instruction")
        ops = row.get("operations")
        out.append({
            "pair_id": pair_id(row["source_id"], row["target_id"], row["instruction"]),
            "source_id": row["source_id"],
            "target_id": row["target_id"],
            "instruction": row["instruction"],
            "instruction_zh": row.get("instruction_zh"),
            "kind": kind,
            "operations": None if ops is None else json.dumps(ops, ensure_ascii=False),
            "provenance": json.dumps(row.get("provenance", {}), ensure_ascii=False),
        })  # fmt: skip
    out.sort(key=lambda r: r["pair_id"])
    table = conform(pa.Table.from_pylist(out, schema=EDIT_PAIRS), EDIT_PAIRS, name="edit_pairs")
    run.replace_table("edit_pairs", table)
    return len(out)


def import_pairs(run: RunDir, listing: str) -> int:
    """``edit_pairs/`` from a JSON-lines listing of ingested files (module docstring)."""
    from infra import catalog

    con = catalog.connect(run)
    keys = dict(con.sql("SELECT key, sample_id FROM samples").fetchall())
    rows = []
    for n, line in enumerate(read_bytes(listing).decode().splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        missing = [item.get(k) for k in ("source", "target") if item.get(k) not in keys]
        if missing:
            raise ValueError(f"{listing}:{n}: {missing} not in the samples table (ingested?)")
        rows.append({
            "source_id": keys[item["source"]],
            "target_id": keys[item["target"]],
            "instruction": item["instruction"],
            "instruction_zh": item.get("instruction_zh"),
            "kind": item.get("kind", "expert"),
            "operations": item.get("operations"),
            "provenance": {"listing": listing, "line": n},
        })  # fmt: skip
    return write_edit_pairs(run, rows)
