"""``zfoundry train`` / ``zfoundry cache-latents`` on a stage TOML over curated shards."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from model import S3DiT
from pipelines.cli import app

runner = CliRunner()


def _stage_file(toy, tmp_path, extra: str = "") -> str:
    path = tmp_path / "stage.toml"
    path.write_text(f"""
name = "toy"
manifest = "{toy.manifest}"
out = "out"
steps = 3
log_every = 1
{extra}
[model]
preset = "debug"
[encoders]
pipeline = "{toy.pipeline}"
latent_space = "pixel"
[data]
token_budget = 1024
[timesteps]
shift = "1"
""")
    return str(path)


def said(result) -> str:
    return " ".join(result.output.split())


def test_train_and_cache_latents_from_the_command_line(toy, tmp_path):
    stage = _stage_file(toy, tmp_path)
    result = runner.invoke(app, ["train", stage, "--backend", "local", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["final"] == str(tmp_path / "out" / "final")
    assert S3DiT.from_pretrained(tmp_path / "out" / "final" / "transformer").config.in_channels == 3
    png = tmp_path / "toy.png"
    result = runner.invoke(app, ["sample", "--checkpoint", str(tmp_path / "out" / "final"),
                                 "--base", str(toy.pipeline), "--prompt", "a red circle",
                                 "--size", "96x64", "--steps", "2", "--out", str(png),
                                 "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Image.open(png).size == (96, 64)  # the exported checkpoint samples (pixel space)
    again = runner.invoke(app, ["train", stage, "--steps", "5", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.strip().splitlines()[-1])["resumed_from"].endswith("0000003")
    cache = tmp_path / "cache"
    result = runner.invoke(app, ["cache-latents", stage, "--out", str(cache), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["errors"] == 0
    same = runner.invoke(app, ["cache-latents", str(toy.manifest), "--pipeline",
                               str(toy.pipeline), "--latent-space", "pixel", "--out", str(cache),
                               "--no-progress"])  # fmt: skip
    assert same.exit_code == 0, same.output  # the manifest form with the same settings: reused
    assert json.loads(same.stdout.strip().splitlines()[-1])["shards"] == 0
    out2 = tmp_path / "out2"
    result = runner.invoke(app, ["train", stage, "--set", f'data.cache="{cache}"',
                                 "--set", f'out="{out2}"', "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_bad_stage_and_overrides_are_named(toy, tmp_path):
    stage = _stage_file(toy, tmp_path, extra='precision = "fp8"')
    result = runner.invoke(app, ["train", stage])
    assert result.exit_code == 2 and "precision" in said(result) and "fp8" in said(result)
    stage = _stage_file(toy, tmp_path)
    result = runner.invoke(app, ["train", stage, "--set", "optim.lr=0"])
    assert result.exit_code == 2 and "CLI: optim.lr: must be > 0" in said(result)
    result = runner.invoke(app, ["train", stage, "--backend", "slurm"])
    assert result.exit_code == 2 and "backend" in said(result) and "local" in said(result)
    (tmp_path / "curriculum.toml").write_text("[[stages]]\nfile = 'a.toml'\n")
    result = runner.invoke(app, ["train", str(tmp_path / "curriculum.toml")])
    assert result.exit_code == 2 and "curriculum" in said(result)


def test_module_entry_point_has_every_command():
    """``python -m pipelines.cli`` sees the commands other modules register (train, merge...)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert all(name in out for name in ("train", "cache-latents", "merge", "sample", "kg"))
