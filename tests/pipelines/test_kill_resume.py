"""Kill the driver or a Ray worker mid-profile: the resumed output equals a clean run's."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from infra.storage import RunDir
from tests.conftest import EXAMPLES, REPO
from tests.helpers import ingest_folders, profile

pytestmark = pytest.mark.slow
ROWS, SHARDS = 100, 34  # 4 x 25 photos, 3 per shard


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """100 photos (the bundled 25, four copies under different keys) in 34 shards of 3."""
    pool = tmp_path_factory.mktemp("pool")
    for copy in range(4):
        shutil.copytree(EXAMPLES / "data" / "coco25", pool / f"copy{copy}", dirs_exist_ok=True)
        for f in (pool / f"copy{copy}").glob("*.json"):
            f.unlink()
    run = ingest_folders(tmp_path_factory.mktemp("base") / "run", pool, rows_per_shard=3)
    assert len(run.completed("samples")) == SHARDS
    return Path(run.root)


@pytest.fixture(scope="module")
def clean(samples, tmp_path_factory):
    """The uninterrupted run's profiles/ and rejects/ bytes."""
    run = _fresh_run(samples, tmp_path_factory.mktemp("clean"))
    profile(run)
    return _bytes(run)


def _fresh_run(samples: Path, where: Path) -> RunDir:
    shutil.copytree(samples / "samples", where / "run" / "samples")
    return RunDir(where / "run")


def _bytes(run: RunDir) -> dict[str, bytes]:
    return {
        f"{t}/{Path(p).name}": Path(p).read_bytes()
        for t in ("profiles", "rejects")
        for p in run.data_files(t)
    }


def _markers(run: RunDir) -> dict[int, int]:
    """Completed shard -> mtime of its data file."""
    return {
        i: (Path(run.root) / "profiles" / f"{i:05d}.parquet").stat().st_mtime_ns
        for i in run.completed("profiles")
    }


def _kill_driver_when(run: RunDir, args: list[str], min_done: int) -> dict[int, int]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "pipelines.cli", "profile", run.root, *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(run.completed("profiles")) < min_done:
        assert proc.poll() is None, "driver exited before it could be killed"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # let a straggling write (Ray worker) land before looking
    return _markers(run)


def test_driver_sigkill_local_then_resume(samples, clean, tmp_path):
    run = _fresh_run(samples, tmp_path)
    done = _kill_driver_when(run, ["--executor", "local"], min_done=5)
    assert 5 <= len(done) < SHARDS, "the kill must land mid-job"
    stats = profile(run)
    assert stats["shards_run"] == SHARDS - len(done) and stats["shards"] == SHARDS
    assert {i: m for i, m in _markers(run).items() if i in done} == done  # not recomputed
    assert _bytes(run) == clean
    assert stats["in"] == ROWS and stats["ok"] + stats["rejected"] == ROWS


@pytest.mark.ray
def test_driver_sigkill_ray_then_resume(samples, clean, tmp_path, ray_local):
    address = ray_local.get_runtime_context().gcs_address
    run = _fresh_run(samples, tmp_path)
    done = _kill_driver_when(run, ["--executor", "ray", "--address", address], min_done=5)
    assert len(done) < SHARDS, "the kill must land mid-job"
    stats = profile(run, "ray")
    assert stats["shards_run"] <= SHARDS - len(done)  # a worker may finish its shard after the kill
    assert {i: m for i, m in _markers(run).items() if i in done} == done
    assert _bytes(run) == clean


def _busy_workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "MapBatches(_run_jobs)" in cmd:
            found.append(proc)
    return found


@pytest.mark.ray
def test_ray_worker_sigkill_mid_job_still_finishes_equal(samples, clean, tmp_path, ray_local):
    run = _fresh_run(samples, tmp_path)
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(profile(run, "ray")))
    job.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and job.is_alive() and time.monotonic() < deadline:
        if len(run.completed("profiles")) >= 3:
            for proc in _busy_workers():
                proc.send_signal(signal.SIGKILL)
                killed = proc.pid
                break
        time.sleep(0.005)
    job.join(timeout=300)
    assert killed is not None, "found no busy Ray worker to kill"
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == "zombie"
    assert result["shards"] == SHARDS and result["in"] == ROWS
    assert _bytes(run) == clean
