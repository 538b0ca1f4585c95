"""Scoring heads: published state-dict layouts, safetensors round trip, training, AUC."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from curation.heads import (
    HEADS,
    LAION_AESTHETIC_CONTRACT,
    UNIVFD_CONTRACT,
    AestheticMLP,
    FeatureContract,
    LinearProbe,
    MLPClassifier,
    check_contract,
    fit_head,
    get_head,
    load_head,
    register_head,
    roc_auc,
    save_head,
)
from curation.heads.train import split_indices

# LAION improved-aesthetic-predictor (sac+logos+ava1-l14-linearMSE.pth): key -> weight shape.
LAION_SHAPES = {
    "layers.0": (1024, 768),
    "layers.2": (128, 1024),
    "layers.4": (64, 128),
    "layers.6": (16, 64),
    "layers.7": (1, 16),
}
SMALL = FeatureContract(clip_model="ViT-B-32", pretrained="test", dim=64)


def laion_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for prefix, (out_f, in_f) in LAION_SHAPES.items():
        state[f"{prefix}.weight"] = torch.randn(out_f, in_f, generator=g) / in_f**0.5
        state[f"{prefix}.bias"] = torch.randn(out_f, generator=g) * 0.1
    return state


def manual_chain(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """x @ W.T + b through the layers in order (float64), no activations, as published."""
    h = x.double()
    for prefix in LAION_SHAPES:
        h = h @ state[f"{prefix}.weight"].double().T + state[f"{prefix}.bias"].double()
    return h.squeeze(-1)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """(torch.testing.assert_close costs seconds of imports on first use.)"""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.detach().double() - b.detach().double()).abs().max())


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- published layouts -------------------------------------------------------------------


def test_aesthetic_mlp_has_laion_keys_and_loads_strict():
    head = AestheticMLP()
    expected = {f"{p}.{s}" for p in LAION_SHAPES for s in ("weight", "bias")}
    assert set(head.state_dict()) == expected
    head.load_state_dict(laion_state(), strict=True)
    for prefix, shape in LAION_SHAPES.items():
        assert tuple(head.state_dict()[f"{prefix}.weight"].shape) == shape
    assert (AestheticMLP.kind, AestheticMLP.output_column) == ("regressor", "aesthetic")


def test_aesthetic_mlp_matches_manual_computation():
    state = laion_state(seed=1)
    head = AestheticMLP()
    head.load_state_dict(state, strict=True)
    head.eval()
    x = torch.nn.functional.normalize(
        torch.randn(8, 768, generator=torch.Generator().manual_seed(2))
    )
    out = head(x)
    assert out.shape == (8,)
    assert max_abs_diff(out, manual_chain(state, x)) <= 1e-5


def test_linear_probe_loads_univfd_layout_and_fc_layout():
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(1, 768, generator=g), torch.randn(1, generator=g)
    x = torch.randn(5, 768, generator=g)
    expected = (x @ w.T + b).squeeze(-1)
    for state in ({"weight": w, "bias": b}, {"fc.weight": w, "fc.bias": b}):
        probe = LinearProbe()
        probe.load_state_dict(dict(state), strict=True)
        assert max_abs_diff(probe(x), expected) <= 1e-5
        assert max_abs_diff(probe.predict(x), torch.sigmoid(expected)) <= 1e-6
        loaded, contract, meta = load_head(state, name="aigc", contract=UNIVFD_CONTRACT)
        assert max_abs_diff(loaded(x), expected) <= 1e-5
        assert contract.normalized is False and meta["format"] == "published"


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.__setitem__("layers.8.weight", s.pop("layers.7.weight")), "layers.8.weight"),
        (lambda s: s.__setitem__("layers.2.weight", torch.zeros(128, 1000)), "layers.2.weight"),
        (lambda s: s.pop("layers.4.bias"), "layers.4.bias"),
    ],
    ids=["renamed-key", "wrong-shape", "missing-key"],
)
def test_bad_published_state_dict_names_the_key(edit, named):
    state = laion_state()
    edit(state)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        load_head(state, name="aesthetic", contract=LAION_AESTHETIC_CONTRACT)
    with pytest.raises(RuntimeError, match=named.replace(".", r"\.")):
        AestheticMLP().load_state_dict(state, strict=True)


def test_load_published_pth(tmp_path):
    state = laion_state(seed=4)
    path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(state, path)
    head, contract, meta = load_head(path, name="aesthetic", contract=LAION_AESTHETIC_CONTRACT)
    assert not head.training and contract == LAION_AESTHETIC_CONTRACT
    assert meta["config"] == {"input_size": 768} and meta["source"] == str(path)
    x = torch.nn.functional.normalize(torch.randn(3, 768))
    assert max_abs_diff(head(x), manual_chain(state, x)) <= 1e-5
    with pytest.raises(ValueError, match="pass name= and contract="):
        load_head(path)
    wrong_dim = FeatureContract(clip_model="ViT-B-32", pretrained="openai", dim=512)
    with pytest.raises(ValueError, match=r"input_size=768.*dim=512"):
        load_head(path, name="aesthetic", contract=wrong_dim)


def test_load_plain_safetensors_needs_name_and_contract(tmp_path):
    path = tmp_path / "fc.safetensors"
    save_file({"weight": torch.ones(1, 64), "bias": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match=r"not a zfoundry head file"):
        load_head(path)
    head, _, meta = load_head(path, name="aigc", contract=SMALL)
    assert head(torch.full((2, 64), 0.5)).tolist() == [32.0, 32.0]
    assert meta["format"] == "published" and meta["config"] == {"input_size": 64}
    with pytest.raises(ValueError, match=r"unsupported head file suffix '\.bin'"):
        (tmp_path / "w.bin").write_bytes(b"")
        load_head(tmp_path / "w.bin", name="aigc", contract=SMALL)


def test_mlp_classifier_published_layout_infers_hidden():
    src = MLPClassifier(input_size=32, hidden=(16, 8, 4))
    contract = FeatureContract(clip_model="ViT-B-32", pretrained="test", dim=32)
    head, _, meta = load_head(src.state_dict(), name="nsfw", contract=contract)
    assert meta["config"]["hidden"] == [16, 8, 4]
    x = torch.randn(4, 32)
    assert torch.equal(head(x), src.eval()(x))


# --- zfoundry safetensors round trip -----------------------------------------------------


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    head = MLPClassifier(input_size=64, hidden=(32, 16), dropout=0.2).eval()
    path = tmp_path / "nsfw.safetensors"
    metrics = {"auc": np.float64(0.93), "n_train": 160}
    version = save_head(head, path, SMALL, name="nsfw", metrics=metrics)
    with safe_open(str(path), framework="pt") as f:
        stored = f.metadata()
    assert set(stored) == {"format", "name", "class", "config", "contract", "metrics", "version"}
    assert stored["class"] == "MLPClassifier" and stored["version"] == version
    assert json.loads(stored["config"]) == {"input_size": 64, "hidden": [32, 16], "dropout": 0.2}

    loaded, contract, meta = load_head(path)
    x = torch.randn(10, 64)
    assert torch.equal(loaded(x), head(x)) and not loaded.training
    assert contract == SMALL and meta["metrics"] == {"auc": 0.93, "n_train": 160}
    assert meta["name"] == "nsfw" and meta["version"] == version and loaded.dropout == 0.2
    load_head(path, name="nsfw", contract=SMALL)  # agreeing arguments are fine

    with torch.no_grad():
        head.layers[0].weight[0, 0] += 1e-3
    assert save_head(head, tmp_path / "b.safetensors", SMALL, name="nsfw") != version
    other = FeatureContract(clip_model="ViT-B-32", pretrained="test", dim=128)
    with pytest.raises(ValueError, match=r"dim=64.*dim=128"):
        load_head(path, contract=other)
    with pytest.raises(ValueError, match="stores head 'nsfw', not 'aigc'"):
        load_head(path, name="aigc")


def test_load_rejects_weights_that_do_not_match_the_recorded_version(tmp_path):
    head = LinearProbe(input_size=64)
    path = tmp_path / "aigc.safetensors"
    save_head(head, path, SMALL, name="aigc")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    state["fc.bias"] = state["fc.bias"] + 1.0
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(ValueError, match="edited or corrupt"):
        load_head(path)


def test_save_checks_name_and_dim(tmp_path):
    with pytest.raises(ValueError, match="'aigc' is a LinearProbe but head is AestheticMLP"):
        save_head(AestheticMLP(input_size=64), tmp_path / "x.safetensors", SMALL, name="aigc")
    with pytest.raises(ValueError, match="dim=64 does not match the head's input_size=768"):
        save_head(LinearProbe(), tmp_path / "x.safetensors", SMALL, name="aigc")


def test_check_contract_names_both_sides():
    check_contract(SMALL, "ViT-B-32", "test", 64)
    with pytest.raises(ValueError, match=r"ViT-B-32/test dim=64.*ViT-L-14/openai dim=768"):
        check_contract(SMALL, "ViT-L-14", "openai", 768)
    with pytest.raises(ValueError, match="dim: must be a positive int, got 0"):
        FeatureContract(clip_model="a", pretrained="b", dim=0)


def test_registry():
    assert {n: (c.kind, c.output_column) for n, c in HEADS.items()} == {
        "aesthetic": ("regressor", "aesthetic"),
        "aigc": ("classifier", "aigc_prob"),
        "nsfw": ("classifier", "nsfw_prob"),
    }
    assert get_head("aigc", input_size=8).fc.in_features == 8
    with pytest.raises(ValueError, match=r"unknown head 'clip'; valid: \['aesthetic', 'aigc'"):
        get_head("clip")
    with pytest.raises(ValueError, match="'nsfw' is already registered"):
        register_head("nsfw", LinearProbe)


# --- training ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian blobs on the unit sphere in D=64, N=200 (balanced), seed 0."""
    rng = np.random.default_rng(0)
    centers = unit_rows(rng.normal(size=(2, 64)))
    labels = rng.permutation(np.arange(200) % 2)
    x = unit_rows(centers[labels] + rng.normal(scale=0.15, size=(200, 64)))
    return x.astype(np.float32), labels


