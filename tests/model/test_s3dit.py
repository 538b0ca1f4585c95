"""S3DiT vs diffusers' ZImageTransformer2DModel: state-dict compatibility and fp32 equivalence
(the packed forward against the reference's batch-padded one), plain and omni."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import AutoModel, ZImageTransformer2DModel

from model import PRESETS, S3DiT
from tests.model.conftest import TINY, omni_batch, plain_batch

ATOL = 1e-5


def _outputs(model: torch.nn.Module, **inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def assert_same_outputs(ref, ours, **inputs) -> None:
    expected, got = _outputs(ref, **inputs), _outputs(ours, **inputs)
    assert len(expected) == len(got)
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        assert e.abs().mean() > 0.1  # non-trivial outputs, so equality means something
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("lengths", "sizes", "patch"),
    [
        ([7, 40, 32], [(8, 8), (12, 6), (4, 4)], 2),  # mixed caption lengths and image sizes
        ([13], [(10, 14)], 2),  # a batch of one
        ([64, 64], [(8, 8), (8, 8)], 2),  # equal lengths: the reference uses no mask
        ([5, 33], [(6, 4), (3, 5)], 1),  # the second patch size ("1-1")
        ([0, 5], [(4, 4), (6, 6)], 2),  # an empty caption
    ],
)
def test_plain_forward_matches_reference(pair, lengths, sizes, patch):
    x, t, caps = plain_batch(lengths, sizes, seed=len(lengths))
    assert_same_outputs(*pair, x=x, t=t, cap_feats=caps, patch_size=patch)


def test_omni_forward_matches_reference(pair):
    """2 reference images + target and 1 + target, SigLIP features, noisy/clean tokens."""
    assert_same_outputs(*pair, **omni_batch())


def test_omni_variants_match_reference(pair):
    batch = omni_batch(seed=3)
    gen = torch.Generator().manual_seed(4)
    # text-to-image through the omni path (no SigLIP at all), two caption lengths
    assert_same_outputs(
        *pair,
        x=[[torch.randn(16, 1, 6, 6, generator=gen)], [torch.randn(16, 1, 4, 8, generator=gen)]],
        t=torch.tensor([0.3, 0.8]),
        cap_feats=[[torch.randn(11, 24, generator=gen)], [torch.randn(45, 24, generator=gen)]],
        siglip_feats=[None, None],
        image_noise_mask=[[1], [1]],
    )
    # an empty image slot (None) before the target, and every image noisy
    batch["x"][0][0] = None
    batch["image_noise_mask"] = [[1, 1, 1], [1, 1]]
    assert_same_outputs(*pair, **batch)


def test_omni_batch_mixing_items_with_and_without_siglip(pair):
    """The reference cannot batch these (it fails); ours equals the reference item by item."""
    ref, ours = pair
    batch = omni_batch(seed=12)
    batch["siglip_feats"][1] = None
    got = _outputs(ours, **batch)
    for i in range(2):
        item = {k: v[i : i + 1] for k, v in batch.items()}
        torch.testing.assert_close(got[i], _outputs(ref, **item)[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", ["sdpa", "sdpa_mask", "flex"])
def test_every_attention_backend_matches_reference(pair, backend):
    ref, ours = pair
    ours.attention_backend = backend
    try:
        x, t, caps = plain_batch([7, 40], [(8, 8), (12, 6)], seed=9)
        assert_same_outputs(ref, ours, x=x, t=t, cap_feats=caps)
        assert_same_outputs(ref, ours, **omni_batch(seed=5))
    finally:
        ours.attention_backend = "auto"


def test_bf16_matches_reference(pair):
    ref, ours = (copy.deepcopy(m).to(torch.bfloat16) for m in pair)
    batch = omni_batch(seed=6)
    for key in ("x", "cap_feats", "siglip_feats"):
        batch[key] = [[None if a is None else a.bfloat16() for a in item] for item in batch[key]]
    expected, got = _outputs(ref, **batch), _outputs(ours, **batch)
    for e, g in zip(expected, got, strict=True):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), e.float(), atol=2e-2, rtol=0)


def test_state_dicts_load_strictly_both_ways(pair):
    ref, ours = pair
    fresh_ref = ZImageTransformer2DModel(**TINY)
    fresh_ref.load_state_dict(ours.state_dict(), strict=True)
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == ref_shapes


def test_save_pretrained_loads_in_the_reference_and_back(pair, tmp_path):
    ref, ours = pair
    ours.save_pretrained(tmp_path / "ours", max_shard_size="200KB")
    assert len(list((tmp_path / "ours").glob("*.safetensors"))) > 1  # sharded, with an index
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["_class_name"] == "ZImageTransformer2DModel"
    loaded_ref = ZImageTransformer2DModel.from_pretrained(tmp_path / "ours")
    assert isinstance(AutoModel.from_pretrained(str(tmp_path / "ours")), ZImageTransformer2DModel)
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(loaded_ref.state_dict()[k], v, atol=0, rtol=0)

    ref.save_pretrained(tmp_path / "ref", max_shard_size="200KB")
    loaded = S3DiT.from_pretrained(tmp_path / "ref").eval()
    public = [
        {k: v for k, v in json.loads(m.to_json_string()).items() if k[0] != "_"}
        for m in (loaded, ours)
    ]
    assert public[0] == public[1]
    x, t, caps = plain_batch([9, 20], [(8, 8), (6, 6)], seed=2)
    assert_same_outputs(ref, loaded, x=x, t=t, cap_feats=caps)


def test_released_config_loads_unchanged(tmp_path):
    released = {
        "_class_name": "ZImageTransformer2DModel",
        "_diffusers_version": "0.36.0.dev0",
        "all_f_patch_size": [1],
        "all_patch_size": [2],
        "axes_dims": [32, 48, 48],
        "axes_lens": [1536, 512, 512],
        "cap_feat_dim": 2560,
        "dim": 3840,
        "in_channels": 16,
        "n_heads": 30,
        "n_kv_heads": 30,
        "n_layers": 30,
        "n_refiner_layers": 2,
        "norm_eps": 1e-05,
        "qk_norm": True,
        "rope_theta": 256.0,
        "t_scale": 1000.0,
    }
    (tmp_path / "config.json").write_text(json.dumps(released))
    config = S3DiT.load_config(tmp_path)
    preset = {k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS["z-image-6b"].items()}
    assert {k: v for k, v in config.items() if not k.startswith("_")} == {
        k: v for k, v in preset.items() if k != "siglip_feat_dim"
    }


def test_6b_preset_has_the_reference_parameters_on_meta():
    with torch.device("meta"):
        ours = S3DiT.from_preset("z-image-6b")
        ref = ZImageTransformer2DModel()  # the reference's defaults are the 6B model
    count = sum(p.numel() for p in ours.parameters())
    assert count == 6_154_908_736 and round(count / 1e9, 2) == 6.15
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == ref_shapes


def test_presets_and_overrides():
    model = S3DiT.from_preset("debug", siglip_feat_dim=8, n_layers=1)
    assert len(model.layers) == 1 and model.siglip_embedder is not None
    assert model.block_lists()[2] is model.siglip_refiner
    with pytest.raises(ValueError, match="unknown preset"):
        S3DiT.from_preset("huge")
    with pytest.raises(ValueError, match="n_kv_heads"):
        S3DiT.from_preset("debug", n_kv_heads=1)


def test_fresh_model_is_adaln_zero():
    """DiT init: blocks start as identity on the residual stream and the output is zero."""
    model = S3DiT.from_preset("debug").eval()
    x, t, caps = plain_batch([5], [(4, 4)], cap_dim=32)
    assert _outputs(model, x=x, t=t, cap_feats=caps)[0].abs().max() == 0
    assert all(b.adaLN_modulation[0].weight.abs().max() == 0 for b in model.layers)


def test_bad_inputs_fail_loudly(pair):
    _, ours = pair
    x, t, caps = plain_batch([5], [(4, 4)])
    with pytest.raises(ValueError, match="patch sizes"):
        ours(x, t, caps, patch_size=4)
    with pytest.raises(ValueError, match="not divisible"):
        ours([torch.randn(16, 1, 5, 4)], t, caps)
    with pytest.raises(ValueError, match="omni inputs"):
        ours(x, t, caps, image_noise_mask=[[1]])
    with pytest.raises(ValueError, match="axes_lens"):
        ours([torch.randn(16, 1, 4, 140)], t, caps)
    with pytest.raises(ValueError, match="t of shape"):
        ours(x, t[0], caps)
    with pytest.raises(NotImplementedError):
        ours(x, t, caps, controlnet_block_samples={0: torch.zeros(1)})
    plain_model = S3DiT(**{**TINY, "siglip_feat_dim": None})
    with pytest.raises(ValueError, match="no SigLIP embedder"):
        plain_model(**omni_batch())
