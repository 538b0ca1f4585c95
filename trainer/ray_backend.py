"""The ``ray`` training backend: ``trainer.Trainer`` hosted by Ray Train (``TorchTrainer``).

The driver (``run``) builds the stage's data plan for ``ray.num_workers`` ranks and hands each
rank its own stream of steps as a Ray Dataset (``plan0``, ``plan1``, ...; one row = one step's
batch of row positions) that the worker reads through ``ray.train.get_dataset_shard``. Ray's
``streaming_split`` is not used: it balances rows, not token-budget batches, and does not say
which rank gets which row, while data-parallel training needs every rank to run the same steps
and a resumed run needs the same batches. The split is therefore ``StageData.plan``'s, made for
the world size, and every rank gets the same number of batches by construction.

Each worker runs ``Trainer.fit`` with Ray's hooks: resume from ``ray.train.get_checkpoint()``,
steps from its dataset shard, and ``ray.train.report`` on every logged or checkpointed step (on
every rank, as Ray Train requires), with rank 0's checkpoint folder attached. Ray's process
group (gloo on CPU, NCCL on GPU) is set up before the worker function runs; ``Trainer``
wraps the model in DDP itself (``ray.train.torch.prepare_model`` is not used).

Storage: ``RunConfig(storage_path=out.parent, name=out.name)``, so ``out`` *is* the run's
folder: Ray's ``checkpoint_manager_snapshot.json`` sits next to our ``checkpoints/step-N``,
``metrics.jsonl`` and ``final/``. Re-running the same stage re-creates the ``TorchTrainer``
with the same name and storage path, which resumes from the newest registered checkpoint. With
``ray.storage`` set (object storage), ``out`` is a local staging folder and checkpoints are
uploaded. See docs/training.md ("The Ray backend").
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from infra.storage import join_uri
from trainer.config import StageConfig

if TYPE_CHECKING:
    from trainer.curriculum import Curriculum

FAULT_ENV = "ZFOUNDRY_TRAIN_FAULT"
"""Test hook read by the driver: comma-separated ``KIND:RANK:STAGE:STEP`` with KIND ``exit``
(that worker exits before training that step of that stage) or ``pause`` (it sleeps there, for
a test to kill the driver); each fires once per stage folder (a marker file records it)."""


def run(config: StageConfig) -> dict[str, Any]:
    """Train one stage on Ray Train workers; its ``out`` is the Ray run's folder."""
    config = absolute_paths(config)
    return _fit([config], root=config.out)[0]


def run_curriculum(curriculum: Curriculum) -> list[dict[str, Any]]:
    """Train a curriculum's unfinished stages in one Ray Train run (the workers stay up
    between stages); its ``out`` is the Ray run's folder, stage NAME is ``out/NAME``."""
    stages = [absolute_paths(s) for s in curriculum.stages]
    return _fit(stages, root=Path(curriculum.out).resolve())


def _fit(stages: list[StageConfig], root: Path) -> list[dict[str, Any]]:
    from trainer.curriculum import done_summary, stage_done

    rc = stages[0].ray
    storage = join_uri(str(rc.storage), root.name) if rc.storage else ""  # the run's folder
    todo = [i for i, s in enumerate(stages) if not stage_done(s, _location(s, root, storage))]
    if not todo:
        return [done_summary(stage) for stage in stages]
    # Read by the driver, or propagated by Ray Train to its controller and workers.
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"  # workers keep the driver's cwd
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(rc.poll_interval_s))
    import ray.data
    import ray.train
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from infra.storage import resolve_uri
    from pipelines.executors.ray_data import ensure_ray

    ensure_ray(address=rc.address or None)
    fs, storage_path = resolve_uri(rc.storage or root.parent)
    datasets = {}
    context = ray.data.DataContext.get_current()
    bars, context.enable_progress_bars = context.enable_progress_bars, False  # (plans are tiny)
    try:
        for i in todo:
            for rank, rows in enumerate(plan_rows(stages[i], rc.num_workers)):
                datasets[f"stage{i}_plan{rank}"] = ray.data.from_items(rows)
    finally:
        context.enable_progress_bars = bars
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "stages": stages,
            "root": root,
            "storage": storage,
            "fault": os.environ.get(FAULT_ENV, ""),
        },
        torch_config=TorchConfig(timeout_s=rc.collective_timeout_s),
        scaling_config=ScalingConfig(
            num_workers=rc.num_workers,
            use_gpu=rc.use_gpu,
            resources_per_worker={"CPU": rc.cpus_per_worker, **rc.resources_per_worker},
        ),
        run_config=RunConfig(
            name=root.name,
            storage_path=storage_path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=rc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=rc.num_to_keep or None),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[]),  # each rank reads its own plan
    )
    trained = {s["stage"]: s for s in trainer.fit().return_value}
    return [trained.get(stage.name) or done_summary(stage) for stage in stages]


