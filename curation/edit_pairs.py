"""The ``edit_pairs`` table: (source, target, instruction) triples that ``select`` turns into
``task = 'i2i'`` shard rows.

``zfoundry pairs`` writes it (``curation.pairs.stage``: expert edits with graphical
combination, rendered text edits, video-frame pairs). Pairs between ingested files can also be
imported from a JSON-lines listing (``import_pairs``): one object per line with ``source``
and ``target`` (keys of the samples table, i.e. paths relative to the ingested folder),
``instruction`` and optionally ``instruction_zh``, ``kind`` (default ``expert``) and
``operations`` (a list). A line naming a file that was not ingested raises with its line
number.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from infra.storage import RunDir, read_bytes
from infra.tables import EDIT_PAIRS, conform

KINDS = ("expert", "inverse", "mixed", "video", "text_render")


def pair_id(source: str, target: str, extra: str) -> str:
    """A stable id from the two ends' names (sample ids, or names of generated images) and
    one more distinguishing string (the instruction of an imported pair, a constructed
    pair's kind)."""
    text = f"{source}\x00{target}\x00{extra}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def write_edit_pairs(run: RunDir, rows: list[dict]) -> int:
    """Replace ``edit_pairs/`` with imported ``rows`` (dicts with ``source_id``,
    ``target_id``, ``instruction`` and optionally ``instruction_zh``, ``kind``,
    ``operations``, ``provenance``); returns the row count."""
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
            "base_id": None,
            "source_id": row["source_id"],
            "target_id": row["target_id"],
            "source_image": None,
            "target_image": None,
            "width": None,
            "height": None,
            "instruction": row["instruction"],
            "instruction_zh": row.get("instruction_zh"),
            "kind": kind,
            "operations": None if ops is None else json.dumps(ops, ensure_ascii=False),
            "provenance": json.dumps(row.get("provenance", {}), ensure_ascii=False),
        })  # fmt: skip
    out.sort(key=lambda r: r["pair_id"])
    table = conform(pa.Table.from_pylist(out, schema=EDIT_PAIRS), EDIT_PAIRS, name="edit_pairs")
    # shards of an earlier `zfoundry pairs` run would otherwise be all a reader sees
    run.delete(run.marker_path("edit_pairs", i, p) for p, i in run.markers("edit_pairs"))
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
