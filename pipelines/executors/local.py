"""The local executor: every shard in this process, one after another (tests, debugging)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from tqdm.auto import tqdm

from infra.stage import Stage
from infra.storage import RunDir
from pipelines.executors.base import finish, plan, run_shard


class LocalExecutor:
    name = "local"

    def __init__(self, *, progress: bool = True):
        self.progress = progress

    def run_stage(self, stage: Stage, run: RunDir) -> dict[str, Any]:
        t0 = time.perf_counter()
        jobs, _ = plan(stage, run)
        ran = []
        if jobs:
            stage.setup()
            bar = tqdm(jobs, desc=stage.name, unit="shard", disable=not self.progress)
            for job in bar:
                ran.append(run_shard(stage, run, job))
        return finish(stage, run, executor=self.name, ran=ran, wall_s=time.perf_counter() - t0)

    def map_tasks(self, fn: Callable[..., Any], shared: Any, args: list[tuple]) -> Iterator[Any]:
        return (fn(shared, *a) for a in args)