def _location(stage: StageConfig, root: Path, storage: str) -> str:
    """The stage's folder in run storage ("" when ``out`` is in it: local storage)."""
    if not storage:
        return ""
    rel = Path(stage.out).relative_to(root).as_posix()
    return storage if rel == "." else join_uri(storage, rel)


def plan_rows(config: StageConfig, world_size: int) -> list[list[dict[str, Any]]]:
    """Per rank, the steps ``Trainer.next_step`` would walk for ``world_size`` ranks: whole
    epochs until ``config.steps``, plus one spare epoch for steps skipped on undecodable rows."""
    from trainer.data import Manifest, StageData

    data = StageData(
        Manifest.load(str(config.manifest)), config.data, seed=config.seed, world_size=world_size
    )
    rows: list[list[dict[str, Any]]] = [[] for _ in range(world_size)]
    epoch = planned = 0
    while True:
        spare = planned >= config.steps  # enough planned: this epoch is the spare one
        plan = data.plan(epoch)
        if not plan:
            raise ValueError(f"epoch {epoch} has no batches: the manifest's {len(data)} rows give "
                             f"no full step for {world_size} ranks")  # fmt: skip
        for step in plan:
            for rank, batch in enumerate(step.batches):
                rows[rank].append({"epoch": step.epoch, "index": step.index, "task": step.task,
                                   "rows": batch.astype(np.int64).tolist()})  # fmt: skip
        planned, epoch = planned + len(plan), epoch + 1
        if spare:
            return rows


