"""Editing-pair constructors (first part): the built-in editors on real photos, graphical
combination (pair counts, composed instructions, inverse targets are the real photo), and
rendered text edits read back by OCR."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageOps

from curation.pairs.combine import Node, combine, compose, pairs_of
from curation.pairs.editors import BUILTIN, DiffusersEditor, Flip, Operation, Style, Tone
from curation.pairs.text_edits import CHANGES, text_edit, verify
from tests.conftest import EXAMPLES

PHOTOS = sorted((EXAMPLES / "data" / "coco25").glob("*.jpg"))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(PHOTOS[0]).convert("RGB")


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5])
def test_every_ordered_pair_among_the_input_and_its_edits(n):
    pairs = pairs_of(n)
    kinds = [k for _, _, k in pairs]
    assert len(pairs) == n * (n + 1) == len(set((s, t) for s, t, _ in pairs))
    assert (kinds.count("expert"), kinds.count("inverse"), kinds.count("mixed")) == (
        n, n, n * (n - 1))  # fmt: skip


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_editors_change_a_real_photo_deterministically(photo, name):
    editor = BUILTIN[name]()
    out, op = editor.edit(photo, random.Random(7))
    again, op2 = editor.edit(photo, random.Random(7))
    assert op == op2 and np.array_equal(np.asarray(out), np.asarray(again))
    assert out.mode == "RGB" and op.op == name and op.en and op.zh and op.inverse_en
    if name == "rotate" and op.params["degrees_clockwise"] != 180:
        assert out.size == photo.size[::-1]
    else:
        assert out.size == photo.size
        changed = np.abs(np.asarray(out, np.int16) - np.asarray(photo, np.int16)).max(-1) > 10
        assert changed.mean() > 0.005  # a visible edit (local ones touch ~1% of the photo)


def test_combination_composes_instructions_and_inverse_targets_are_the_photo(photo):
    rng = random.Random(0)
    flipped, flip = Flip().edit(photo, rng)
    sepia_img, sepia = Style(style="sepia").edit(photo, rng)
    toned, tone = Tone().edit(sepia_img, rng)  # an edit of two operations
    nodes = [Node(photo, ()), Node(flipped, (flip,)), Node(toned, (sepia, tone))]
    pairs = combine(nodes)
    assert len(pairs) == 6
    by = {(p.source, p.target): p for p in pairs}
    assert by[0, 1].kind == "expert" and by[0, 1].instruction == "Flip the image horizontally."
    assert by[0, 1].instruction_zh == "将图片水平翻转。"
    # inverse: undo the operations in reverse order; the target is the untouched photo
    assert by[2, 0].kind == "inverse" and nodes[by[2, 0].target].image is photo
    assert by[2, 0].instruction == f"{tone.inverse_en}, then remove the sepia filter."
    assert by[2, 0].instruction_zh == f"{tone.inverse_zh}，然后去掉棕褐色滤镜。"
    # mixed: undo the source's edit, then apply the target's
    assert by[1, 2].kind == "mixed"
    assert by[1, 2].instruction == (
        f"Flip the image horizontally, then apply a sepia filter, then {tone.en[0].lower()}"
        f"{tone.en[1:]}."
    )
    assert np.array_equal(np.asarray(ImageOps.mirror(flipped)), np.asarray(photo))  # truly undone


def test_an_expert_model_edit_without_an_inverse_needs_a_difference_caption(tmp_path):
    op = Operation("expert_model", {"instruction": "make it snow"}, "make it snow", None,
                   None, None)  # fmt: skip
    assert compose([(op, False)], "en") == "Make it snow."  # a sentence, as composed ones are
    assert compose([(op, False)], "zh") is None and compose([(op, True)], "en") is None
    editor = DiffusersEditor(path=str(tmp_path / "missing"), instructions=("make it snow",))
    with pytest.raises(FileNotFoundError, match="missing"):
        editor.load()


@pytest.fixture(scope="module")
def ocr():
    from captioner.ocr import RapidOcrEngine

    return RapidOcrEngine()


@pytest.mark.parametrize("change", CHANGES)
def test_rendered_text_edits_match_their_instructions_by_ocr(change, ocr):
    for zh in (False, True):
        background = Image.open(PHOTOS[CHANGES.index(change) + 3 * zh]).convert("RGB")
        edit = text_edit(background, random.Random(11), change=change, zh_prob=float(zh))
        assert verify(edit, ocr) is None, (edit.instruction, verify(edit, ocr))
        words = edit.before or edit.after
        assert words is not None and f"“{words.text}”" in edit.instruction_zh
        assert f'"{words.text}"' in edit.instruction
        if change == "replace":
            assert edit.after.text in edit.instruction and edit.before.text != edit.after.text
        if change in ("add", "remove"):
            blank = edit.source if change == "add" else edit.target
            assert np.array_equal(np.asarray(blank), np.asarray(background))
