"""Caption programs: versioned prompt files and the parsing and validation of the answers.

Prompts live in ``captioner/prompts/<version>/`` as plain text files with ``{placeholders}``
(``str.format``): ``ocr`` (transcribe all visible text, untranslated), ``captions`` (the five
caption types as one JSON object, conditioned on the OCR transcript and on world-knowledge
context), ``diff_describe`` / ``diff_analyse`` / ``diff_instruct`` (the three steps of a
difference caption, run by :func:`difference_captions`). ``prompt_version`` is
``<version>-<sha256 of the files, 8 hex>``, so editing a prompt without bumping the folder
still changes the recorded version.

Answers are parsed into typed fields and validated; what cannot be repaired safely raises
``Rejected`` with a short reason (the caller keeps the row's alt caption and writes a
rejects entry) -- a caption column never receives unparsed model output. Safe repairs: a
JSON object wrapped in prose or a code fence, trailing commas, key spelling (``Caption
Long``, ``long``), tags given as one comma-separated string, surrounding quotes or a
``Instruction:`` label. Anything else -- missing or empty fields, a short caption longer than
the long one, the long caption leaving out transcribed text, text in the wrong script,
degenerate repetition -- is a rejection.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from infra.tables import CAPTION_COLUMNS

PROMPTS = Path(__file__).parent / "prompts"
PROMPT_NAMES = ("ocr", "captions", "diff_describe", "diff_analyse", "diff_instruct")
LANGUAGES = {"en": "English", "zh": "Simplified Chinese"}
CAPTION_FIELDS = CAPTION_COLUMNS
_ALIASES = {
    "long": "caption_long",
    "medium": "caption_medium",
    "short": "caption_short",
    "tags": "caption_tags",
    "user_prompt": "caption_user_prompt",
    "prompt": "caption_user_prompt",
}
_NO_TEXT = {"none", "no text", "n/a", "无", "没有", "没有文字"}
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


class Rejected(ValueError):
    """An answer that cannot be used; ``str(err)`` is the rejects table's reason."""


@dataclass(frozen=True)
class Prompts:
    """One version of the prompt files."""

    version: str  # e.g. "v1-3fa2b9c0"
    texts: dict[str, str]

    def render(self, name: str, **values: str) -> str:
        return self.texts[name].format(**values)


@cache
def load_prompts(version: str = "v1") -> Prompts:
    folder = PROMPTS / version
    if not folder.is_dir():
        known = sorted(p.name for p in PROMPTS.iterdir() if p.is_dir())
        raise ValueError(f"prompt version {version!r} not found; have {known}")
    texts = {name: (folder / f"{name}.txt").read_text(encoding="utf-8") for name in PROMPT_NAMES}
    digest = hashlib.sha256("\0".join(texts[n] for n in PROMPT_NAMES).encode()).hexdigest()
    return Prompts(f"{version}-{digest[:8]}", texts)


def caption_prompt(prompts: Prompts, ocr_text: str, language: str, context: dict[str, str]) -> str:
    """The caption prompt for one image: its OCR transcript and world-knowledge context (alt
    text, page title, knowledge-graph concepts: ``{label: value}``, empty values dropped)."""
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r}: one of {sorted(LANGUAGES)}")
    lines = [f"{k}: {v}" for k, v in context.items() if v and str(v).strip()]
    known = ("Known about this image (use it to name people, places, works and products):\n"
             + "\n".join(lines)) if lines else ""  # fmt: skip
    return prompts.render("captions", context=known, ocr_text=ocr_text or "(none)",
                          language=LANGUAGES[language])  # fmt: skip


# -- answers -------------------------------------------------------------------------------
def parse_ocr(answer: str) -> str:
    """The transcript ("" when the model says there is no text)."""
    text = _unfence(answer).strip().strip('"“”').strip()
    if text.lower().rstrip(".") in _NO_TEXT:
        return ""
    _check_degenerate(text, "ocr_text")
    return text


@dataclass(frozen=True)
class CaptionSet:
    caption_long: str
    caption_medium: str
    caption_short: str
    caption_tags: str  # comma-separated, as the shards store it
    caption_user_prompt: str
    ocr_text: str
    caption_lang: str


