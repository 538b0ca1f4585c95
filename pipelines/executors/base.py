"""Bookkeeping every executor shares: plan shards, run one shard, finish a stage.

Work is keyed by **input shard**: ``samples/00007.parquet`` becomes ``profiles/00007.parquet``
(+ ``rejects/profile-00007.parquet``) followed by the marker ``profiles/_00007.done.json``
holding that shard's counters. A shard with a marker is never recomputed; a shard without
one is recomputed from scratch and overwrites whatever a killed run left behind. The same
function runs a shard on every executor, so their outputs are identical.
"""

from __future__ import annotations

import collections
import posixpath
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from infra.config import to_dict
from infra.stage import Stage
from infra.storage import RunDir, redact_all, shard_name
from infra.tables import ERROR_DETAIL, REJECTS, conform

# Stage fields that do not change outputs (may differ between a run and its resume):
# batch sizes, and where the caption stage reads weights/ (its `kg` is recorded).
RUNTIME_FIELDS = frozenset({"batch_rows", "weights_table"})


class StageInputMissing(RuntimeError):
    """The stage's input table is absent or incomplete."""


class RunConflict(RuntimeError):
    """The run directory holds results of different settings; use a new run directory."""


def guard_settings(run: RunDir, table: str, settings: dict[str, Any], prefix: str = "") -> None:
    """Refuse to mix shards made with different settings in one table (per shard-name prefix:
    each stage writing into a shared table has its own settings)."""
    path = run.path(table, f"_settings.{prefix}.json" if prefix else "_settings.json")
    settings = redact_all(settings)  # credentials in URIs are never stored
    if run.exists(path):
        before = run.read_json(path)
        if before != settings and not _written(run, table, prefix):
            run.write_json(path, settings)  # nothing was made with the old settings (a model
            # that failed to load, say): the fixed settings replace them
        elif before != settings:
            raise RunConflict(
                f"{run.display}/{table}/ was written with other settings:\n  before: {before}\n"
                f"  now:    {settings}\nUse a new --run directory (or delete {table}/)."
            )
    else:
        run.write_json(path, settings)


def _written(run: RunDir, table: str, prefix: str) -> bool:
    """Whether ``table`` holds any shard (marked or not) with this shard-name prefix."""
    if run.completed(table, prefix):
        return True
    names = [posixpath.basename(f) for f in run.data_files(table)]
    return any(n.startswith(f"{prefix}-") if prefix else n[:1].isdigit() for n in names)


@dataclass(frozen=True)
class ShardJob:
    index: int
    input_path: str
    input_sha256: str
    """Content hash of the input shard (from its marker): completion is keyed by it."""


def plan(stage: Stage, run: RunDir) -> tuple[list[ShardJob], int]:
    """(pending jobs, number of input shards). Requires a complete input table."""
    optional = [t for t in stage.side_lookups if not run.exists(run.table_path(t))]
    for side in [*stage.side_inputs, *(t for t in stage.side_lookups if t not in optional)]:
        if not run.exists(run.success_path(side)):
            raise StageInputMissing(
                f"stage {stage.name!r} needs a complete {side}/ table in {run.display}"
            )
    if not run.exists(run.success_path(stage.input_table)):
        raise StageInputMissing(
            f"stage {stage.name!r} needs a complete {stage.input_table}/ table in {run.display} "
            f"(run the step that writes it first)"
        )
    settings = {k: v for k, v in to_dict(stage).items() if k not in RUNTIME_FIELDS}
    guard_settings(run, stage.output_table, {"stage": stage.name, **settings}, stage.output_prefix)
    inputs = run.completed(stage.input_table)
    if any("sha256" not in m for m in inputs.values()):
        raise RunConflict(
            f"{run.display}/{stage.input_table}/ was written by an older zfoundry without "
            f"content hashes; use a new --run directory"
        )
    _drop_orphans(stage, run, set(inputs))
    done = run.completed(stage.output_table, stage.output_prefix)
    jobs = [
        ShardJob(i, run.path(stage.input_table, shard_name(i)), marker["sha256"])
        for i, marker in inputs.items()
        if done.get(i, {}).get("input_sha256") != marker["sha256"]  # missing, or input changed
    ]
    if jobs:  # the table is not complete until these are done
        run.delete([run.success_path(stage.output_table)])
    return jobs, len(inputs)


