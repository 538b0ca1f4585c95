"""Synthetic shapes: the checker reads back what the renderer drew, even at 1/8 scale; it
gives caption-blind images chance; the split holds out compositions, not words; the
dataset is deterministic and goes through ingest and profile."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from trainer.synthetic import (
    BACKGROUNDS,
    CHANCE_COLOUR,
    COLOURS,
    POSITIONS,
    SHAPES,
    SceneSpec,
    accuracy,
    detect,
    score_image,
    split_combinations,
    write_dataset,
)

ALL = [
    SceneSpec(colour=c, shape=s, position=p, background=b)
    for c, s, p, b in itertools.product(COLOURS, SHAPES, POSITIONS, BACKGROUNDS)
]
SIZES = ((64, 64), (96, 64), (80, 128))


def latent_roundtrip(image: Image.Image, up: int, noise: float, rng) -> Image.Image:
    """What a model in identity latent space emits at best: area /8, upsampled, noisy."""
    w, h = image.size
    blocky = image.resize((w // 8, h // 8), Image.BOX).resize((w, h), up)
    pixels = np.asarray(blocky, dtype=np.float64) + rng.normal(0, noise, (h, w, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def balanced_specs(n: int, seed: int) -> list[SceneSpec]:
    """``n`` specs cycling over the colours (a multiple of 6: each colour n/6 times), so a
    detector independent of the spec has expected colour accuracy exactly 1/6."""
    rng = np.random.default_rng(seed)
    by_colour = {c: [s for s in ALL if s.colour == c] for c in COLOURS}
    return [by_colour[c][rng.integers(36)] for c in list(COLOURS) * (n // len(COLOURS))]


@pytest.mark.parametrize("size", SIZES)
def test_ground_truth_scores_perfect_also_at_latent_scale_with_noise(size):
    rng = np.random.default_rng(0)
    specs = [replace(s, width=size[0], height=size[1], seed=k) for k in range(2) for s in ALL]
    images = [s.render() for s in specs]
    assert accuracy(images, specs) == {"colour": 1.0, "position": 1.0, "n": len(specs)}
    ups = itertools.cycle((Image.NEAREST, Image.BILINEAR))
    blurred = [latent_roundtrip(im, up, 8.0, rng) for im, up in zip(images, ups, strict=False)]
    assert accuracy(blurred, specs) == {"colour": 1.0, "position": 1.0, "n": len(specs)}


def test_recoloured_shape_scores_colour_zero_and_is_detected():
    for spec in ALL[::5]:
        for other in COLOURS:
            if other == spec.colour:
                continue
            score = score_image(replace(spec, colour=other, seed=3).render(), spec)
            assert (score.colour, score.position) == (False, True)
            assert score.detected_colour == other


def test_render_is_deterministic_and_seed_moves_the_shape():
    spec = ALL[0]
    assert spec.render().tobytes() == spec.render().tobytes()
    assert len({replace(spec, seed=k).render().tobytes() for k in range(5)}) == 5
    image = replace(spec, width=96, height=64).render()
    assert (image.mode, image.size) == ("RGB", (96, 64))


def test_recolouring_changes_only_shape_pixels():
    for spec in ALL[::7]:
        before = np.asarray(replace(spec, seed=11).render(), dtype=int)
        other = next(c for c in COLOURS if c != spec.colour)
        after = np.asarray(replace(spec, seed=11, colour=other).render(), dtype=int)
        changed = (before != after).any(axis=-1)
        background = (before == before[0, 0]).all(axis=-1)
        assert changed.any() and not (changed & background).any()


def test_caption_names_every_factor():
    spec = SceneSpec(colour="red", shape="circle", position="top left", background="gray")
    assert spec.caption() == "a red circle in the top left on a gray background"


@pytest.mark.parametrize(
    ("field", "value"), [("colour", "teal"), ("shape", "star"), ("width", 72), ("height", 32)]
)
def test_bad_spec_fields_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        replace(ALL[0], **{field: value})


# Caption-blind images. The checker requires one palette-coloured blob covering 1-50 % of
# the image, so noise and flat images mostly read as "no shape" (None: wrong). The bound
# chance + 0.15 would hold even for a checker that guessed: the specs are balanced over the
# colours, so any detection independent of the spec has expected accuracy exactly 1/6, and
# 0.15 is 3.1 binomial standard deviations at n = 60 (sd = sqrt(1/6 * 5/6 / 60) = 0.048).
NOISE = {
    "gaussian": lambda rng, sd: np.clip(rng.normal(128, sd, (64, 64, 3)), 0, 255),
    "flat": lambda rng, sd: np.broadcast_to(rng.integers(0, 256, 3), (64, 64, 3)),
    "latent_noise": lambda rng, sd: np.kron(
        np.clip(rng.normal(128, sd, (8, 8, 3)), 0, 255), np.ones((8, 8, 1))
    ),
}


@pytest.mark.parametrize("kind", sorted(NOISE))
@pytest.mark.parametrize("sd", [16, 48, 96])
def test_caption_blind_images_stay_near_chance(kind, sd):
    rng = np.random.default_rng(sd)
    specs = balanced_specs(60, seed=sd)
    images = [Image.fromarray(NOISE[kind](rng, sd).astype(np.uint8)) for _ in specs]
    assert accuracy(images, specs)["colour"] <= CHANCE_COLOUR + 0.15


def test_a_model_drawing_random_scenes_scores_chance():
    """Clean shapes that ignore the caption are detected (the checker is not just strict)
    but match the prompt's colour only by chance."""
    rng = np.random.default_rng(1)
    specs = balanced_specs(60, seed=1)
    drawn = [replace(ALL[rng.integers(len(ALL))], seed=k) for k in range(60)]
    images = [latent_roundtrip(d.render(), Image.BILINEAR, 8.0, rng) for d in drawn]
    assert all(detect(im)[0] is not None for im in images)
    assert accuracy(images, specs)["colour"] <= CHANCE_COLOUR + 0.15


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.35, 0.5])
def test_split_holds_out_compositions_not_words(seed, fraction):
    train, held = split_combinations(seed, fraction)
    triple = lambda s: (s.colour, s.shape, s.position)  # noqa: E731
    train_t, held_t = {triple(s) for s in train}, {triple(s) for s in held}
    assert not train_t & held_t
    assert len(train_t | held_t) == len(COLOURS) * len(SHAPES) * len(POSITIONS)
    assert len(train) + len(held) == len(ALL) and {s.background for s in held} == set(BACKGROUNDS)
    for i, values in enumerate((COLOURS, SHAPES, POSITIONS)):
        assert {t[i] for t in train_t} == set(values)
    for i, j in itertools.combinations(range(3), 2):
        all_pairs = {(t[i], t[j]) for t in itertools.product(COLOURS, SHAPES, POSITIONS)}
        assert {(t[i], t[j]) for t in train_t} == all_pairs
    per_colour = round(fraction * 12)
    assert sorted(np.unique([t[0] for t in held_t], return_counts=True)[1]) == [per_colour] * 6
    for i, values in ((1, SHAPES), (2, POSITIONS)):
        counts = [sum(t[i] == v for t in held_t) for v in values]
        assert max(counts) - min(counts) <= 1
    assert split_combinations(seed, fraction) == (train, held)


