"""Synthetic shapes: a dataset a tiny text-to-image model can provably learn, and a checker.

A scene is one flat-coloured shape (:data:`COLOURS` x :data:`SHAPES`) centred in one quadrant
(:data:`POSITIONS`) of a flat background (:data:`BACKGROUNDS`), captioned
``"a red circle in the top left on a gray background"``. Shapes fill 70-90 % of their
quadrant's shorter side, so at the model's identity latent (area-downsampled by 8) a 64x64
scene is an 8x8 grid whose 4x4 quadrant still shows the colour. Jitter, all drawn from
``SceneSpec.seed``: size (70-90 %), placement (up to a quarter of the free room in the
quadrant) and shades (+-12 per channel for shape and background).

Backgrounds are black, white and gray, a set apart from the six shape colours, so a shape is
never the colour of its background (RGB distance >= 180 even after jitter).

:func:`split_combinations` holds out (colour, shape, position) triples, balanced per colour,
position and shape; every single value and every pair of values still occurs in training,
so held-out captions test composition, not unseen words.

Layout written by :func:`write_dataset` (training combinations only under ``images/``)::

    out_dir/
      images/                  the folder to ingest: `zfoundry ingest out_dir/images --run RUN`
        00000.png              a scene
        00000.txt              its caption (ingest -> samples.caption_alt)
        00000.json             meta: colour, shape, position, background, split, width,
                               height, seed, role ("scene" | "edit_target"), edit_of
        00003_to_blue.png      an edit target: scene 00003 with its shape recoloured blue
        00003_to_blue.txt/json (same geometry and background: only shape pixels differ)
      pairs.jsonl              one image-to-image pair a line, paths relative to images/
                               (= the ingest ``key``): {"source", "target", "instruction",
                               "instruction_zh", "operations": [{"op": "recolour", ...}]}
      heldout.jsonl            held-out specs (never under images/) with their captions
      info.json                settings and counts

The checker (:func:`score_image`) reads colour and position back from pixels; it works on
the blocky or blurred 8x-upsampled images a model in identity latent space generates.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from infra.config import require

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
"""Corners of the RGB cube: any two are >= 255 apart (>= 231 after +-12 shade jitter)."""
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}
"""Never a shape colour: each is >= 221 from every colour of :data:`COLOURS` (>= 180
after jitter)."""
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
COLOURS_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色"}
COLOURS_ZH |= {"magenta": "品红色", "cyan": "青色"}
SHAPES_ZH = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}

CHANCE_COLOUR = 1 / len(COLOURS)
CHANCE_POSITION = 1 / len(POSITIONS)
SHAPE_DISTANCE = 96.0
"""A pixel belongs to the shape when its RGB distance from the background exceeds this:
about half the smallest shape-background distance (180 after jitter; edge pixels blended
with under 27-53 % of shape colour, by background, count as background) and 7 times the
norm of N(0, 8/255) noise per channel (8 * sqrt(3) = 14): noise alone makes no shape."""
SHAPE_FRACTION = (0.01, 0.5)
"""Shape pixels must cover this share of the image (a scene's shape covers 5-22 %);
outside it the image shows no single shape (noise, or the background misread)."""
SIZE_RANGE = (0.7, 0.9)
"""Shape size as a share of its quadrant's shorter side."""
SHADE_JITTER = 12
_SIZE_RULE = "must be a multiple of 16 and >= 64 (a quadrant must span >= 4x4 latent cells)"


@dataclass(frozen=True, kw_only=True)
class SceneSpec:
    """One scene: what the caption says, the image size and the jitter seed."""

    colour: str
    """A key of :data:`COLOURS`."""
    shape: str
    """One of :data:`SHAPES`."""
    position: str
    """One of :data:`POSITIONS`: the quadrant the shape is centred in."""
    background: str
    """A key of :data:`BACKGROUNDS`."""
    width: int = 64
    """Image width in pixels: a multiple of 16 (quadrants align with the 8x latent grid) and
    >= 64 (smaller quadrants blur away at 1/8 scale: the checker then misreads colours)."""
    height: int = 64
    """Image height in pixels, like ``width``."""
    seed: int = 0
    """Seeds the size, placement and shade jitter; recolouring keeps the rest identical."""

    def __post_init__(self) -> None:
        require(self.colour in COLOURS, "colour", self.colour, f"must be one of {list(COLOURS)}")
        require(self.shape in SHAPES, "shape", self.shape, f"must be one of {list(SHAPES)}")
        require(self.position in POSITIONS, "position", self.position, f"must be in {POSITIONS}")
        require(self.background in BACKGROUNDS, "background", self.background, "must be known")
        for name in ("width", "height"):
            value = getattr(self, name)
            require(value >= 64 and value % 16 == 0, name, value, _SIZE_RULE)
        require(self.seed >= 0, "seed", self.seed, "must be >= 0")

    def caption(self) -> str:
        return (
            f"a {self.colour} {self.shape} in the {self.position} on a {self.background} background"
        )

    def render(self) -> Image.Image:
        """The scene as an RGB image; a pure function of the spec."""
        rng = np.random.default_rng(self.seed)
        qw, qh = self.width / 2, self.height / 2
        size = min(qw, qh) * rng.uniform(*SIZE_RANGE)
        dx, dy = rng.uniform(-1, 1, 2) * np.array([qw - size, qh - size]) / 4
        bg = _shade(BACKGROUNDS[self.background], rng.integers(-SHADE_JITTER, SHADE_JITTER + 1, 3))
        fg = _shade(COLOURS[self.colour], rng.integers(-SHADE_JITTER, SHADE_JITTER + 1, 3))
        vertical, horizontal = self.position.split()
        cx = qw * (0.5 if horizontal == "left" else 1.5) + dx
        cy = qh * (0.5 if vertical == "top" else 1.5) + dy
        x0, y0, x1, y1 = cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2
        image = Image.new("RGB", (self.width, self.height), bg)
        draw = ImageDraw.Draw(image)
        if self.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fg)
        elif self.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fg)
        else:
            draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fg)
        return image