def _drop_orphans(stage: Stage, run: RunDir, inputs: set[int]) -> None:
    """Remove output shards whose input shard no longer exists (e.g. after a re-ingest with
    another shard size), so they can never be read as results."""
    prefix = stage.output_prefix
    orphans = set(run.completed(stage.output_table, prefix)) - inputs
    for path in run.data_files(stage.output_table):
        head, _, index = path.rsplit("/", 1)[1].removesuffix(".parquet").rpartition("-")
        if head == prefix and index.isdigit() and int(index) not in inputs:
            orphans.add(int(index))
    run.delete(
        p
        for i in orphans
        for p in (
            run.path(stage.output_table, shard_name(i, prefix)),
            run.marker_path(stage.output_table, i, prefix),
            run.path("rejects", shard_name(i, prefix=stage.name)),
        )
    )


def split_rejects(
    table: pa.Table, stage_name: str, schema: pa.Schema, key: str = "sample_id"
) -> tuple[pa.Table, pa.Table]:
    """Move rows with a non-null ``error`` into a rejects table; drop ``error_detail``.

    When the output contract has an ``error`` column (profiles), failed rows stay in the
    output too (one row per sample); otherwise they leave it together with the column.
    ``key`` is the output column naming the input row (the rejects' ``sample_id``).
    """
    detail = table.column(ERROR_DETAIL) if ERROR_DETAIL in table.column_names else None
    main = table.drop_columns([ERROR_DETAIL]) if detail is not None else table
    if "error" not in table.column_names:
        return main, REJECTS.empty_table()
    failed = pc.is_valid(table.column("error"))
    bad = table.filter(failed)
    rejects = pa.table(
        {
            "sample_id": bad.column(key),
            "stage": pa.array([stage_name] * bad.num_rows, pa.string()),
            "reason": bad.column("error"),
            "detail": bad.column(ERROR_DETAIL) if detail is not None else pa.nulls(bad.num_rows),
        }
    )
    if "error" not in schema.names:
        main = main.filter(pc.invert(failed)).drop_columns(["error"])
    return main, conform(rejects, REJECTS, name="rejects")


def _side_columns(stage: Stage, run: RunDir, job: ShardJob, ids: pa.ChunkedArray) -> pa.Table:
    """Columns of the stage's side tables for this shard, checked to be row-aligned."""
    side: dict[str, pa.ChunkedArray] = {}
    for table, columns in stage.side_inputs.items():
        path = run.path(table, shard_name(job.index))
        part = pq.read_table(path, columns=["sample_id", *columns], filesystem=run.fs)
        if not part.column("sample_id").equals(ids):
            raise RuntimeError(f"{path} is not row-aligned with {job.input_path}")
        side |= {name: part.column(name) for name in columns if name != "sample_id"}
    return pa.table(side)


def _input_batches(stage: Stage, run: RunDir, job: ShardJob) -> Iterator[pa.Table]:
    source = pq.ParquetFile(job.input_path, filesystem=run.fs)
    columns = list(stage.input_columns) if stage.input_columns else None
    side = None
    if stage.side_inputs:
        ids = pq.read_table(job.input_path, columns=["sample_id"], filesystem=run.fs)
        side = _side_columns(stage, run, job, ids.column("sample_id"))
    lookups = {  # a lookup table that does not exist at all reads as all-null
        table: pq.read_table(
            run.path(table, shard_name(job.index)), columns=["sample_id", *cols], filesystem=run.fs
        )
        if run.exists(run.table_path(table))
        else pa.table({"sample_id": pa.array([], pa.string()), **{c: pa.array([]) for c in cols}})
        for table, cols in stage.side_lookups.items()
    }
    offset = 0
    for batch in source.iter_batches(batch_size=getattr(stage, "batch_rows", 256), columns=columns):
        table = pa.Table.from_batches([batch])
        if side is not None:
            for name in side.column_names:
                table = table.append_column(name, side.column(name).slice(offset, len(table)))
        for name, part in lookups.items():
            where = {sid: i for i, sid in enumerate(part.column("sample_id").to_pylist())}
            rows = pa.array(
                [where.get(s) for s in table.column("sample_id").to_pylist()], pa.int64()
            )
            for col in part.column_names[1:]:
                table = table.append_column(f"{name}.{col}", part.column(col).take(rows))
        offset += len(table)
        yield table


