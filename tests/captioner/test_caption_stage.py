"""``zfoundry caption``: OCR-first captions on real photos with rendered text, through the
tiny random VLM (every answer rejected, with the reason) and through the HTTP client against a
local server that replays answers in the documented format (accepted, stored, selected into
shards), on both executors; plus difference captions."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from captioner.backends import BackendConfig, BackendError
from captioner.programs import DiffCaption, Rejected, difference_captions, load_prompts
from captioner.stage import CaptionStage
from curation.text_render import render_text
from infra.config import ConfigError, from_dict
from infra.fonts import find_font
from infra.tables import CAPTION_COLUMNS
from pipelines.cli import app
from pipelines.executors import get_executor
from tests.captioner.openai_server import ReplayVLM
from tests.conftest import EXAMPLES
from tests.helpers import by_key, ingest_folders, profile, read_table

# (photo in examples/data/coco25, rendered text or None, script)
PHOTOS = [
    ("000000062554", "OPEN DAILY 9AM", "latin"),
    ("000000099053", "欢迎光临", "cjk"),
    ("000000126107", "Fresh Coffee", "latin"),
]
COCO25 = EXAMPLES / "data" / "coco25"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three real photos with text drawn on them (+ their caption/meta sidecars), a plain
    photo, and a truncated JPEG."""
    out = tmp_path_factory.mktemp("text_photos")
    for stem, text, script in PHOTOS:
        image = Image.open(COCO25 / f"{stem}.jpg")
        font = find_font(script)
        drawn, _ = render_text(
            image, text, font=font, size=40, position=(24, 24), background=(255, 255, 255)
        )
        drawn.save(out / f"{stem}.jpg", quality=92)
        for ext in ("txt", "json"):
            shutil.copy(COCO25 / f"{stem}.{ext}", out / f"{stem}.{ext}")
    plain = sorted(COCO25.glob("*.jpg"))[5]
    shutil.copy(plain, out / "plain.jpg")
    data = plain.read_bytes()
    (out / "cut.jpg").write_bytes(data[: len(data) // 3])
    return out


def _run(tmp_path: Path, photos: Path):
    return ingest_folders(tmp_path / "run", photos, rows_per_shard=3)


def test_ocr_first_pass_reads_the_rendered_text_and_rejects_the_broken_file(photos, tmp_path):
    run = _run(tmp_path, photos)
    stats = get_executor("local", progress=False).run_stage(CaptionStage(), run)
    assert (stats["in"], stats["rejected"], stats["shards"]) == (5, 1, 2)
    rows = by_key(run, "captions")
    for stem, text, _ in PHOTOS:
        assert text in rows[f"{stem}.jpg"]["ocr_text"], rows[f"{stem}.jpg"]
        assert rows[f"{stem}.jpg"]["ocr_engine"].startswith("rapidocr")
    assert rows["cut.jpg"]["error"] == "truncated" and rows["cut.jpg"]["ocr_text"] is None
    for row in rows.values():  # OCR only: no captions, no model, nothing invented
        assert all(row[c] is None for c in CAPTION_COLUMNS) and row["model"] is None
    rejects = read_table(run, "rejects").to_pylist()
    assert [(r["stage"], r["reason"]) for r in rejects] == [("caption", "truncated")]
    again = get_executor("local", progress=False).run_stage(CaptionStage(), run)
    assert again["shards_run"] == 0 and again["shards_skipped"] == 2  # resumable, idempotent


def test_a_bad_caption_config_fails_at_load_time_naming_the_field():
    with pytest.raises(ConfigError, match=r"ocr.*needs a \[caption.backend\]"):
        from_dict(CaptionStage, {"ocr": "vlm"})
    with pytest.raises(ConfigError, match="zh_fraction"):
        from_dict(CaptionStage, {"zh_fraction": 2})
    with pytest.raises(ConfigError, match="prompt_version"):
        from_dict(CaptionStage, {"prompt_version": "v99"})
    with pytest.raises(ConfigError, match=r"backend\.url"):
        from_dict(CaptionStage, {"backend": {"kind": "http", "model": "m"}})
    res = CliRunner().invoke(app, ["caption", "nowhere", "--url", "http://x:1/v1"])
    assert res.exit_code == 2 and "--url needs --model" in res.output


# -- the tiny random VLM: real loading and generation, nonsense answers ----------------------
@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    from tests.captioner.tiny_vlm import save_tiny_vlm

    return save_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))