def _shade(rgb: tuple[int, int, int], jitter: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.array(rgb) + jitter, 0, 255))


Triple = tuple[str, str, str]  # (colour, shape, position)


def split_combinations(
    seed: int, holdout_fraction: float = 0.2, *, size: tuple[int, int] = (64, 64)
) -> tuple[tuple[SceneSpec, ...], tuple[SceneSpec, ...]]:
    """(train, held-out) specs of every colour x shape x position x background at ``size``.

    Held out are ``round(holdout_fraction * 12)`` (shape, position) triples per colour, spread
    evenly over positions and shapes, so a model that ignores the caption scores chance;
    every colour, shape, position and pair of them stays in training."""
    require(
        0 < holdout_fraction <= 0.5, "holdout_fraction", holdout_fraction, "must be in (0, 0.5]"
    )
    per_colour = round(holdout_fraction * len(SHAPES) * len(POSITIONS))
    require(per_colour >= 1, "holdout_fraction", holdout_fraction, "holds out no combination")
    held = _held_out_triples(np.random.default_rng(seed), per_colour)
    specs = {
        t: tuple(
            SceneSpec(
                colour=t[0], shape=t[1], position=t[2], background=b, width=size[0], height=size[1]
            )
            for b in BACKGROUNDS
        )
        for t in itertools.product(COLOURS, SHAPES, POSITIONS)
    }
    train = tuple(s for t, group in specs.items() if t not in held for s in group)
    return train, tuple(s for t, group in specs.items() if t in held for s in group)


_PAIRS = ((0, 1), (0, 2), (1, 2))


def _held_out_triples(rng: np.random.Generator, per_colour: int) -> set[Triple]:
    triples = list(itertools.product(COLOURS, SHAPES, POSITIONS))
    total = per_colour * len(COLOURS)
    caps = (per_colour, math.ceil(total / len(SHAPES)), math.ceil(total / len(POSITIONS)))
    for _ in range(200):  # greedy over a random order; a rare dead end retries
        held: set[Triple] = set()
        counts = [Counter(dict.fromkeys(values, 0)) for values in (COLOURS, SHAPES, POSITIONS)]
        pairs = Counter((i, j, t[i], t[j]) for t in triples for i, j in _PAIRS)
        for k in rng.permutation(len(triples)):
            t = triples[k]
            if any(counts[f][t[f]] >= caps[f] for f in range(3)):
                continue
            if any(pairs[i, j, t[i], t[j]] <= 1 for i, j in _PAIRS):
                continue  # the last training triple with this pair of values
            held.add(t)
            for f in range(3):
                counts[f][t[f]] += 1
            for i, j in _PAIRS:
                pairs[i, j, t[i], t[j]] -= 1
        if len(held) == total and all(max(c.values()) - min(c.values()) <= 1 for c in counts):
            return held
    raise ValueError(f"split_combinations: found no balanced split of {total} triples")


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """What :func:`write_dataset` wrote."""

    out_dir: Path
    images_dir: Path
    """The folder to ingest."""
    n_scenes: int
    n_pairs: int
    n_images: int
    """Scenes plus edit targets: the rows ``ingest`` of ``images_dir`` yields."""
    train_specs: tuple[SceneSpec, ...]
    """Every training combination (seed 0, first size)."""
    heldout: tuple[SceneSpec, ...]
    """Every held-out combination at every size (seed 0): the evaluation prompts."""


