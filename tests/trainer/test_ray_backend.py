"""The Ray Train backend: a two-stage curriculum on two CPU workers (DDP over gloo) from shards
made by the curation pipeline, killed twice -- a worker in the first stage (Ray Train restarts
the worker group from the last checkpoint) and then the driver in the second stage (a new run
with the same name and storage resumes) -- equals, loss for loss, the same curriculum trained
by two plain torch.distributed processes without Ray (the ``ddp_runs`` fixture)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from tests.trainer.conftest import assert_final_samples, write_curriculum
from trainer.ray_backend import FAULT_ENV

runner = CliRunner()


def _losses(stage_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


def _wait_for(predicate, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the driver exited ({proc.returncode}) early:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


def _registered(snapshot: Path, name: str) -> bool:
    try:
        data = json.loads(snapshot.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return any(r.get("checkpoint_dir_name") == name for r in data.get("checkpoint_results", []))


@pytest.mark.timeout(500)
def test_curriculum_survives_a_killed_worker_and_a_killed_driver_exactly(
    toy, tmp_path, ray_local, ddp_runs
):
    cur = write_curriculum(toy, tmp_path, backend="ray")
    run = tmp_path / "run"
    log = tmp_path / "driver.log"
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,  # this session's Ray
        "HF_HUB_OFFLINE": "1",
        # rank 1 dies before lowres step 3; rank 0 stops before omni step 3
        FAULT_ENV: "exit:1:lowres:3,pause:0:omni:3",
    }
    with open(log, "w") as fh:
        driver = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "train", str(cur), "--no-progress"],
            env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    paused = run / "omni" / ".fault-pause-rank0-step3"
    snapshot = run / "checkpoint_manager_snapshot.json"
    _wait_for(lambda: paused.exists() and _registered(snapshot, "omni/checkpoints/step-0000002"),
              driver, log, timeout=360)  # fmt: skip
    os.killpg(driver.pid, signal.SIGKILL)  # the driver (and its Ray Train controller) dies
    driver.wait()
    assert (run / "lowres" / ".fault-exit-rank1-step3").exists()  # the worker did die
    assert not (run / "omni" / "final").exists()

    result = runner.invoke(app, ["train", str(cur), "--no-progress"])  # a new driver
    assert result.exit_code == 0, result.output
    lowres, omni = json.loads(result.stdout.strip().splitlines()[-1])
    assert lowres["already_done"] and omni["resumed_from"].endswith("omni/checkpoints/step-0000002")
    assert omni["world_size"] == 2 and omni["steps"] == 4

    reference = ddp_runs.curriculum.parent / "run"
    for name in ("lowres", "omni"):  # bit for bit, although killed twice
        assert [s for s, _ in _losses(run / name)] == [1, 2, 3, 4]
        assert _losses(run / name) == _losses(reference / name)
    note = json.loads((run / "omni" / "final" / "zfoundry_stage.json").read_text())
    assert note["step"] == 4

    again = runner.invoke(app, ["train", str(cur), "--no-progress"])  # nothing left to do
    assert again.exit_code == 0 and all(
        s["already_done"] for s in json.loads(again.stdout.strip().splitlines()[-1])
    )
    assert_final_samples(run / "omni" / "final", toy, tmp_path / "sample.png", (64, 64))


def test_each_rank_gets_its_batches_of_the_plan_and_the_same_number_of_steps(toy, tmp_path):
    from tests.trainer.conftest import stage
    from trainer.data import Manifest, StageData
    from trainer.ray_backend import plan_rows

    config = stage(toy, tmp_path / "out", steps=9)
    rows = plan_rows(config, world_size=2)
    data = StageData(Manifest.load(str(toy.manifest)), config.data, seed=0, world_size=2)
    plans = [data.plan(e) for e in range(3)]
    assert len(plans[0]) < 9 <= len(plans[0]) + len(plans[1])  # two epochs hold the 9 steps ...
    steps = [s for p in plans for s in p]  # ... and a spare one follows
    assert len(rows[0]) == len(rows[1]) == len(steps)  # the same number of steps on every rank
    for rank in (0, 1):
        assert [(r["epoch"], r["index"], r["task"]) for r in rows[rank]] == [
            (s.epoch, s.index, s.task) for s in steps]  # fmt: skip
        assert all(r["rows"] == s.batches[rank].tolist()
                   for r, s in zip(rows[rank], steps, strict=True))  # fmt: skip


def test_a_stage_resumes_from_its_own_newest_complete_checkpoint(tmp_path):
    """When Ray's newest checkpoint is another stage's (a finished stage given more steps) or
    Ray has none, the stage's own folder (local or in storage) is searched."""
    from trainer.ray_backend import _stage_checkpoint

    assert _stage_checkpoint(str(tmp_path / "none")) is None
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / "checkpoints" / f"step-{step:07d}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "_COMPLETE").write_text("{}\n")
    found = _stage_checkpoint(str(tmp_path))
    assert found.path == str(tmp_path / "checkpoints" / "step-0000004")  # step 6 is half-written
