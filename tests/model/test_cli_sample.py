"""``zfoundry sample`` on the tiny saved pipeline folder: PNGs equal to the in-process result,
several images, training checkpoints with ``--base``, and errors that name the bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from model import S3DiT
from model.pipeline import ZFoundryPipeline
from pipelines.cli import app

runner = CliRunner()
ARGS = ["--steps", "3", "--size", "96x64", "--seed", "7", "--no-progress"]
EDGE = Path(__file__).resolve().parents[2] / "examples" / "data" / "edge_cases"


def sample(*args: str):
    return runner.invoke(app, ["sample", *map(str, args)])


def said(result) -> str:
    """The output with line wrapping undone."""
    return " ".join(result.output.split())


def flat(result) -> str:
    """The output without any whitespace (the console wraps long paths anywhere)."""
    return "".join(result.output.split())


@pytest.fixture(scope="module")
def pipe(zimage_dir):
    return ZFoundryPipeline.from_pretrained(zimage_dir)


def test_sample_writes_the_in_process_image(zimage_dir, pipe, tmp_path):
    out = tmp_path / "img" / "cat.png"
    result = sample("--checkpoint", zimage_dir, "--prompt", "a cat sits on a red mat",
                    "--cfg", "3", "--negative", "blurry", *ARGS, "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"{out}\t96x64\tseed 7" in result.stdout
    expected = pipe("a cat sits on a red mat", negative_prompt="blurry", guidance=3.0,
                    steps=3, width=96, height=64, seed=7, progress=False).images[0]  # fmt: skip
    written = Image.open(out)
    assert np.array_equal(np.asarray(written), np.asarray(expected))
    meta = json.loads(written.text["zfoundry"])
    assert meta["prompt"] == "a cat sits on a red mat" and meta["seed"] == 7


def test_several_prompts_and_images_get_numbered_files(zimage_dir, pipe, tmp_path):
    prompts = ["a cat", "a red house"]
    result = sample("--checkpoint", zimage_dir, "--prompt", prompts[0], "--prompt", prompts[1],
                    "--num-images", "2", *ARGS, "--out", tmp_path / "x.png")  # fmt: skip
    assert result.exit_code == 0, result.output
    files = sorted(tmp_path.glob("x_*.png"))
    assert [f.name for f in files] == ["x_0.png", "x_1.png", "x_2.png", "x_3.png"]
    seeds = [json.loads(Image.open(f).text["zfoundry"])["seed"] for f in files]
    assert seeds == [7, 8, 9, 10]
    batch = pipe(prompts, num_images=2, steps=3, width=96, height=64, seed=7, progress=False)
    for f, expected in zip(files, batch.images, strict=True):
        assert np.array_equal(np.asarray(Image.open(f)), np.asarray(expected))
    # image i of a batch is the single run with seed 7 + i (to float rounding: 1/255)
    third = pipe("a red house", steps=3, width=96, height=64, seed=9, progress=False).images[0]
    diff = np.asarray(Image.open(files[2])).astype(int) - np.asarray(third)
    assert np.abs(diff).max() <= 1


def test_image_to_image(zimage_dir, pipe, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 100, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    result = sample("--checkpoint", zimage_dir, "--prompt", "a cat", "--image", tmp_path / "in.png",
                    "--strength", "0.5", "--steps", "4", "--out", tmp_path / "o.png")  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = pipe("a cat", image=Image.open(tmp_path / "in.png"), strength=0.5, steps=4,
                    progress=False).images[0]  # fmt: skip
    assert Image.open(tmp_path / "o.png").size == (96, 64)  # the input, rounded down to 16
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")), np.asarray(expected))


def test_training_checkpoint_takes_the_other_components_from_base(zimage_dir, tmp_path):
    ckpt = tmp_path / "ckpt-100"
    shutil.copytree(zimage_dir / "transformer", ckpt / "transformer")
    result = sample("--checkpoint", ckpt, "--prompt", "a cat", *ARGS, "--out", tmp_path / "a.png")
    assert result.exit_code == 2
    assert "holds only a transformer: pass --base DIR" in said(result)
    result = sample("--checkpoint", ckpt, "--base", zimage_dir, "--prompt", "a cat", *ARGS,
                    "--out", tmp_path / "b.png")  # fmt: skip
    assert result.exit_code == 0, result.output
    plain = sample(
        "--checkpoint", zimage_dir, "--prompt", "a cat", *ARGS, "--out", tmp_path / "c.png"
    )
    assert plain.exit_code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")),
                          np.asarray(Image.open(tmp_path / "c.png")))  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "100x64"], "--size 100x64: width 100 is not a multiple of 16"),
        (["--size", "big"], "expected WIDTHxHEIGHT"),
        (["--strength", "1.5", "--image", "__in__"], "--strength 1.5: must be in (0, 1]"),
        (["--reference", "__in__"], "--reference needs siglip/ and siglip_processor/"),
        (["--image", "missing.png"], "--image missing.png: no such file"),
        (["--image", "__text__"], "text.txt: not a readable image (cannot identify image file"),
        (["--image", f"{EDGE}/truncated.png"], "truncated.png: not a readable image (image fi"),
        (["--reference", f"{EDGE}/bomb.png"], "bomb.png: not a readable image (Image size"),
        (["--out", "x.gif"], "the suffix must be one of"),
    ],
)
def test_bad_arguments_fail_naming_them(zimage_dir, tmp_path, args, message):
    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    (tmp_path / "text.txt").write_text("not an image")
    named = {"__in__": str(tmp_path / "in.png"), "__text__": str(tmp_path / "text.txt")}
    args = [named.get(a, a) for a in args]
    result = sample("--checkpoint", zimage_dir, "--prompt", "a cat", *args)
    assert result.exit_code == 2
    assert message in said(result)


def test_missing_folder_and_components_are_named(zimage_dir, tmp_path):
    result = sample("--checkpoint", tmp_path / "nope", "--prompt", "a cat")
    assert result.exit_code == 2 and "no such folder" in said(result)
    broken = tmp_path / "broken"
    shutil.copytree(zimage_dir, broken, ignore=shutil.ignore_patterns("vae", "tokenizer"))
    result = sample("--checkpoint", broken, "--prompt", "a cat")
    assert result.exit_code == 2
    assert "missing tokenizer/, vae/" in said(result)


def test_unreadable_checkpoint_files_are_named(zimage_dir, tmp_path):
    """A garbage config.json, a list, a cut-off safetensors: exit 2 naming the option and the
    file (checked before loading; a missing folder is not looked up on the hub)."""
    bad = tmp_path / "bad"
    shutil.copytree(zimage_dir, bad)
    weights = next(bad.glob("transformer/*.safetensors"))
    for broken, text, message in [
        (bad / "transformer" / "config.json", "{not", "transformer: config.json: not valid JSON"),
        (bad / "transformer" / "config.json", "[1]", "config.json: expected a JSON object"),
        (weights, None, f"{weights.name}: not a readable safetensors file"),
        (bad / "text_encoder" / "config.json", "[]", "the text encoder from"),
    ]:
        good = broken.read_bytes()
        broken.write_bytes(good[:100] if text is None else text.encode())
        result = sample("--checkpoint", bad, "--prompt", "a cat", *ARGS)
        broken.write_bytes(good)
        assert result.exit_code == 2, result.output
        assert f"--checkpoint {bad}: cannot load the".replace(" ", "") in flat(result)
        assert message.replace(" ", "") in flat(result), result.output
    ckpt = tmp_path / "ckpt"
    shutil.copytree(zimage_dir / "transformer", ckpt / "transformer")
    (bad / "vae" / "config.json").write_text("{not json")  # the latent scale is read first
    result = sample("--checkpoint", ckpt, "--base", bad, "--prompt", "a cat", *ARGS)
    assert result.exit_code == 2 and f"--base{bad}:{bad}/vae/config.json:notvalid" in flat(result)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        S3DiT.from_pretrained(tmp_path / "nope")


def test_help_shows_examples():
    result = runner.invoke(app, ["sample", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "--checkpoint" in result.output and "Examples" in result.output
    assert "--base Z-Image-Turbo/" in result.output