def write_dataset(
    out_dir: str | Path,
    *,
    n: int,
    seed: int,
    sizes: Sequence[tuple[int, int]] = ((64, 64), (96, 64)),
    pairs: int | None = None,
    holdout_fraction: float = 0.2,
) -> DatasetInfo:
    """Write ``n`` training scenes and ``pairs`` recolour edits (default ``n // 4``) to a new
    or empty ``out_dir``; byte-identical for the same arguments. Layout: module docstring."""
    out = Path(out_dir)
    require(n >= 1, "n", n, "must be >= 1")
    require(len(sizes) >= 1, "sizes", sizes, "must name at least one (width, height)")
    pairs = n // 4 if pairs is None else pairs
    require(0 <= pairs <= n, "pairs", pairs, f"must be in [0, n={n}]")
    require(not out.exists() or not any(out.iterdir()), "out_dir", str(out), "must be empty")
    train, _ = split_combinations(seed, holdout_fraction, size=tuple(sizes[0]))
    heldout = tuple(
        spec for size in sizes for spec in split_combinations(seed, holdout_fraction, size=size)[1]
    )
    rng = np.random.default_rng([seed, 1])
    scenes = _sample_scenes(train, n, sizes, rng)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(scenes):
        _write_sample(images, f"{i:05d}", spec, {"role": "scene"})
    lines = _write_pairs(images, scenes, pairs, {_triple(s) for s in train}, rng)
    _write_text(out / "pairs.jsonl", "".join(lines))
    _write_text(out / "heldout.jsonl", "".join(_spec_line(s) for s in heldout))
    info = {"seed": seed, "n_scenes": n, "n_pairs": pairs, "n_images": n + pairs}
    info |= {"sizes": [list(s) for s in sizes], "holdout_fraction": holdout_fraction}
    _write_text(out / "info.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    return DatasetInfo(
        out_dir=out,
        images_dir=images,
        n_scenes=n,
        n_pairs=pairs,
        n_images=n + pairs,
        train_specs=train,
        heldout=heldout,
    )


def _triple(spec: SceneSpec) -> Triple:
    return spec.colour, spec.shape, spec.position


