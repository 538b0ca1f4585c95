"""Text-editing pairs by rendering (the report's section 2.5): a line of text rendered onto a
real photo (on a plate that contrasts with its colour, like a sign), then one attribute
changed -- the words (replace), colour, size, position, or the text added or removed -- with
the exact instruction in English and Chinese.

Latin text uses a Latin font and Chinese text a CJK-capable one (``infra.fonts.find_font``:
system fonts, else the ``mplfonts`` package; a clear ``FontNotFound`` when there is none).
``verify`` reads the target back with the OCR engine: the new text must be there (or gone,
for ``remove``), so a sample of the rendered pairs is checked, not trusted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from PIL import Image

from curation.pairs.editors import COLOURS, CORNERS, WORDS, WORDS_ZH, _draw_in_corner

CHANGES = ("replace", "recolour", "resize", "move", "add", "remove")
ZH_CHANGES = {"replace": "替换", "recolour": "改色", "resize": "缩放", "move": "移动",
              "add": "添加", "remove": "删除"}  # fmt: skip


@dataclass(frozen=True)
class TextSpec:
    text: str
    colour: str
    corner: str
    scale: float  # font size as a fraction of the shorter image side

    @property
    def script(self) -> str:
        return "latin" if self.text.isascii() else "cjk"


@dataclass(frozen=True)
class TextEdit:
    source: Image.Image
    target: Image.Image
    change: str
    before: TextSpec | None  # None: the source has no text (add)
    after: TextSpec | None  # None: the target has no text (remove)
    instruction: str
    instruction_zh: str

    def record(self) -> dict:
        """``edit_pairs.operations`` entry."""
        spec = lambda s: None if s is None else s.__dict__  # noqa: E731
        return {"op": f"text_{self.change}", "before": spec(self.before), "after": spec(self.after)}


def render(background: Image.Image, spec: TextSpec | None) -> Image.Image:
    if spec is None:
        return background.convert("RGB")
    from infra.fonts import find_font

    size = max(12, int(min(background.size) * spec.scale))
    out, _ = _draw_in_corner(background.convert("RGB"), spec.text, find_font(spec.script),
                             spec.corner, COLOURS[spec.colour][0], size=size,
                             boxed=True)  # fmt: skip
    return out


def _spec(rng: random.Random, zh: bool) -> TextSpec:
    return TextSpec(
        text=rng.choice(WORDS_ZH if zh else WORDS),
        colour=rng.choice(sorted(COLOURS)),
        corner=rng.choice(sorted(CORNERS)),
        scale=rng.choice([0.09, 0.12]),
    )


def text_edit(
    background: Image.Image, rng: random.Random, *, change: str | None = None, zh_prob: float = 0.3
) -> TextEdit:
    """One rendered pair on ``background`` with one changed attribute (random unless given)."""
    change = change or rng.choice(CHANGES)
    if change not in CHANGES:
        raise ValueError(f"change {change!r}: one of {CHANGES}")
    zh = rng.random() < zh_prob
    before: TextSpec | None = _spec(rng, zh)
    after: TextSpec | None = before
    assert before is not None
    t, c_en = before.text, before.colour
    if change == "replace":
        pool = [w for w in (WORDS_ZH if zh else WORDS) if w != t]
        after = replace(before, text=rng.choice(pool))
        en = f'Replace the text "{t}" with "{after.text}"'
        cn = f"把文字“{t}”替换为“{after.text}”"
    elif change == "recolour":
        after = replace(before, colour=rng.choice([c for c in sorted(COLOURS) if c != c_en]))
        en = f'Change the colour of the text "{t}" to {after.colour}'
        cn = f"把文字“{t}”的颜色改为{COLOURS[after.colour][1]}"
    elif change == "resize":
        after = replace(before, scale=0.18 if before.scale < 0.1 else 0.07)
        bigger = after.scale > before.scale
        en = f'Make the text "{t}" {"larger" if bigger else "smaller"}'
        cn = f"把文字“{t}”{'放大' if bigger else '缩小'}"
    elif change == "move":
        after = replace(
            before, corner=rng.choice([k for k in sorted(CORNERS) if k != before.corner])
        )
        en = f'Move the text "{t}" to the {after.corner} corner'
        cn = f"把文字“{t}”移到{CORNERS[after.corner][1]}"
    elif change == "add":
        before = None
        en = f'Add the {c_en} text "{t}" in the {after.corner} corner'
        cn = f"在{CORNERS[after.corner][1]}添加{COLOURS[c_en][1]}文字“{t}”"
    else:  # remove
        after = None
        en, cn = f'Remove the text "{t}"', f"删除文字“{t}”"
    return TextEdit(render(background, before), render(background, after), change, before,
                    after, en, cn)  # fmt: skip


def verify(edit: TextEdit, ocr) -> str | None:
    """None when the OCR reading of the target matches the instruction, else why not."""
    read = ocr.read(edit.target).text
    squash = lambda s: "".join(s.split()).upper()  # noqa: E731
    if edit.after is None:
        gone = edit.before.text if edit.before else ""
        return f"{gone!r} still read in the target" if squash(gone) in squash(read) else None
    want = edit.after.text
    return None if squash(want) in squash(read) else f"{want!r} not read (read {read!r})"
