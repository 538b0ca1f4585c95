"""Executors run per-batch stages over a run's shards: ``local`` (in-process) or ``ray``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from infra.stage import Stage
from infra.storage import RunDir


class Executor(Protocol):
    name: str

    def run_stage(self, stage: Stage, run: RunDir) -> dict[str, Any]:
        """Run ``stage`` over every pending shard; return the stage's counters."""
        ...

    def map_tasks(self, fn: Callable[..., Any], shared: Any, args: list[tuple]) -> Iterable[Any]:
        """``fn(shared, *a)`` for each ``a`` in ``args``, results in order; ``shared`` is
        sent once (global steps such as dedup spread their shards with this)."""
        ...


def get_executor(kind: str, **options: Any) -> Executor:
    """``local`` or ``ray`` (options: address, num_cpus, actors, progress)."""
    if kind == "local":
        from pipelines.executors.local import LocalExecutor

        return LocalExecutor(progress=options.get("progress", True))
    if kind == "ray":
        from pipelines.executors.ray_data import RayExecutor

        return RayExecutor(**options)
    raise ValueError(f"executor: unknown kind {kind!r} (choose 'local' or 'ray')")