def _sample_scenes(
    train: Sequence[SceneSpec], n: int, sizes: Sequence[tuple[int, int]], rng: np.random.Generator
) -> list[SceneSpec]:
    """``n`` specs cycling through shuffled rounds of ``train`` (each combination equally
    often, +-1), each at a random size of ``sizes`` with its own jitter seed."""
    order = np.concatenate([rng.permutation(len(train)) for _ in range(-(-n // len(train)))])
    size_index = rng.integers(0, len(sizes), n)
    seeds = rng.integers(0, 2**31, n)
    return [
        replace(train[order[i]], width=sizes[k][0], height=sizes[k][1], seed=int(seeds[i]))
        for i, k in enumerate(size_index)
    ]


def _write_pairs(
    images: Path, scenes: list[SceneSpec], pairs: int, allowed: set[Triple], rng
) -> list[str]:
    """Recolour ``pairs`` random scenes to another colour whose triple is in training;
    write each target and return the ``pairs.jsonl`` lines."""
    lines = []
    for i in rng.permutation(len(scenes)):
        spec = scenes[i]
        choices = [
            c for c in COLOURS if c != spec.colour and _triple(replace(spec, colour=c)) in allowed
        ]
        if len(lines) == pairs or not choices:
            continue
        target = replace(spec, colour=choices[rng.integers(len(choices))])
        source, stem = f"{i:05d}.png", f"{i:05d}_to_{target.colour}"
        _write_sample(images, stem, target, {"role": "edit_target", "edit_of": source})
        lines.append(_pair_line(source, f"{stem}.png", spec, target))
    if len(lines) < pairs:
        raise ValueError(f"pairs: only {len(lines)} scenes have a training recolour, got {pairs}")
    return lines


def _write_sample(folder: Path, stem: str, spec: SceneSpec, extra: dict) -> None:
    spec.render().save(folder / f"{stem}.png", format="PNG")
    _write_text(folder / f"{stem}.txt", spec.caption() + "\n")
    meta = asdict(spec) | {"split": "train"} | extra
    _write_text(folder / f"{stem}.json", json.dumps(meta, sort_keys=True) + "\n")


def _pair_line(source: str, target: str, before: SceneSpec, after: SceneSpec) -> str:
    zh = f"把{COLOURS_ZH[before.colour]}{SHAPES_ZH[before.shape]}变成{COLOURS_ZH[after.colour]}"
    pair = {
        "source": source,
        "target": target,
        "instruction": f"make the {before.colour} {before.shape} {after.colour}",
        "instruction_zh": zh,
        "operations": [{"op": "recolour", "from": before.colour, "to": after.colour}],
    }
    return json.dumps(pair, ensure_ascii=False) + "\n"


def _spec_line(spec: SceneSpec) -> str:
    record = asdict(spec) | {"caption": spec.caption(), "split": "heldout"}
    return json.dumps(record, sort_keys=True) + "\n"


def _write_text(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8"))


@dataclass(frozen=True, kw_only=True)
class Score:
    """How an image matches a spec; ``detected_*`` is None when no shape is found."""

    colour: bool
    position: bool
    detected_colour: str | None
    detected_position: str | None


def detect(image: Image.Image | np.ndarray) -> tuple[str | None, str | None]:
    """(colour, position) of the one shape in ``image`` (PIL, or an (H, W, 3) array in
    0-255), read from pixels.

    Background = per-channel median of the image border; shape pixels = those farther than
    :data:`SHAPE_DISTANCE` from it (None, None when they cover less or more than
    :data:`SHAPE_FRACTION`); colour = the palette colour nearest the per-channel median of
    the farther half of them (the core; edges blurred by 8x upsampling are half background),
    None when that median is nearer the background than the palette (a washed-out blob);
    position = the quadrant of the centroid of all shape pixels."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    pixels = pixels.astype(np.float32)  # (H, W, 3)
    h, w = pixels.shape[:2]
    b = max(1, min(h, w) // 32)
    frame = np.ones((h, w), dtype=bool)
    frame[b:-b, b:-b] = False
    background = np.median(pixels[frame], axis=0)
    distance = np.linalg.norm(pixels - background, axis=-1)  # (H, W)
    mask = distance > SHAPE_DISTANCE
    if not SHAPE_FRACTION[0] <= mask.mean() <= SHAPE_FRACTION[1]:
        return None, None
    core = distance >= np.median(distance[mask])  # the shape's less blended half
    value = np.median(pixels[core], axis=0)
    names = list(COLOURS)
    distances = np.linalg.norm(np.array([COLOURS[c] for c in names]) - value, axis=-1)
    nearest = int(np.argmin(distances))
    colour = names[nearest] if distances[nearest] < np.linalg.norm(value - background) else None
    ys, xs = np.nonzero(mask)
    vertical = "top" if ys.mean() + 0.5 < h / 2 else "bottom"
    horizontal = "left" if xs.mean() + 0.5 < w / 2 else "right"
    return colour, f"{vertical} {horizontal}"


def score_image(image: Image.Image | np.ndarray, spec: SceneSpec) -> Score:
    colour, position = detect(image)
    return Score(
        colour=colour == spec.colour,
        position=position == spec.position,
        detected_colour=colour,
        detected_position=position,
    )


def accuracy(
    images: Sequence[Image.Image | np.ndarray], specs: Sequence[SceneSpec]
) -> dict[str, float]:
    """Mean colour and position correctness; compare colour with :data:`CHANCE_COLOUR`."""
    require(len(images) == len(specs), "specs", len(specs), f"must match {len(images)} images")
    require(len(images) > 0, "images", 0, "must not be empty")
    scores = [score_image(image, spec) for image, spec in zip(images, specs, strict=True)]
    return {
        "colour": float(np.mean([s.colour for s in scores])),
        "position": float(np.mean([s.position for s in scores])),
        "n": len(scores),
    }