def train_worker(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One rank: every unfinished stage in order, each ``Trainer.fit`` with Ray Train's
    resume, data and report hooks. Rank 0 returns one summary per trained stage."""
    import logging

    import torch
    from ray import train

    from trainer.curriculum import stage_done

    for name in ("ray.train.v2._internal.execution.context", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)  # a line per report / plan read
    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg["stages"][0].ray.cpus_per_worker)))  # runs the loop
    root, storage = Path(cfg["root"]), cfg["storage"]
    summaries = []
    for index, config in enumerate(cfg["stages"]):
        location = _location(config, root, storage)
        if stage_done(config, location):  # before this run, or before a worker-group restart
            continue
        if index and storage:  # start from the previous stage: fetch its final/ if not here
            before = cfg["stages"][index - 1]
            final = Path(before.out) / "final"
            if ctx.get_local_rank() == 0 and not final.is_dir():  # one download per node
                _download(join_uri(_location(before, root, storage), "final"), final)
            if world > 1:
                import torch.distributed as dist

                dist.barrier()
        summaries.append(_train_stage(config, index, location, cfg, rank, world))
    return summaries


def _train_stage(
    config: StageConfig, index: int, location: str, cfg: dict[str, Any], rank: int, world: int
) -> dict[str, Any]:
    """One stage on this rank; ``location``: the stage's folder in run storage ("": local)."""
    from ray import train
    from ray.train import Checkpoint, CheckpointUploadMode
    from ray.train.torch import get_device

    from infra.storage import resolve_uri
    from trainer.checkpoint import load_state
    from trainer.curriculum import final_step
    from trainer.data import Step
    from trainer.trainer import Trainer

    if config.ray.use_gpu:  # every GPU of the node is visible: use this worker's
        config = dataclasses.replace(config, device=str(get_device()))
    rel = Path(config.out).relative_to(cfg["root"]).as_posix()  # "." for a single stage
    prefix = "checkpoints" if rel == "." else f"{rel}/checkpoints"
    trainer = Trainer(config, rank=rank, world_size=world)
    faults = _Fault.parse(cfg["fault"], config)

    def resume() -> str | None:
        checkpoint = train.get_checkpoint()  # the run's newest: maybe another stage's
        here = resolve_uri(location)[1] if location else str(config.out)
        if checkpoint is None or not checkpoint.path.startswith(f"{here}/checkpoints/"):
            checkpoint = _stage_checkpoint(location or str(config.out))  # this stage's newest
            if checkpoint is None:
                if final_step(config, location) is not None:  # finished, then given more steps
                    raise ValueError(f"stage {config.name!r} finished earlier but none of its "
                                     "checkpoints is left (ray.num_to_keep?), so it cannot "
                                     "continue; train a new stage from its "
                                     "final/ instead")  # fmt: skip
                return None
        with checkpoint.as_directory() as folder:
            load_state(trainer, Path(folder))
            metrics = Path(folder) / "metrics.jsonl"
            if rank == 0 and location and metrics.is_file():  # e.g. a fresh staging folder
                trainer.out.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(metrics, trainer.out / "metrics.jsonl")
        return checkpoint.path

    def steps() -> Iterator[Step]:
        for row in train.get_dataset_shard(f"stage{index}_plan{rank}").iter_rows():
            for fault in faults:
                fault.maybe(rank, trainer.global_step + 1)
            batches = [np.zeros(0, np.int64)] * world
            batches[rank] = np.asarray(row["rows"], np.int64)
            yield Step(int(row["epoch"]), int(row["index"]), str(row["task"]), batches)

    mode = CheckpointUploadMode.SYNC if location else CheckpointUploadMode.NO_UPLOAD

    def report(row: dict[str, Any], folder: Path | None) -> None:
        checkpoint = None
        if folder is not None:
            metrics = trainer.out / "metrics.jsonl"
            if location and metrics.is_file():  # the metrics so far travel with the checkpoint
                shutil.copyfile(metrics, folder / "metrics.jsonl")
            checkpoint = Checkpoint.from_directory(str(folder))
        train.report(
            {"stage": config.name, **row},
            checkpoint=checkpoint,
            checkpoint_dir_name=f"{prefix}/{folder.name}" if folder is not None else None,
            checkpoint_upload_mode=mode,
        )

    summary = trainer.fit(steps=steps(), resume=resume, report=report, bar=_RayBar)
    if location and rank == 0:  # the stage note last: a stage is done once it is there
        from trainer.checkpoint import STAGE_FILE

        for name in ("metrics.jsonl", "final/transformer", f"final/{STAGE_FILE}"):
            _upload(trainer.out / name, join_uri(location, *name.split("/")))
    trainer._barrier()  # the next stage starts from this one's final/
    return summary


class _RayBar:
    """tqdm's interface over ``ray.experimental.tqdm_ray``: the driver draws the bar."""

    def __init__(self, *, total: int, initial: int, unit: str, desc: str, disable: bool) -> None:
        from ray.experimental.tqdm_ray import tqdm

        self.desc = desc
        self.bar = None if disable else tqdm(total=total, desc=desc, unit=unit)
        if self.bar is not None and initial:
            self.bar.update(initial)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, **values: str) -> None:
        if self.bar is not None:
            extra = " ".join(f"{k}={v}" for k, v in values.items())
            self.bar.set_description(f"{self.desc} {extra}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclasses.dataclass(frozen=True)
class _Fault:
    """Fault injection for the resume tests (see ``FAULT_ENV``)."""

    kind: str
    rank: int
    step: int
    marker: Path

    @classmethod
    def parse(cls, text: str, config: StageConfig) -> list[_Fault]:
        faults = []
        for item in filter(None, text.split(",")):
            kind, rank, stage, step = item.split(":")
            if kind not in ("exit", "pause"):
                raise ValueError(f"{FAULT_ENV}={text!r}: kind must be exit or pause")
            if stage == config.name:
                marker = Path(config.out) / f".fault-{kind}-rank{rank}-step{step}"
                faults.append(cls(kind, int(rank), int(step), marker))
        return faults

    def maybe(self, rank: int, step: int) -> None:
        if (rank, step) != (self.rank, self.step) or self.marker.exists():
            return
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(f"{os.getpid()}\n")
        if self.kind == "exit":
            os._exit(1)
        time.sleep(3600)


def absolute_paths(config: StageConfig) -> StageConfig:
    """Local paths made absolute: workers must not depend on the driver's working directory,
    and Ray compares checkpoint paths as strings under the run folder."""

    def local(p: str) -> str:
        return p if (not p or "://" in p or not Path(p).exists()) else str(Path(p).resolve())

    return dataclasses.replace(
        config,
        out=Path(config.out).resolve(),
        manifest=type(config.manifest)(local(str(config.manifest))),
        encoders=dataclasses.replace(config.encoders, pipeline=local(config.encoders.pipeline)),
        data=dataclasses.replace(config.data, cache=local(config.data.cache)),
        model=dataclasses.replace(config.model, pretrained=local(config.model.pretrained)),
    )


def _stage_checkpoint(stage_dir: str):
    """The newest complete ``checkpoints/step-N`` of a stage folder (a path or a storage URI):
    where a stage resumes when Ray's newest checkpoint is another stage's (a finished stage
    given more steps) or Ray has none (a run of the local backend, a deleted snapshot)."""
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    from infra.storage import resolve_uri
    from trainer.checkpoint import MARKER

    fs, root = resolve_uri(join_uri(stage_dir, "checkpoints"))
    found = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    names = sorted((f.base_name for f in found if f.type == pafs.FileType.Directory
                    and f.base_name.startswith("step-")), reverse=True)  # fmt: skip
    for name in names:
        if fs.get_file_info(f"{root}/{name}/{MARKER}").type == pafs.FileType.File:
            return Checkpoint(f"{root}/{name}", filesystem=fs)
    return None


def _upload(local: Path, uri: str) -> None:
    """Copy a file or folder to storage (``uri`` as ``resolve_uri`` reads it)."""
    import pyarrow.fs as pafs

    from infra.storage import resolve_uri

    fs, path = resolve_uri(uri)
    if local.is_dir():
        fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)  # fmt: skip


def _download(uri: str, local: Path) -> None:
    """Copy a folder from storage to ``local`` (through a temporary sibling and a rename, so a
    half-copied folder is never taken for a whole one)."""
    import pyarrow.fs as pafs

    from infra.storage import resolve_uri

    fs, path = resolve_uri(uri)
    tmp = local.with_name(f".tmp-{local.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pafs.copy_files(path, str(tmp), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())  # fmt: skip
    tmp.rename(local)