def parse_captions(answer: str, *, ocr_text: str, language: str) -> CaptionSet:
    """The five captions from a ``captions`` answer, validated (see the module docstring)."""
    data = _json_value(answer, dict, missing="no JSON object in the answer")
    fields: dict[str, object] = {}
    for key, value in data.items():
        name = re.sub(r"[^a-z]+", "_", str(key).lower()).strip("_")
        name = _ALIASES.get(name, name)
        if name in CAPTION_FIELDS:
            fields[name] = value
    missing = [f for f in CAPTION_FIELDS if f not in fields]
    if missing:
        raise Rejected(f"missing {', '.join(missing)}")
    tags = fields["caption_tags"]
    if isinstance(tags, str):
        tags = [t for t in re.split(r"[,，;\n]", tags)]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise Rejected("caption_tags is not a list of strings")
    tags = [t.strip() for t in tags if t.strip()]
    out = {"caption_tags": ", ".join(dict.fromkeys(tags))}
    for name in ("caption_long", "caption_medium", "caption_short", "caption_user_prompt"):
        value = fields[name]
        if not isinstance(value, str) or not value.strip():
            raise Rejected(f"{name} is empty or not text")
        out[name] = " ".join(value.split())
    if not tags:
        raise Rejected("caption_tags is empty")
    for name, value in out.items():
        _check_degenerate(value, name)
        _check_script(value, name, language)
    if _size(out["caption_short"]) > _size(out["caption_long"]):
        raise Rejected("caption_short is longer than caption_long")
    for line in filter(None, (x.strip() for x in ocr_text.splitlines())):
        if _squash(line) not in _squash(out["caption_long"]):
            raise Rejected(f"caption_long leaves out the transcribed text {line[:40]!r}")
    return CaptionSet(**out, ocr_text=ocr_text, caption_lang=language)


def parse_instruction(answer: str, *, language: str, max_words: int = 40) -> str:
    """A difference caption's editing instruction: one sentence, labels and quotes removed."""
    text = _unfence(answer).strip()
    text = re.sub(r"^(edit(ing)?\s+)?instruction\s*[:：]\s*", "", text, flags=re.I)
    text = " ".join(text.split()).strip("\"“”'")
    if not text:
        raise Rejected("edit_instruction is empty")
    _check_degenerate(text, "edit_instruction")
    _check_script(text, "edit_instruction", language)
    if _size(text) > max_words:
        raise Rejected(f"edit_instruction is longer than {max_words} words")
    return text


def parse_description(answer: str, name: str = "caption") -> str:
    """A free-text description (difference captions' step 1): one paragraph, not empty, not
    looping."""
    text = " ".join(_unfence(answer).split()).strip("\"“”'")
    if len(text) < 3:
        raise Rejected(f"{name} is empty")
    _check_degenerate(text, name)
    return text


def parse_differences(answer: str) -> str:
    """The difference list (step 2), asked for as a JSON array of strings: returned one
    difference per line. A fence, prose around the array and trailing commas are repaired."""
    items = _json_value(answer, list, missing="no JSON list of differences in the answer")
    if not all(isinstance(x, str) for x in items):
        raise Rejected("the differences are not a JSON list of strings")
    lines = [" ".join(x.split()) for x in items if x.strip()]
    if not lines:
        raise Rejected("no differences listed")
    text = "\n".join(lines)
    _check_degenerate(text, "differences")
    return text


# -- difference captions ---------------------------------------------------------------------
@dataclass(frozen=True)
class DiffCaption:
    """The three steps of a difference caption for one (source, target) image pair."""

    caption_source: str
    caption_target: str
    differences: str
    edit_instruction: str
    language: str
    prompt_version: str
    translations: dict[str, str] = field(default_factory=dict)
    """The instruction in each of ``also``'s languages whose answer passed validation."""
    translation_errors: dict[str, str] = field(default_factory=dict)
    """Why the others have none (the answer failed validation, or the backend's error)."""


