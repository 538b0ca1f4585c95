"""The stage protocol every per-batch engine step implements (CONVENTIONS.md 1).

A stage is a small dataclass whose fields are its config. It declares ``name``, the table
it reads and the table it writes, the resources one worker needs, loads anything heavy
once in :meth:`Stage.setup`, and transforms Arrow tables in :meth:`Stage.process_batch`.
Stages never import ``ray``: executors in ``pipelines/`` run them in-process or on Ray.

Per-row data errors are not exceptions. A stage whose output table has an ``error``
column sets it to a short code for a failed row (and may add an ``error_detail`` column);
the framework routes those rows to ``rejects/`` and counts them by reason.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What one worker of a stage needs; executors map it to Ray task/actor options."""

    cpus: float = 1.0
    """CPU cores per worker."""
    gpus: float = 0.0
    """GPU fraction per worker (model stages); > 0 makes the Ray executor use actors."""
    actors: bool = False
    """Run as an actor pool even without GPUs, so a model loads once per worker."""
    memory_gb: float | None = None
    """Heap memory per worker to reserve, or None for the scheduler's default."""


class Stage(abc.ABC):
    """Base class of per-batch stages. Subclasses are ``@dataclass(kw_only=True)``."""

    name: ClassVar[str]
    """Stage name: the step name in pipeline files and the ``stage`` of its rejects."""
    input_table: ClassVar[str]
    output_table: ClassVar[str]
    input_columns: ClassVar[tuple[str, ...] | None] = None
    """Columns of the input table the stage reads (None = all)."""
    side_inputs: ClassVar[dict[str, tuple[str, ...]]] = {}
    """Other tables whose shard *i* is row-aligned with input shard *i* (e.g. ``profiles``
    next to ``samples``): these columns are appended to every input batch."""
    side_lookups: ClassVar[dict[str, tuple[str, ...]]] = {}
    """Other tables whose shard *i* holds a subset of input shard *i*'s samples (e.g.
    ``text_vectors`` next to ``vectors``): joined by ``sample_id``, null where absent,
    and appended as ``<table>.<column>``."""
    one_to_one: ClassVar[bool] = True
    """Exactly one output row per input row. Otherwise the stage may skip rows (counted
    as ``skipped``: rows in - rows out - rejected)."""
    expands: ClassVar[bool] = False
    """May return several output rows per input row (editing pairs). An input row then counts
    as ok when an output row names it in ``row_key``, as rejected when only rejects do, and
    as skipped otherwise; a rejects row may name an input that also gave outputs (one of its
    pairs failed)."""
    row_key: ClassVar[str] = "sample_id"
    """Output column naming the input row an output or error row came from (rejects'
    ``sample_id``)."""
    count_by: ClassVar[str | None] = None
    """Output column whose values are counted per shard and in ``stats/<stage>.json``
    (``by_<column>``), e.g. the ``kind`` of editing pairs."""
    output_prefix: ClassVar[str] = ""
    """Shard-name prefix in ``output_table`` (``video`` -> ``video-00003.parquet``), so that
    several stages can write one table, each from its own input table."""

    @property
    def resources(self) -> Resources:
        return Resources()

    @property
    def output_schema(self) -> pa.Schema:
        """The schema written to ``output_table`` (default: its contract in infra.tables)."""
        from infra.tables import TABLES

        return TABLES[self.output_table]

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load models or other per-worker state. Called once per worker before batches."""

    @abc.abstractmethod
    def process_batch(self, table: pa.Table) -> pa.Table:
        """Transform one input batch into output rows (one per input row for 1:1 stages)."""
