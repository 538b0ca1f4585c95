"""``zfoundry train`` / ``zfoundry cache-latents`` on a stage or curriculum TOML over curated
shards (the local backend; the ray backend: test_ray_backend.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from model import S3DiT
from pipelines.cli import app
from tests.trainer.conftest import assert_final_samples, write_curriculum
from trainer.curriculum import load_curriculum
from trainer.trainer import Trainer

runner = CliRunner()


def _stage_file(toy, tmp_path, extra: str = "") -> str:
    path = tmp_path / "stage.toml"
    path.write_text(f"""
name = "toy"
manifest = "{toy.manifest}"
out = "out"
backend = "local"                    # (the ray backend: tests/trainer/test_ray_backend.py)
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
    assert_final_samples(tmp_path / "out" / "final", toy, tmp_path / "toy.png", (96, 64))
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
    missing = str(tmp_path / "no-such-pipeline")  # a checkpoint that is not there: the field
    result = runner.invoke(app, ["train", stage, "--set", f'encoders.pipeline="{missing}"'])
    assert result.exit_code == 2, result.output
    flat = "".join(result.output.split())  # the console wraps the long path anywhere
    assert f"encoders.pipeline='{missing}':cannotloaditstextencoder" in flat, result.output


def test_unreadable_pretrained_and_manifest_are_named(toy, tmp_path):
    """model.pretrained missing, not JSON, a JSON list, cut-off safetensors; manifest a folder
    or a JSON list: exit 2 naming the key and the file (pretrained: at load time)."""
    stage = _stage_file(toy, tmp_path)
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "diffusion_pytorch_model.safetensors").write_bytes(b"\x08" + bytes(99))
    for config, message in [
        (None, f"{tmp_path / 'nope'}: no such folder"),
        ("{not json", f"{ck / 'config.json'}: not valid JSON"),
        ("[1, 2]", "config.json: expected a JSON object, got a list"),
        ("{}", "diffusion_pytorch_model.safetensors: not a readable safetensors file"),
    ]:
        where = tmp_path / "nope" if config is None else ck
        if config is not None:
            (ck / "config.json").write_text(config)
        result = runner.invoke(app, ["train", stage, "--set", f'model.pretrained="{where}"'])
        assert result.exit_code == 2, result.output
        flat = "".join(result.output.split())
        assert "CLI:model.pretrained:" in flat and message.replace(" ", "") in flat, result.output
    manifest = tmp_path / "listed" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text("[]")
    for where, message in [(toy.manifest.parent, f"CLI:manifest:{toy.manifest.parent}isafolder"),
                           (manifest, f"manifest{manifest}:expectedaJSONobject")]:  # fmt: skip
        result = runner.invoke(app, ["train", stage, "--set", f'manifest="{where}"'])
        assert result.exit_code == 2 and message in "".join(result.output.split()), result.output


def test_module_entry_point_has_every_command():
    """``python -m pipelines.cli`` sees the commands other modules register (train, merge...)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert all(name in out for name in ("train", "cache-latents", "merge", "sample", "kg"))


def test_curriculum_runs_stages_in_order_each_from_the_previous_and_skips_finished_ones(
    toy, tmp_path
):
    cur = write_curriculum(toy, tmp_path, backend="local")
    result = runner.invoke(app, ["train", str(cur), "--set", "steps=2", "--no-progress"])
    assert result.exit_code == 0, result.output
    lowres, omni = json.loads(result.stdout.strip().splitlines()[-1])
    assert lowres["steps"] == omni["steps"] == 2 and not omni.get("already_done")
    curriculum = load_curriculum(cur, {"steps": 2})
    assert curriculum.stages[1].model.pretrained == str(tmp_path / "run" / "lowres")
    first = S3DiT.from_pretrained(tmp_path / "run" / "lowres" / "final" / "transformer")
    trainer = Trainer(curriculum.stages[1])  # omni's starting point: lowres's final weights
    for (name, a), b in zip(first.state_dict().items(), trainer.model.state_dict().values(),
                            strict=True):  # fmt: skip
        assert torch.equal(a, b), name
    again = runner.invoke(app, ["train", str(cur), "--set", "steps=2", "--no-progress"])
    assert [s.get("already_done") for s in json.loads(again.stdout.strip().splitlines()[-1])] == [
        True, True]  # fmt: skip
    more = runner.invoke(app, ["train", str(cur), "--set", "steps=3", "--no-progress"])
    lowres, omni = json.loads(more.stdout.strip().splitlines()[-1])  # both resume, one step more
    assert lowres["resumed_from"].endswith("lowres/checkpoints/step-0000002")
    assert omni["resumed_from"].endswith("omni/checkpoints/step-0000002")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("[[stages]]\nname = 'x'\nbackend = 'local'\n", "stages[2].backend"),
        ("[[stages]]\nname = 'x'\nmodel = { pretrained = 'a' }\n", "stages[2].model.pretrained"),
        ("[[stages]]\nname = 'omni'\n", "stages[2].name"),
        ("[[stages]]\nsteps = 3\n", "stages[2].name"),
        ("[[stages]]\nname = 'x'\nsteps = 0\n", "stages[2].steps"),
        ("[[stages]]\nname = 'x'\nout = 'elsewhere'\n", "stages[2].out"),
        ("[[stages]]\nname = 'x'\nmodel = 'x'\n", "stages[2].model"),
        ("[extra]\n", "extra"),
        ("[[stages]]\nname = 'x'\nmanifest = '.'\n", "stages[2]: manifest"),  # a folder
    ],
)
def test_bad_curriculum_fails_at_load_time_naming_the_field(toy, tmp_path, edit, named):
    cur = write_curriculum(toy, tmp_path)
    cur.write_text(cur.read_text() + edit)
    result = runner.invoke(app, ["train", str(cur)])
    assert result.exit_code == 2 and named in said(result), said(result)


def test_example_curriculum_loads_lowres_omni_sft():
    root = Path(__file__).resolve().parents[2]
    curriculum = load_curriculum(root / "examples" / "curriculum.toml")
    assert [s.name for s in curriculum.stages] == ["lowres", "omni", "sft"]
    assert curriculum.out == root / "runs" / "curriculum" and curriculum.backend == "ray"
    lowres, omni, sft = curriculum.stages
    assert lowres.data.t2i_i2i_ratio == (1, 0) and omni.data.resolution == "tokens"
    assert omni.model.pretrained == str(lowres.out) and sft.model.pretrained == str(omni.out)


def test_curriculum_cli_overrides(toy, tmp_path):
    cur = write_curriculum(toy, tmp_path)
    curriculum = load_curriculum(cur, {"optim.lr": 5e-4, "ray.num_workers": 3, "backend": "local"})
    assert curriculum.backend == "local"
    assert all(s.optim.lr == 5e-4 and s.ray.num_workers == 3 for s in curriculum.stages)
    result = runner.invoke(app, ["train", str(cur), "--steps", "3"])
    assert result.exit_code == 2 and "--steps" in said(result)
    result = runner.invoke(app, ["train", str(cur), "--set", "model.pretrained='a'"])
    assert result.exit_code == 2 and "CLI: model.pretrained" in said(result), said(result)
    result = runner.invoke(app, ["train", str(cur), "--set", "ray.num_workers=0"])
    assert result.exit_code == 2 and "CLI: ray.num_workers" in said(result), said(result)
