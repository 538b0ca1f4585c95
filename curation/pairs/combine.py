"""Graphical combination: an input image and its N edits give every ordered pair among the
N+1 images, N(N+1) pairs in all (the report's section 2.5).

* **expert** (forward, N pairs): input -> edit j; the instruction is edit j's operations.
* **inverse** (N pairs): edit i -> input; the instruction undoes edit i's operations in
  reverse order, and the target is the real, undistorted photo.
* **mixed** (N(N-1) pairs): edit i -> edit j; undo edit i, then apply edit j.

Instructions are composed from the operations in English and Chinese. When an operation
cannot be described in the needed direction (an expert model's edit, backwards), the pair's
instruction is left to the captioner's difference captions (``needs_caption``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from curation.pairs.editors import Operation


@dataclass(frozen=True)
class Node:
    """One image of a combination: the input (``ops == ()``) or an edit of it."""

    image: Image.Image
    ops: tuple[Operation, ...]


@dataclass(frozen=True)
class Pair:
    source: int  # index into the nodes (0: the input)
    target: int
    kind: str  # expert | inverse | mixed
    steps: tuple[tuple[Operation, bool], ...]  # (operation, inverted?) in order
    instruction: str | None  # None: needs a difference caption
    instruction_zh: str | None


def pairs_of(n_edits: int) -> list[tuple[int, int, str]]:
    """(source, target, kind) of every ordered pair among the input (0) and its edits."""
    out = []
    for s in range(n_edits + 1):
        for t in range(n_edits + 1):
            if s != t:
                out.append((s, t, "expert" if s == 0 else "inverse" if t == 0 else "mixed"))
    return out


def compose(steps: Sequence[tuple[Operation, bool]], lang: str) -> str | None:
    """One instruction for several steps (each an operation, maybe inverted), or None when a
    step has no description in that language and direction."""
    parts = []
    for op, inverted in steps:
        text = (op.inverse_en if inverted else op.en) if lang == "en" else (
            op.inverse_zh if inverted else op.zh)  # fmt: skip
        if not text:
            return None
        parts.append(text)
    if lang == "en":
        parts = [parts[0][0].upper() + parts[0][1:]] + [p[0].lower() + p[1:] for p in parts[1:]]
        return ", then ".join(parts) + "."
    return "，然后".join(parts) + "。"


def combine(nodes: Sequence[Node]) -> list[Pair]:
    """Every ordered pair of ``nodes`` (node 0 is the input) with its composed instructions."""
    out = []
    for s, t, kind in pairs_of(len(nodes) - 1):
        undo = [(op, True) for op in reversed(nodes[s].ops)]
        steps = tuple(undo + [(op, False) for op in nodes[t].ops])
        out.append(Pair(s, t, kind, steps, compose(steps, "en"), compose(steps, "zh")))
    return out