@pytest.mark.parametrize("name", ["aigc", "nsfw"])
def test_fit_classifier_separable_and_random(blobs, name):
    x, y = blobs
    head, metrics = fit_head(name, x, y, seed=0)
    assert metrics["auc"] >= 0.95
    assert (metrics["n_train"], metrics["n_holdout"]) == (160, 40)
    assert not head.training
    shuffled = np.random.default_rng(1).integers(0, 2, size=y.size)
    _, random_metrics = fit_head(name, x, shuffled, seed=0, epochs=30)
    assert 0.3 <= random_metrics["auc"] <= 0.7


def test_fit_regressor_linear_target():
    rng = np.random.default_rng(0)
    x = unit_rows(rng.normal(size=(200, 64)))
    w = rng.normal(size=64)
    target = 5.0 + 2.0 * x @ w + rng.normal(scale=0.3, size=200)
    _, metrics = fit_head("aesthetic", x, target, seed=0)
    assert metrics["spearman"] >= 0.8 and metrics["n_holdout"] == 40


def test_fit_is_deterministic_per_seed(blobs):
    x, y = blobs
    a, ma = fit_head("nsfw", x, y, seed=7, epochs=5, head_kwargs={"hidden": (32,)})
    torch.rand(3)  # the caller's global RNG state must not matter
    b, mb = fit_head("nsfw", x, y, seed=7, epochs=5, head_kwargs={"hidden": (32,)})
    c, _ = fit_head("nsfw", x, y, seed=8, epochs=5, head_kwargs={"hidden": (32,)})
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and ma == mb
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_split_is_stratified_seeded_and_a_partition():
    labels = np.array([1] * 30 + [0] * 70)
    train, hold = split_indices(labels, seed=0, holdout=0.2, stratified=True)
    assert (labels[hold] == 1).sum() == 6 and (labels[hold] == 0).sum() == 14
    assert np.array_equal(np.sort(np.concatenate([train, hold])), np.arange(100))
    again, _ = split_indices(labels, seed=0, holdout=0.2, stratified=True)
    other, _ = split_indices(labels, seed=1, holdout=0.2, stratified=True)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_fit_validates_inputs(blobs):
    x, y = blobs
    bad = y.copy()
    bad[3] = 2
    with pytest.raises(ValueError, match=r"must be 0 or 1, got other values \[2\.\]"):
        fit_head("aigc", x, bad)
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\) = \(200,\), got \(199,\)"):
        fit_head("aigc", x, y[:-1])
    with pytest.raises(ValueError, match="D=64 but the head's input_size=768"):
        fit_head("aigc", x, y, head_kwargs={"input_size": 768})
    nan = x.copy()
    nan[5, 0] = np.nan
    with pytest.raises(ValueError, match=r"1 rows hold NaN/inf, e\.g\. rows \[5\]"):
        fit_head("nsfw", nan, y)
    imbalanced = (np.arange(50) < 10).astype(int)  # stratified: exactly 2 of 10 held out
    _, metrics = fit_head("aigc", x[:50], imbalanced, epochs=1)
    assert (metrics["n_holdout"], metrics["n_holdout_positive"]) == (10, 2)
    few = np.zeros(50, dtype=int)
    few[:2] = 1  # 2 positives: holdout 20% rounds to 0 of them
    with pytest.raises(ValueError, match=r"holdout split has class counts \{0: 10, 1: 0\}"):
        fit_head("aigc", x[:50], few)


# --- AUC -------------------------------------------------------------------------------


def brute_force_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pairwise_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=300).astype(float)  # many ties
    labels = (rng.random(300) < 0.3 + 0.1 * scores / 4).astype(int)
    assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)


def test_roc_auc_extremes():
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert roc_auc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.ones(3), np.ones(3))