def test_tiny_vlm_answers_are_rejected_with_reasons_never_stored(photos, tiny_vlm, tmp_path):
    run = _run(tmp_path, photos)
    res = CliRunner().invoke(
        app,
        ["caption", str(run.root), "--executor", "local", "--model", str(tiny_vlm), "--ocr",
         "vlm", "--set", "max_new_tokens=24", "--set", "ocr_max_new_tokens=12", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    assert stats["in"] == 5 and stats["rejected"] == 5 and stats["ok"] == 0
    rows = by_key(run, "captions")
    reasons = {r["sample_id"]: r for r in read_table(run, "rejects").to_pylist()}
    for key, row in rows.items():
        assert all(row[c] is None for c in CAPTION_COLUMNS), row
        assert row["ocr_text"] is None  # the VLM's own transcript is not trusted either
        assert row["model"] == str(tiny_vlm)
        reject = reasons[row["sample_id"]]
        if key == "cut.jpg":
            assert reject["reason"] == "truncated"
        else:
            assert reject["reason"] in {"caption_rejected", "ocr_rejected"}
            assert reject["detail"]  # says which check failed


# -- a served model replaying well-formed answers ------------------------------------------
def test_served_vlm_captions_are_parsed_stored_and_selected_on_ray(photos, tmp_path, ray_local):
    from knowledge_graph.build import write_graph
    from knowledge_graph.sampling import WeightsConfig, weights_step
    from tests.captioner.openai_server import serve

    run = _run(tmp_path, photos)
    titles = ["Broccoli", "Pizza", "Table (furniture)", "Giraffe", "Dog", "Person"]
    write_graph(tmp_path / "kg", titles, [0, 1], [1, 2])
    weights_step(run, WeightsConfig(kg=str(tmp_path / "kg")))
    concepts = {
        r["sample_id"]: {titles[c] for c in r["concepts"]}
        for r in read_table(run, "weights").to_pylist()
    }
    alts = {k: r["caption_alt"] for k, r in by_key(run, "samples").items()}
    broken = alts["000000126107.jpg"]
    vlm = ReplayVLM(broken_alt=broken)
    with serve(vlm, fail_first=2) as url:  # the first two requests answer 503: retried
        res = CliRunner().invoke(
            app,
            ["caption", str(run.root), "--executor", "ray", "--url", url, "--model", "replay-vlm",
             "--set", "zh_fraction=0.5", "--set", "backend.batch_size=2", "--json"],
        )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert url.stats.failed == 2 and url.stats.ok == 4  # retried; one request per good image
    stats = json.loads(res.stdout)
    assert (stats["executor"], stats["in"], stats["ok"], stats["rejected"]) == ("ray", 5, 3, 2)
    rows = by_key(run, "captions")
    langs = {rows[k]["caption_lang"] for k in ("000000062554.jpg", "000000099053.jpg", "plain.jpg")}
    assert langs == {"en", "zh"}  # zh_fraction = 0.5 over these ids gives both languages
    for key in ("000000062554.jpg", "000000099053.jpg"):
        row = rows[key]
        assert row["error"] is None and row["prompt_version"] == load_prompts().version
        assert row["ocr_text"] in row["caption_long"]  # OCR first: the caption quotes it
        if row["caption_lang"] == "en":
            assert row["caption_tags"] == "food, table, plates"
            assert row["caption_medium"] == alts[key]
        else:
            assert row["caption_short"] == "食物" and row["caption_tags"] == "食物, 桌子"
    rejects = {r["sample_id"]: r for r in read_table(run, "rejects").to_pylist()}
    bad = rows["000000126107.jpg"]
    assert bad["caption_long"] is None and bad["error"] == "caption_rejected"
    assert rejects[bad["sample_id"]]["detail"] == "no JSON object in the answer"
    assert "Fresh Coffee" in bad["ocr_text"]  # RapidOCR's transcript stays
    # world knowledge reached the prompts: alt text, and the concepts weights/ matched
    for sid, names in concepts.items():
        if names and sid in {r["sample_id"] for r in rows.values()}:
            key = next(k for k, r in rows.items() if r["sample_id"] == sid)
            prompt = next(p for p in vlm.prompts if f"Alt text: {alts[key]}" in p)
            line = re.search(r"Knowledge-graph concepts: (.*)\n", prompt).group(1)
            assert set(line.split(", ")) == names
    assert any("Knowledge-graph concepts:" in p for p in vlm.prompts)

    # select copies the accepted captions into shards; rejected rows keep only caption_alt
    profile(run)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('name = "sft"\n[sampling]\ncaption_probs = {caption_long = 1.0}\n')
    res = CliRunner().invoke(
        app, ["select", str(run.root), "--recipe", str(recipe), "--out", str(tmp_path / "sh")]
    )
    assert res.exit_code == 0, res.output
    shard = pq.read_table(tmp_path / "sh" / "00000.parquet").to_pylist()
    by_id = {r["sample_id"]: r for r in shard}
    for row in rows.values():
        if row["error"] is None:
            assert {c: by_id[row["sample_id"]][c] for c in CAPTION_COLUMNS} == {
                c: row[c] for c in CAPTION_COLUMNS
            }
    assert by_id[bad["sample_id"]]["caption_long"] is None
    assert by_id[bad["sample_id"]]["caption_alt"] == broken
    # the trainer trains on them by caption_probs, and on caption_alt where none was accepted
    from trainer.config import DataConfig
    from trainer.data import Manifest, StageData

    manifest = Manifest.load(str(tmp_path / "sh" / "manifest.json"))
    data = StageData(manifest, DataConfig(caption_dropout=0, metadata_caption_prob=0), seed=0)
    drawn = {e.sample_id: (e.text, e.text_kind) for s in data.plan(0) for e in data.load(s)[0]}
    assert bad["sample_id"] in by_id and len(drawn) >= 2
    for sid, got in drawn.items():
        long = by_id[sid]["caption_long"]
        assert got == (
            (long, "caption_long") if long else (by_id[sid]["caption_alt"], "caption_alt")
        )


def test_difference_captions_three_steps(photos):
    a = (photos / "000000062554.jpg").read_bytes()
    b = (photos / "plain.jpg").read_bytes()
    vlm = ReplayVLM(broken_alt="")
    en, zh = (difference_captions(vlm, [(a, b)], language=lang)[0] for lang in ("en", "zh"))
    assert isinstance(en, DiffCaption) and isinstance(zh, DiffCaption)
    assert en.edit_instruction == "Add a sign reading OPEN and remove the plates."
    assert zh.edit_instruction == "添加写着OPEN的牌子，并移除盘子。"
    assert en.differences == "a sign reading OPEN was added\nthe plates were removed"
    assert en.caption_source.startswith("A photo of a table")
    first = [p.split("\n")[0] for p in vlm.prompts[:4]]  # the English pair's four prompts
    assert [f.split()[0] for f in first] == ["Describe", "Describe", "Two", "Differences"]


def test_difference_captions_also_in_chinese_keep_english_when_the_chinese_fails(photos):
    class EnglishOnly(ReplayVLM):  # answers the Chinese instruction prompt in English
        def _answer(self, prompt: str) -> str:
            if prompt.startswith("Differences between") and "Simplified Chinese" in prompt:
                return "Add a sign."
            return super()._answer(prompt)

    pair = ((photos / "000000062554.jpg").read_bytes(), (photos / "plain.jpg").read_bytes())
    vlm = ReplayVLM(broken_alt="")
    both = difference_captions(vlm, [pair, pair], also=("zh",))
    assert len(vlm.prompts) == 2 * 5  # describe x2, analyse, instruct, instruct in Chinese
    for got in both:
        assert got.edit_instruction == "Add a sign reading OPEN and remove the plates."
        assert got.translations == {"zh": "添加写着OPEN的牌子，并移除盘子。"}
    (half,) = difference_captions(EnglishOnly(broken_alt=""), [pair], also=("zh",))
    assert half.edit_instruction == "Add a sign reading OPEN and remove the plates."
    assert half.translations == {} and "not Chinese" in half.translation_errors["zh"]
    with pytest.raises(ValueError, match="'fr'"):
        difference_captions(vlm, [pair], also=("fr",))


def test_difference_captions_from_the_tiny_vlm_fail_validation(photos, tiny_vlm):
    from captioner.vlm import VisionTransformersBackend

    backend = VisionTransformersBackend(str(tiny_vlm))
    a = (photos / "000000062554.jpg").read_bytes()
    b = (photos / "plain.jpg").read_bytes()
    broken = io.BytesIO(b"not an image").getvalue()
    out = difference_captions(backend, [(a, b), (a, broken)], max_new_tokens=16)
    assert isinstance(out[0], Rejected), out[0]  # random weights: never a JSON list
    assert str(out[0]).split(":")[0] in {"describe", "analyse"}
    assert isinstance(out[1], BackendError)  # the undecodable image: a per-pair error


def test_backend_config_for_a_served_model_is_typed():
    cfg = from_dict(
        CaptionStage, {"backend": {"kind": "http", "model": "Qwen/Qwen2.5-VL-7B-Instruct",
                                   "url": "http://localhost:8000/v1"}},
    )  # fmt: skip
    assert isinstance(cfg.backend, BackendConfig) and cfg.backend.kind == "http"