def difference_captions(
    backend: Any,
    pairs: Sequence[tuple[bytes, bytes]],
    *,
    prompts: Prompts | None = None,
    language: str = "en",
    also: Sequence[str] = (),
    max_new_tokens: int = 384,
) -> list[DiffCaption | Exception]:
    """Difference captions for image pairs (the report's three steps), batched per step:

    1. a detailed caption of each image (``diff_describe``, one image per prompt);
    2. a difference analysis from both images and both captions (``diff_analyse``);
    3. a concise editing instruction from the differences (``diff_instruct``, text only), in
       ``language`` and then in each of ``also`` (one more text-only prompt per language).

    One entry per pair: a :class:`DiffCaption`, or the exception that stopped it -- a
    :class:`Rejected` (its reason says which step's answer failed validation) or the
    backend's per-row error. Pairs that fail a step are not asked the next one. An ``also``
    language whose answer fails leaves the pair its ``language`` instruction (the reason is in
    ``translation_errors``)."""
    for lang in (language, *also):
        if lang not in LANGUAGES:
            raise ValueError(f"language {lang!r}: one of {sorted(LANGUAGES)}")
    prompts = prompts or load_prompts()
    out: list[DiffCaption | Exception | None] = [None] * len(pairs)
    # keys are (pair, ...): a pair's first failure is kept and stops its later steps

    def ask(keys: list[tuple], texts: list[str], images: list[Any] | None) -> dict[tuple, str]:
        answers = backend.generate(
            texts, images=images, max_new_tokens=max_new_tokens, return_errors=True
        ) if keys else []  # fmt: skip
        got = {}
        for key, answer in zip(keys, answers, strict=True):
            if out[key[0]] is None and isinstance(answer, BaseException):
                out[key[0]] = answer if isinstance(answer, Exception) else RuntimeError(answer)
            elif out[key[0]] is None:
                got[key] = answer
        return got

    def parsed(answers: dict[tuple, str], parse: Any, step: str) -> dict[tuple, str]:
        ok = {}
        for key, answer in answers.items():
            if out[key[0]] is not None:
                continue
            try:
                ok[key] = parse(answer, key)
            except Rejected as err:
                out[key[0]] = Rejected(f"{step}: {err}")
        return ok

    # step 1: source captions and target captions in one batch
    sides = [(i, side) for i in range(len(pairs)) for side in (0, 1)]
    describe = [prompts.render("diff_describe")] * len(sides)
    captions = parsed(
        ask(sides, describe, [pairs[i][side] for i, side in sides]),
        lambda a, key: parse_description(a, ("source", "target")[key[1]] + " caption"),
        "describe",
    )
    # step 2: differences, from both images and both captions
    rows = [(i,) for i in range(len(pairs)) if out[i] is None]
    texts = [
        prompts.render("diff_analyse", caption_a=captions[i, 0], caption_b=captions[i, 1])
        for (i,) in rows
    ]
    diffs = parsed(
        ask(rows, texts, [list(pairs[i]) for (i,) in rows]),
        lambda a, _: parse_differences(a),
        "analyse",
    )
    # step 3: the instruction, from the differences alone
    rows = sorted(diffs)
    texts = [
        prompts.render("diff_instruct", differences=diffs[key], language=LANGUAGES[language])
        for key in rows
    ]
    instructions = parsed(
        ask(rows, texts, None),
        lambda a, _: parse_instruction(a, language=language),
        "instruct",
    )
    # step 3 again in the other languages, for the pairs that have an instruction
    keys = [(i, lang) for lang in also for (i,) in sorted(instructions)]
    texts = [prompts.render("diff_instruct", differences=diffs[(i,)], language=LANGUAGES[lang])
             for i, lang in keys]  # fmt: skip
    answers = backend.generate(texts, images=None, max_new_tokens=max_new_tokens,
                               return_errors=True) if keys else []  # fmt: skip
    translated: dict[int, dict[str, str]] = {}
    errors: dict[int, dict[str, str]] = {}
    for (i, lang), answer in zip(keys, answers, strict=True):
        try:
            if isinstance(answer, BaseException):
                raise Rejected(f"backend: {answer}")
            translated.setdefault(i, {})[lang] = parse_instruction(answer, language=lang)
        except Rejected as err:
            errors.setdefault(i, {})[lang] = f"instruct: {err}"
    for (i,), instruction in instructions.items():
        out[i] = DiffCaption(
            captions[i, 0], captions[i, 1], diffs[(i,)], instruction, language, prompts.version,
            translated.get(i, {}), errors.get(i, {}),
        )  # fmt: skip
    return [o if o is not None else RuntimeError("no result") for o in out]


# -- helpers -------------------------------------------------------------------------------
def _unfence(text: str) -> str:
    match = re.search(r"```[a-zA-Z]*\s*\n?(.*?)```", text, flags=re.S)
    return match.group(1) if match else text


def _json_value(answer: str, kind: type, *, missing: str) -> Any:
    """The outermost JSON object (``kind=dict``) or array (``list``) in ``answer``, after the
    safe repairs (code fence, prose around it, trailing commas); ``missing`` is the reason
    when there is none."""
    text = _unfence(answer)
    opening, closing = "{}" if kind is dict else "[]"
    start, end = text.find(opening), text.rfind(closing)
    if start < 0 or end <= start:
        raise Rejected(missing)
    body = text[start : end + 1]
    for candidate in (body, re.sub(r",\s*([}\]])", r"\1", body)):  # trailing commas
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(data, kind):
            return data
    raise Rejected("the answer's JSON does not parse")


def _size(text: str) -> int:
    """Words, counting each CJK character as one."""
    return len(_CJK.findall(text)) + len(_CJK.sub(" ", text).split())


def _squash(text: str) -> str:
    return re.sub(r"\W+", "", text.lower())


def _check_script(text: str, name: str, language: str) -> None:
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    if language == "zh" and cjk == 0:
        raise Rejected(f"{name} is not Chinese")
    if language == "en" and cjk > latin:
        raise Rejected(f"{name} is not English")


def _check_degenerate(text: str, name: str) -> None:
    """Looping output: one word (or character, for CJK) is most of a long text."""
    tokens = _CJK.findall(text) + _CJK.sub(" ", text).lower().split()
    if len(tokens) >= 8:
        top = max(tokens.count(t) for t in set(tokens))
        if top / len(tokens) > 0.5:
            raise Rejected(f"{name} repeats itself")
