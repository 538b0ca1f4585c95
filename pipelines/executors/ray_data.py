"""The Ray Data executor: shards become rows of a Ray Dataset mapped with ``map_batches``.

Each input shard is one row and one block, so Ray schedules one task (CPU stages) or one
actor call (stages declaring GPUs) per shard, retries failed tasks, and shows its own
progress bar. Inside the task the shard runs through the same ``run_shard`` as locally,
so outputs are byte-identical to the local executor's. ``ray`` is imported only here.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from infra.stage import Resources, Stage
from infra.storage import RunDir
from pipelines.executors.base import ShardJob, finish, plan, run_shard


def _run_jobs(batch: pa.Table, stage: Stage, run: RunDir, ready: bool = False) -> pa.Table:
    if not ready:
        stage.setup()  # task mode: cheap CPU setup, once per task
    stats = [run_shard(stage, run, ShardJob(**row)) for row in batch.to_pylist()]
    return pa.table({"stats": [json.dumps(s) for s in stats]})


class _ShardActor:
    """Actor-pool UDF for model stages: ``setup()`` (model load) once per actor."""

    def __init__(self, stage: Stage, run: RunDir):
        self.stage, self.run = stage, run
        stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _run_jobs(batch, self.stage, self.run, ready=True)


@contextlib.contextmanager
def _data_context(progress: bool) -> Iterator[None]:
    """Ray Data settings for our one-operator datasets, restored afterwards.

    Ray Data reserves a share of the cluster per operator by default; with a single map
    operator that reservation left one of 2 CPUs idle much of the time (measured: 75 vs 96
    images/s on 1,000 1-MP photos, bench/profile_throughput.py), so it is turned off here.
    """
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = ctx.op_resource_reservation_enabled, ctx.enable_progress_bars
    ctx.op_resource_reservation_enabled, ctx.enable_progress_bars = False, progress
    try:
        yield
    finally:
        ctx.op_resource_reservation_enabled, ctx.enable_progress_bars = saved


def _call(fn: Callable[..., Any], shared: Any, *args: Any) -> Any:
    return fn(shared, *args)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (a cluster, or ``auto``) or start a local Ray instance."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address=address,
        num_cpus=None if address else num_cpus,
        include_dashboard=False,
        configure_logging=True,
        logging_level="warning",
        log_to_driver=True,
    )


def _pool_size(res: Resources, jobs: int) -> int:
    """As many actors as the cluster fits (GPUs for GPU stages, else CPUs), at most ``jobs``."""
    import ray

    have = ray.cluster_resources()
    fits = have.get("GPU", 0) / res.gpus if res.gpus > 0 else have.get("CPU", 1) / res.cpus
    return max(1, min(int(fits), jobs))


class RayExecutor:
    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        actors: int | None = None,
        progress: bool = True,
    ):
        self.address, self.num_cpus = address, num_cpus
        self.actors, self.progress = actors, progress

    def run_stage(self, stage: Stage, run: RunDir) -> dict[str, Any]:
        t0 = time.perf_counter()
        jobs, _ = plan(stage, run)
        ran: list[dict[str, Any]] = []
        if jobs:
            ensure_ray(self.address, self.num_cpus)
            with _data_context(self.progress):
                ran = self._map_shards(stage, run, jobs)
        return finish(stage, run, executor=self.name, ran=ran, wall_s=time.perf_counter() - t0)

    def map_tasks(self, fn: Callable[..., Any], shared: Any, args: list[tuple]) -> Iterator[Any]:
        """One Ray task (1 CPU) per ``args`` entry; ``shared`` goes to the object store once
        and every task on a node reads it from shared memory (numpy arrays zero-copy). A
        single task runs in process unless Ray is already up (no start-up for small inputs)."""
        import ray

        if len(args) <= 1 and not ray.is_initialized():
            yield from (fn(shared, *a) for a in args)
            return
        ensure_ray(self.address, self.num_cpus)
        ref = ray.put(shared)
        task = ray.remote(num_cpus=1)(_call)
        refs = [task.remote(fn, ref, *a) for a in args]
        for r in refs:
            yield ray.get(r)

    def _map_shards(self, stage: Stage, run: RunDir, jobs: list[ShardJob]) -> list[dict]:
        import ray

        items = [
            {"index": j.index, "input_path": j.input_path, "input_sha256": j.input_sha256}
            for j in jobs
        ]
        ds = ray.data.from_items(items, override_num_blocks=len(items))  # one block per shard
        res = stage.resources
        remote: dict[str, Any] = {"num_cpus": res.cpus}
        if res.memory_gb:
            remote["memory"] = int(res.memory_gb * 2**30)
        if res.gpus > 0 or res.actors:  # model stages: an actor pool, setup() once per actor
            ds = ds.map_batches(
                _ShardActor,
                fn_constructor_kwargs={"stage": stage, "run": run},
                batch_size=1,
                batch_format="pyarrow",
                concurrency=self.actors or _pool_size(res, len(jobs)),
                num_gpus=res.gpus,
                **remote,
            )
        else:  # CPU stages: one task per shard
            ds = ds.map_batches(
                _run_jobs,
                fn_kwargs={"stage": stage, "run": run},
                batch_size=1,
                batch_format="pyarrow",
                **remote,
            )
        return [json.loads(r["stats"]) for r in ds.take_all()]