def test_split_depends_on_seed_and_validates_fraction():
    assert len({split_combinations(seed)[1] for seed in range(6)}) > 1
    for bad in (0.0, 0.6, 0.03):
        with pytest.raises(ValueError, match="holdout_fraction"):
            split_combinations(0, bad)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return write_dataset(out, n=48, seed=7, pairs=12)


def files_of(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_is_byte_identical_for_a_seed(dataset, tmp_path):
    again = write_dataset(tmp_path / "again", n=48, seed=7, pairs=12)
    assert files_of(again.out_dir) == files_of(dataset.out_dir)
    other = write_dataset(tmp_path / "other", n=48, seed=8, pairs=12)
    assert files_of(other.out_dir) != files_of(dataset.out_dir)
    with pytest.raises(ValueError, match="out_dir"):
        write_dataset(tmp_path / "again", n=4, seed=7)


def test_dataset_has_only_training_combinations_that_match_their_sidecars(dataset):
    pngs = sorted(dataset.images_dir.glob("*.png"))
    assert len(pngs) == dataset.n_images == 48 + 12 and dataset.n_pairs == 12
    held = {(s.colour, s.shape, s.position) for s in dataset.heldout}
    sizes = set()
    for png in pngs:
        meta = json.loads(png.with_suffix(".json").read_text())
        spec = SceneSpec(**{k: meta[k] for k in ("colour", "shape", "position", "background")})
        spec = replace(spec, width=meta["width"], height=meta["height"], seed=meta["seed"])
        assert meta["split"] == "train" and (spec.colour, spec.shape, spec.position) not in held
        assert png.with_suffix(".txt").read_text() == spec.caption() + "\n"
        image = Image.open(png)
        assert image.tobytes() == spec.render().tobytes()
        assert score_image(image, spec) == score_image(spec.render(), spec)
        assert score_image(image, spec).colour and score_image(image, spec).position
        sizes.add(image.size)
    assert sizes == {(64, 64), (96, 64)}
    assert {(s.width, s.height) for s in dataset.heldout} == sizes
    assert len(dataset.heldout) == 2 * 3 * 12  # 2 sizes x 3 backgrounds x 12 triples
    lines = (dataset.out_dir / "heldout.jsonl").read_text().splitlines()
    assert [json.loads(line)["caption"] for line in lines] == [s.caption() for s in dataset.heldout]


def test_pairs_instructions_match_the_rendered_images(dataset):
    lines = (dataset.out_dir / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12
    zh = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色"}
    zh |= {"magenta": "品红色", "cyan": "青色"}
    for line in lines:
        pair = json.loads(line)
        (op,) = pair["operations"]
        assert op["op"] == "recolour" and op["from"] != op["to"]
        source = Image.open(dataset.images_dir / pair["source"])
        target = Image.open(dataset.images_dir / pair["target"])
        assert detect(source)[0] == op["from"] and detect(target)[0] == op["to"]
        assert detect(source)[1] == detect(target)[1]
        meta = json.loads((dataset.images_dir / pair["source"]).with_suffix(".json").read_text())
        assert pair["instruction"] == f"make the {op['from']} {meta['shape']} {op['to']}"
        assert pair["instruction_zh"].startswith(f"把{zh[op['from']]}")
        assert pair["instruction_zh"].endswith(f"变成{zh[op['to']]}")
        target_meta = json.loads(
            (dataset.images_dir / pair["target"]).with_suffix(".json").read_text()
        )
        assert target_meta["role"] == "edit_target" and target_meta["edit_of"] == pair["source"]


def test_ingest_and_profile_read_the_folder(dataset, tmp_path):
    from tests.helpers import by_key, ingest_folders, profile

    run = ingest_folders(tmp_path / "run", dataset.images_dir, rows_per_shard=32)
    rows = by_key(run, "samples")
    pngs = sorted(p.name for p in dataset.images_dir.glob("*.png"))
    assert sorted(rows) == pngs  # sidecars attached, not samples of their own
    for key, row in rows.items():
        assert (
            row["caption_alt"] == (dataset.images_dir / key).with_suffix(".txt").read_text().strip()
        )
        assert json.loads(row["meta"])["split"] == "train"
    profile(run)
    profiles = by_key(run, "profiles")
    assert sorted(profiles) == pngs and all(p["error"] is None for p in profiles.values())
    for key, p in profiles.items():
        assert (p["width"], p["height"]) == Image.open(dataset.images_dir / key).size
