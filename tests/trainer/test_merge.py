"""``trainer.merge`` / ``zfoundry merge``: weighted sums of debug S3-DiT checkpoints, exact per
tensor, loadable by S3DiT and diffusers, and every check failing with a specific message."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil

import pytest
import torch
from diffusers import ZImageTransformer2DModel
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from model import S3DiT
from pipelines.cli import app
from pipelines.cli_sample import _latent_space
from tests.model.conftest import plain_batch, randomize
from trainer.merge import MERGE_FILE, merge_checkpoints, resolve_transformer

runner = CliRunner()


def _saved(folder, seed: int, **overrides):
    """A debug S3-DiT with seeded non-zero weights saved to ``folder``; -> its state dict."""
    model = S3DiT.from_preset("debug", **overrides)
    randomize(model, seed)
    model.save_pretrained(folder)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Three checkpoints in three layouts: a bare transformer folder, a training final/ (with
    a stage note) and a diffusers pipeline folder; -> (folders, state dicts)."""
    root = tmp_path_factory.mktemp("ckpts")
    a = _saved(root / "a", seed=1)
    b = _saved(root / "final" / "transformer", seed=2)
    (root / "final" / "zfoundry_stage.json").write_text('{"latent_space": "pixel"}\n')
    c = _saved(root / "pipe" / "transformer", seed=3)
    (root / "pipe" / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}\n')
    return [root / "a", root / "final", root / "pipe"], [a, b, c]


