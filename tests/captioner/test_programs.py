"""Caption programs: versioned prompts, and answers in the documented format parsed, repaired
when that is safe, and rejected with a reason otherwise (recorded answers, no model)."""

from __future__ import annotations

import json

import pytest

from captioner.programs import (
    Rejected,
    caption_prompt,
    load_prompts,
    parse_captions,
    parse_instruction,
    parse_ocr,
)

OCR = "STOP\n停车场"
LEAVES_OUT = "A red stop sign reading STOP on a metal pole at a street corner, brick buildings."
GOOD = {
    "caption_long": 'A red octagonal road sign reading "STOP" on a metal pole at a street '
    'corner, with a blue parking sign below it reading "停车场"; brick buildings and parked '
    "cars behind, overcast daylight.",
    "caption_medium": "A red stop sign and a blue parking sign on a pole at a city street "
    "corner. Brick buildings and parked cars are in the background.",
    "caption_short": "A stop sign above a parking sign on a city corner.",
    "caption_tags": ["stop sign", "parking sign", "street", "city", "pole"],
    "caption_user_prompt": "stop sign on a street corner, cloudy",
}


def test_prompts_are_versioned_and_carry_the_transcript_and_the_knowledge():
    prompts = load_prompts("v1")
    assert prompts.version.startswith("v1-") and len(prompts.version) == 11
    text = caption_prompt(prompts, OCR, "en", {"alt text": "corner of Main St",
                                                 "concepts": "Stop sign", "title": ""})  # fmt: skip
    assert "STOP\n停车场" in text and "alt text: corner of Main St" in text
    assert "title" not in text and "English" in text and '"caption_long"' in text
    assert "Simplified Chinese" in caption_prompt(prompts, "", "zh", {})
    with pytest.raises(ValueError, match="v9"):
        load_prompts("v9")
    with pytest.raises(ValueError, match="fr"):
        caption_prompt(prompts, "", "fr", {})


def test_a_well_formed_answer_gives_typed_fields():
    got = parse_captions(json.dumps(GOOD, ensure_ascii=False), ocr_text=OCR, language="en")
    assert got.caption_short == GOOD["caption_short"]
    assert got.caption_tags == "stop sign, parking sign, street, city, pole"
    assert got.ocr_text == OCR and got.caption_lang == "en"


def test_safe_repairs():
    body = json.dumps({"Caption Long": GOOD["caption_long"], "medium": GOOD["caption_medium"],
                       "SHORT": GOOD["caption_short"], "tags": "stop sign, street,  ,city",
                       "user_prompt": GOOD["caption_user_prompt"]}, ensure_ascii=False)  # fmt: skip
    answer = f"Sure! Here it is:\n```json\n{body[:-1]},\n}}\n```\nHope this helps."
    got = parse_captions(answer, ocr_text=OCR, language="en")
    assert got.caption_long == GOOD["caption_long"]
    assert got.caption_tags == "stop sign, street, city"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("A red stop sign on a corner.", "no JSON object"),
        ("{caption_long: 'single quotes'}", "does not parse"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "caption_short"}), "missing"),
        (json.dumps(GOOD | {"caption_medium": "  "}), "caption_medium is empty"),
        (json.dumps(GOOD | {"caption_tags": []}), "caption_tags is empty"),
        (json.dumps(GOOD | {"caption_short": GOOD["caption_long"] + " More."}), "longer"),
        (
            json.dumps(GOOD | {"caption_long": LEAVES_OUT}),
            "leaves out the transcribed text '停车场'",
        ),
        (json.dumps(GOOD | {"caption_user_prompt": "sign " * 12}), "repeats itself"),
        # what a randomly initialised VLM says
        ("ĠtheĠtheĠthe ĠĠ<|im_end|> 0x3f the the the the the the the", "no JSON object"),
    ],
)
def test_malformed_answers_are_rejected_with_a_reason(answer, reason):
    with pytest.raises(Rejected, match=reason):
        parse_captions(answer, ocr_text=OCR, language="en")


def test_chinese_captions_and_the_script_check():
    zh = {"caption_long": "街角的金属杆上有一个红色八角形的停车标志，上面写着“STOP”，"
                          "下面是写着“停车场”的蓝色牌子。",
          "caption_medium": "街角杆子上的停车标志和停车场指示牌。",
          "caption_short": "街角的停车标志。",
          "caption_tags": ["停车标志", "街道", "城市"],
          "caption_user_prompt": "街角 停车标志"}  # fmt: skip
    got = parse_captions(json.dumps(zh, ensure_ascii=False), ocr_text=OCR, language="zh")
    assert got.caption_lang == "zh" and got.caption_tags == "停车标志, 街道, 城市"
    with pytest.raises(Rejected, match="not Chinese"):
        parse_captions(json.dumps(GOOD, ensure_ascii=False), ocr_text=OCR, language="zh")
    with pytest.raises(Rejected, match="not English"):
        parse_captions(json.dumps(zh, ensure_ascii=False), ocr_text=OCR, language="en")


def test_ocr_answers_keep_the_original_language():
    assert parse_ocr("NONE") == "" and parse_ocr("None.") == "" and parse_ocr("无") == ""
    assert parse_ocr("```\n欢迎光临\nOPEN 24H\n```") == "欢迎光临\nOPEN 24H"
    assert parse_ocr('"EXIT"') == "EXIT"


def test_edit_instructions():
    assert parse_instruction("Instruction: Make the car blue.", language="en") == (
        "Make the car blue.")  # fmt: skip
    assert parse_instruction("把汽车改成蓝色。", language="zh") == "把汽车改成蓝色。"
    with pytest.raises(Rejected, match="longer than 40 words"):
        parse_instruction("Change " + "the colour and " * 20, language="en")
    with pytest.raises(Rejected, match="empty"):
        parse_instruction("  ", language="en")