def run_shard(stage: Stage, run: RunDir, job: ShardJob) -> dict[str, Any]:
    """Run ``stage`` over one input shard, write its outputs atomically, then its marker."""
    t0 = time.perf_counter()
    rows_in = pq.ParquetFile(job.input_path, filesystem=run.fs).metadata.num_rows
    outputs = [stage.process_batch(batch) for batch in _input_batches(stage, run, job)]
    schema = stage.output_schema
    table = pa.concat_tables(outputs) if outputs else schema.empty_table()
    main, rejects = split_rejects(table, stage.name, schema, stage.row_key)
    main = conform(main, schema, name=stage.output_table)
    if stage.expands:  # inputs, not output rows, are accounted for
        ok_keys = set(main.column(stage.row_key).to_pylist())
        rejected = len(set(rejects.column("sample_id").to_pylist()) - ok_keys)
        skipped = rows_in - len(ok_keys) - rejected
    else:
        rejected = rejects.num_rows
        skipped = rows_in - main.num_rows - (0 if "error" in schema.names else rejected)
    if stage.one_to_one and main.num_rows != rows_in:
        raise RuntimeError(f"stage {stage.name!r} returned {main.num_rows} rows for {rows_in}")
    if skipped < 0:
        raise RuntimeError(f"stage {stage.name!r} returned more rows than it was given")

    rejects_file = run.path("rejects", shard_name(job.index, prefix=stage.name))
    if rejects.num_rows:
        run.write_parquet("rejects", rejects_file.rsplit("/", 1)[1], rejects)
    else:
        run.delete([rejects_file])  # a stale file from an interrupted earlier attempt
    prefix = stage.output_prefix
    written = run.write_parquet(stage.output_table, shard_name(job.index, prefix), main)
    reasons = collections.Counter(rejects.column("reason").to_pylist())
    stats = {
        "stage": stage.name,
        "shard": job.index,
        "input": job.input_path,
        "input_sha256": job.input_sha256,
        "sha256": written["sha256"],
        "rows_in": rows_in,
        "rows_out": main.num_rows,
        "ok": rows_in - rejected - skipped,
        "rejected": rejected,
        "skipped": skipped,
        "reasons": dict(sorted(reasons.items())),
        "seconds": round(time.perf_counter() - t0, 4),
    }
    if stage.count_by:
        counts = collections.Counter(main.column(stage.count_by).to_pylist())
        stats[f"by_{stage.count_by}"] = dict(sorted(counts.items()))
    run.write_json(run.marker_path(stage.output_table, job.index, prefix), stats)
    return stats


def finish(
    stage: Stage, run: RunDir, *, executor: str, ran: list[dict[str, Any]], wall_s: float
) -> dict[str, Any]:
    """Mark the output table complete and write ``stats/<stage>.json`` over all shards."""
    markers = run.completed(stage.output_table, stage.output_prefix)
    inputs = run.completed(stage.input_table)
    stale = [
        i for i, m in markers.items() if m.get("input_sha256") != inputs.get(i, {}).get("sha256")
    ]
    if stale or len(markers) != len(inputs):
        raise RuntimeError(f"{stage.output_table}/: shards {stale} do not match their inputs")
    reasons: collections.Counter[str] = collections.Counter()
    for m in markers.values():
        reasons.update(m["reasons"])
    rows = sum(m["rows_in"] for m in markers.values())
    rows_run = sum(m["rows_in"] for m in ran)
    stats = {
        "stage": stage.name,
        "executor": executor,
        "table": stage.output_table,
        "shards": len(markers),
        "shards_run": len(ran),
        "shards_skipped": len(markers) - len(ran),
        "in": rows,
        "ok": sum(m["ok"] for m in markers.values()),
        "rejected": sum(m["rejected"] for m in markers.values()),
        "skipped": sum(m.get("skipped", 0) for m in markers.values()),
        "reasons": dict(sorted(reasons.items())),
        "wall_seconds": round(wall_s, 3),
        "rows_run": rows_run,
        "rows_per_s": round(rows_run / wall_s, 2) if rows_run and wall_s > 0 else None,
    }
    if stage.count_by:
        key = f"by_{stage.count_by}"
        counts: collections.Counter[str] = collections.Counter()
        for m in markers.values():
            counts.update(m.get(key, {}))
        stats[key] = dict(sorted(counts.items()))
        stats["rows_out"] = sum(m["rows_out"] for m in markers.values())
    run.write_json(run.success_path(stage.output_table), {"shards": len(markers), "rows": rows})
    run.write_json(run.path("stats", f"{stage.name}.json"), stats)
    return stats