def _weights(out) -> dict[str, torch.Tensor]:
    folder = out / "transformer"
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def test_weighted_sum_is_exact_per_tensor(ckpts, tmp_path):
    (a, b, _), (sa, sb, _) = ckpts
    summary = merge_checkpoints([a, b], [0.25, 0.75], tmp_path / "m")
    merged = _weights(tmp_path / "m")
    assert merged.keys() == sa.keys() and summary["tensors"] == len(sa)
    assert summary["parameters"] == sum(v.numel() for v in sa.values())
    for key, value in merged.items():
        assert value.dtype == torch.float32
        assert torch.equal(value, 0.25 * sa[key] + 0.75 * sb[key]), key
    assert not torch.equal(merged["x_pad_token"], sa["x_pad_token"])  # the weights differ
    merge_checkpoints([a, b], [0.25, 0.75], tmp_path / "again")  # deterministic, byte for byte
    for name in ("transformer/diffusion_pytorch_model.safetensors", "transformer/config.json"):
        assert (tmp_path / "m" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_weights_one_zero_and_self_merge_reproduce_the_first_bit_for_bit(ckpts, tmp_path):
    (a, b, _), (sa, _, _) = ckpts
    merge_checkpoints([a, b], [1, 0], tmp_path / "one")
    merge_checkpoints([a, a], None, tmp_path / "self")
    for out in ("one", "self"):
        merged = _weights(tmp_path / out)
        assert all(torch.equal(_bits(merged[k]), _bits(v)) for k, v in sa.items()), out


def test_default_weights_are_equal(ckpts, tmp_path):
    folders, (sa, sb, sc) = ckpts
    summary = merge_checkpoints(folders, None, tmp_path / "m")
    assert summary["weights"] == [1 / 3] * 3
    assert [i["weight"] for i in summary["inputs"]] == [1 / 3] * 3
    w = 1 / 3
    for key, value in _weights(tmp_path / "m").items():
        assert torch.equal(value, w * sa[key] + w * sb[key] + w * sc[key]), key


def test_negative_weights_with_the_flag_and_normalize(ckpts, tmp_path):
    (a, b, _), (sa, sb, _) = ckpts
    merge_checkpoints([a, b], [-0.5, 1.5], tmp_path / "x", allow_negative=True)
    merged = _weights(tmp_path / "x")
    assert all(torch.equal(merged[k], -0.5 * sa[k] + 1.5 * sb[k]) for k in sa)
    summary = merge_checkpoints([a, b], [3, 1], tmp_path / "n", normalize=True)
    assert summary["weights"] == [0.75, 0.25] and summary["normalized"] is True


@pytest.mark.parametrize(
    ("weights", "kwargs", "message"),
    [
        ([1.0], {}, "1 weights [1.0] for 2 checkpoints"),
        ([math.nan, 1.0], {}, "weight 1 is nan"),
        ([0.5, math.inf], {}, "weight 2 is inf"),
        ([0.5, 0.6], {}, "sum to 1.1, not 1"),
        ([-0.5, 1.5], {}, "weight 1 is -0.5: negative"),
        ([1.0, -1.0], {"normalize": True, "allow_negative": True}, "sum to 0.0: cannot"),
    ],
)
def test_bad_weights_fail_naming_the_value(ckpts, tmp_path, weights, kwargs, message):
    (a, b, _), _ = ckpts
    with pytest.raises(ValueError, match=re.escape(message)):
        merge_checkpoints([a, b], weights, tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()


def test_unreadable_inputs_fail_naming_the_file(ckpts, tmp_path):
    (a, _, _), _ = ckpts
    shutil.copytree(a, tmp_path / "bad")
    (tmp_path / "bad" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"checkpoint 2 .*cannot read .*safetensors"):
        merge_checkpoints([a, tmp_path / "bad"], None, tmp_path / "m")
    (tmp_path / "bad" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no diffusion_pytorch_model\.safetensors"):
        merge_checkpoints([a, tmp_path / "bad"], None, tmp_path / "m")
    (tmp_path / "bad" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(ValueError, match="is a AutoencoderKL, not a Z-Image transformer"):
        merge_checkpoints([a, tmp_path / "bad"], None, tmp_path / "m")
    for text, message in [("[1, 2]", "expected a JSON object, got a list"),
                          ("{not json", "not valid JSON")]:  # fmt: skip
        (tmp_path / "bad" / "config.json").write_text(text)
        with pytest.raises(ValueError, match=rf"checkpoint 2 .*config\.json: {message}"):
            merge_checkpoints([a, tmp_path / "bad"], None, tmp_path / "m")
        result = runner.invoke(app, ["merge", str(a), str(tmp_path / "bad"), "--out",
                                     str(tmp_path / "m")])  # fmt: skip
        assert result.exit_code == 2 and message in " ".join(result.output.split())
    shutil.copytree(a, tmp_path / "noted" / "transformer")
    (tmp_path / "noted" / "zfoundry_stage.json").write_text("[]")
    with pytest.raises(ValueError, match=r"checkpoint 2 .*zfoundry_stage\.json: expected"):
        merge_checkpoints([a, tmp_path / "noted"], None, tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_layers": 3}, "n_layers = 3 vs 2"),
        (
            {"dim": 128, "axes_dims": (16, 24, 24)},
            "axes_dims = (16, 24, 24) vs (8, 12, 12); dim = 128 vs 64",
        ),
        ({"siglip_feat_dim": 20}, "siglip_feat_dim = 20 vs None"),
    ],
)
def test_mismatched_configs_fail_naming_the_field(ckpts, tmp_path, overrides, message):
    (a, _, _), _ = ckpts
    _saved(tmp_path / "other", seed=4, **overrides)
    with pytest.raises(ValueError, match="config of checkpoint 2") as err:
        merge_checkpoints([a, tmp_path / "other"], None, tmp_path / "m")
    assert message in str(err.value) and str(tmp_path / "other") in str(err.value)


def test_other_tensor_names_and_shapes_fail_naming_the_key(ckpts, tmp_path):
    (a, _, _), (sa, _, _) = ckpts
    shutil.copytree(a, tmp_path / "keys")
    tensors = dict(sa)
    tensors["extra.weight"] = tensors.pop("x_pad_token")
    save_file(tensors, tmp_path / "keys" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="has other tensors") as err:
        merge_checkpoints([a, tmp_path / "keys"], None, tmp_path / "m")
    assert "missing 1: x_pad_token; extra 1: extra.weight" in str(err.value)
    shutil.copytree(a, tmp_path / "shape")
    tensors = {**sa, "x_pad_token": torch.zeros(2, 64)}
    save_file(tensors, tmp_path / "shape" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match=r"'x_pad_token': F32 \[2, 64\] in checkpoint 2"):
        merge_checkpoints([a, tmp_path / "shape"], None, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_merged_folder_loads_in_s3dit_and_diffusers_with_the_interpolated_output(ckpts, tmp_path):
    (a, b, _), (sa, sb, _) = ckpts
    merge_checkpoints([a, b], [0.25, 0.75], tmp_path / "m", max_shard_bytes=200_000)
    folder = tmp_path / "m" / "transformer"
    assert (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()  # sharded
    manual = S3DiT.from_preset("debug").eval()
    manual.load_state_dict({k: 0.25 * sa[k] + 0.75 * sb[k] for k in sa}, strict=True)
    ours = S3DiT.from_pretrained(folder).eval()
    ref = ZImageTransformer2DModel.from_pretrained(folder).eval()
    x, t, caps = plain_batch([7, 20], [(8, 8), (6, 4)], seed=5, cap_dim=32)
    with torch.no_grad():
        expected = manual(x, t, caps, return_dict=False)[0]
        got_ours = ours(x, t, caps, return_dict=False)[0]
        got_ref = ref(x, t, caps, return_dict=False)[0]
    for e, o, r in zip(expected, got_ours, got_ref, strict=True):
        assert e.abs().mean() > 0.1  # non-trivial outputs
        assert torch.equal(o, e)
        torch.testing.assert_close(r, e, atol=1e-5, rtol=0)


def test_sharded_input_merges_like_the_single_file(ckpts, tmp_path):
    (a, b, _), _ = ckpts
    model = S3DiT.from_pretrained(a)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    summary = merge_checkpoints([tmp_path / "sharded", b], [0.25, 0.75], tmp_path / "m1")
    assert len(summary["inputs"][0]["sha256"]) > 1
    merge_checkpoints([a, b], [0.25, 0.75], tmp_path / "m2")
    one, two = _weights(tmp_path / "m1"), _weights(tmp_path / "m2")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_dtype_same_follows_the_first_checkpoint_and_can_be_chosen(ckpts, tmp_path):
    (a, b, _), (sa, sb, _) = ckpts
    S3DiT.from_pretrained(a).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    merge_checkpoints([tmp_path / "bf16", b], [0.5, 0.5], tmp_path / "same")
    merge_checkpoints([a, b], [0.5, 0.5], tmp_path / "half", dtype="bf16")
    merge_checkpoints([tmp_path / "bf16", b], [0.5, 0.5], tmp_path / "fp32", dtype="fp32")
    same, half, full = (_weights(tmp_path / n) for n in ("same", "half", "fp32"))
    for k in sa:
        expected = 0.5 * sa[k].bfloat16().float() + 0.5 * sb[k]
        assert same[k].dtype == torch.bfloat16 and torch.equal(same[k], expected.bfloat16())
        assert torch.equal(full[k], expected)
        assert torch.equal(half[k], (0.5 * sa[k] + 0.5 * sb[k]).bfloat16())
    with pytest.raises(ValueError, match="dtype 'int8'"):
        merge_checkpoints([a, b], None, tmp_path / "bad", dtype="int8")


def test_layouts_stage_note_and_provenance(ckpts, tmp_path):
    folders, _ = ckpts
    assert resolve_transformer(folders[0]) == folders[0]
    assert resolve_transformer(folders[1]) == folders[1] / "transformer"
    assert resolve_transformer(folders[2]) == folders[2] / "transformer"
    with pytest.raises(FileNotFoundError, match="not a transformer folder"):
        resolve_transformer(tmp_path)
    step = tmp_path / "out" / "checkpoints" / "step-0000010"  # a checkpoint: no stage note
    shutil.copytree(folders[1] / "transformer", step / "transformer")
    (step / "state.pt").write_bytes(b"")
    vae = tmp_path / "vae"
    shutil.copytree(folders[1], vae)
    (vae / "zfoundry_stage.json").write_text('{"latent_space": "vae"}\n')
    with pytest.raises(ValueError, match="different latent spaces"):
        merge_checkpoints([folders[1], vae], None, tmp_path / "m")
    summary = merge_checkpoints([step, folders[1]], [0.5, 0.5], tmp_path / "m")
    out = tmp_path / "m"
    assert (out / "zfoundry_stage.json").read_text() == '{"latent_space": "pixel"}\n'
    assert _latent_space(resolve_transformer(out)) == "pixel"  # zfoundry sample sees it
    note = json.loads((out / MERGE_FILE).read_text())
    assert note == {k: v for k, v in summary.items() if k != "out"}
    assert note["stage_note"] == str(folders[1] / "zfoundry_stage.json")  # the first one
    file = step / "transformer" / "diffusion_pytorch_model.safetensors"
    sha = hashlib.sha256(file.read_bytes()).hexdigest()
    assert note["inputs"][0]["sha256"] == {"diffusion_pytorch_model.safetensors": sha}
    again = merge_checkpoints([out, step], [0.5, 0.5], tmp_path / "m2")  # merges again
    assert again["inputs"][0]["transformer"] == str((out / "transformer").resolve())


def test_out_folder_rules_and_atomic_write(ckpts, tmp_path, monkeypatch):
    (a, b, _), _ = ckpts
    merge_checkpoints([a, b], None, tmp_path / "m")
    with pytest.raises(FileExistsError, match="--overwrite"):
        merge_checkpoints([a, b], None, tmp_path / "m")
    merge_checkpoints([a, b], [1, 0], tmp_path / "m", overwrite=True)
    with pytest.raises(ValueError, match="overlaps checkpoint 1"):
        merge_checkpoints([tmp_path / "m", b], None, tmp_path / "m", overwrite=True)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("trainer.merge.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        merge_checkpoints([a, b], None, tmp_path / "m2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no .tmp-m2 left, no m2


def test_cli_prints_a_json_summary_and_fails_with_exit_2(ckpts, tmp_path):
    (a, b, _), (sa, sb, _) = ckpts
    out = tmp_path / "m"
    args = ["merge", str(a), str(b), "--weights", "0.25,0.75", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["weights"] == [0.25, 0.75] and summary["out"] == str(out)
    key = "x_pad_token"
    assert torch.equal(_weights(out)[key], 0.25 * sa[key] + 0.75 * sb[key])
    for extra, message in [
        (["--weights", "0.5,x"], "'x' is not a number"),
        (["--weights", "-0.5,1.5"], "--allow-negative"),
        (["--weights", "0.5,0.6"], "sum to 1.1"),
        ([], "exists; pass --overwrite"),
    ]:
        result = runner.invoke(app, ["merge", str(a), str(b), "--out", str(out), *extra])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split())
    result = runner.invoke(app, ["merge", str(a), "--out", str(tmp_path / "one")])
    assert result.exit_code == 2 and "two or more" in result.output
    result = runner.invoke(app, ["merge", str(a), str(b), "--weights=-1,2", "--allow-negative",
                                 "--dtype", "bf16", "--out", str(tmp_path / "x")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _weights(tmp_path / "x")["x_pad_token"].dtype == torch.bfloat16
