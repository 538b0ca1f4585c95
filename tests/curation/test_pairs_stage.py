"""``zfoundry pairs`` on real photos and videos: expert edits with every ordered pair (counts
per kind, which end is the sample and which is stored inline, targets that are the operation
applied to the source), rendered text pairs read back by OCR, video-frame pairs in a CLIP
cosine band, rejects with reasons, resume, the same pairs through ``zfoundry run`` locally and
on Ray (with difference captions from a served model); then ``select`` turns them into i2i
rows (caps per kind, Chinese instructions, the T2I:I2I ratio) that the trainer loads."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

from captioner.ocr import RapidOcrEngine
from curation.pairs.stage import ExpertPairs, ImagePairsStage, PairsConfig, TextPairs
from curation.profiling.decode import fit
from curation.select import PairSelection, Recipe, Sampling, select
from infra.config import ConfigError, from_dict
from infra.storage import RunDir
from pipelines.cli import app
from pipelines.executors import get_executor
from pipelines.steps import pairs as pairs_step
from tests.conftest import EXAMPLES
from tests.helpers import ingest_folders, profile, read_table
from trainer.config import DataConfig
from trainer.data import Manifest, StageData

COCO25 = sorted((EXAMPLES / "data" / "coco25").glob("*.jpg"))
N_PHOTOS, EDITS = 6, 2
CONFIG = PairsConfig(
    expert=ExpertPairs(fraction=1.0, edits=EDITS, editors=("flip", "rotate", "tint")),
    text=TextPairs(fraction=1.0, changes=("replace", "add", "recolour")),
    max_side=320,
)


def _jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)


def _edit(row: dict, op: dict) -> tuple[str, str]:
    """Which edit of which photo an operation names (its direction aside)."""
    return row["base_id"], json.dumps(op | {"inverse": None}, sort_keys=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Six real photos, a truncated JPEG and a 48x36 thumbnail."""
    out = tmp_path_factory.mktemp("pair_photos")
    for path in COCO25[:N_PHOTOS]:
        shutil.copy(path, out / path.name)
    data = COCO25[N_PHOTOS].read_bytes()
    (out / "cut.jpg").write_bytes(data[: len(data) // 3])
    Image.open(COCO25[N_PHOTOS]).resize((48, 36)).save(out / "thumb.jpg")
    return out


@pytest.fixture(scope="module")
def paired(photos, tmp_path_factory):
    run = ingest_folders(tmp_path_factory.mktemp("pairs") / "run", photos, rows_per_shard=3)
    profile(run)
    stats = pairs_step(run, CONFIG, get_executor("local", progress=False))
    return run, stats


def test_expert_text_counts_and_rejects(paired):
    run, stats = paired
    n = N_PHOTOS
    assert (stats["in"], stats["ok"], stats["rejected"], stats["skipped"]) == (n + 2, n, 2, 0)
    by_kind = stats["by_kind"]
    assert by_kind["expert"] == by_kind["inverse"] == n * EDITS
    assert by_kind["mixed"] == n * EDITS * (EDITS - 1)  # N(N+1) per photo in all
    mismatched = stats["reasons"].get("ocr_mismatch", 0)
    assert by_kind["text_render"] == n - mismatched and by_kind["text_render"] >= n - 1
    reasons = {
        (r["reason"]) for r in read_table(run, "rejects").to_pylist() if r["stage"] == "pairs"
    }
    assert {"truncated", "too_small"} <= reasons <= {"truncated", "too_small", "ocr_mismatch"}
    again = pairs_step(run, CONFIG, get_executor("local", progress=False))
    assert again["shards_run"] == 0 and again["by_kind"] == by_kind  # resumable


def test_each_end_is_the_sample_or_inline_and_targets_are_the_operation(paired):
    run, _ = paired
    rows = read_table(run, "edit_pairs").to_pylist()
    samples = {r["sample_id"]: r["image"] for r in read_table(run, "samples").to_pylist()}
    edits = {}  # edit name -> its bytes, from the expert pair that made it
    for r in rows:
        assert (r["source_id"] is None) != (r["source_image"] is None)
        assert (r["target_id"] is None) != (r["target_image"] is None)
        assert r["instruction"] and r["instruction_zh"] and r["base_id"] in samples
        ops = json.loads(r["operations"])
        if r["kind"] == "expert":
            assert r["source_id"] == r["base_id"] and len(ops) == 1 and not ops[0]["inverse"]
            (op,) = ops
            if op["op"] != "tint":  # the target is the operation applied to the source
                photo = fit(Image.open(io.BytesIO(samples[r["base_id"]])).convert("RGB"), 320)
                want = ImageOps.mirror(photo) if op["op"] == "flip" else photo.rotate(
                    -op["degrees_clockwise"], expand=True)  # fmt: skip
                diff = np.abs(np.asarray(want, np.float32) - _jpeg(r["target_image"]))
                assert diff.mean() < 8, (op, diff.mean())  # JPEG noise; a wrong op: > 30
            edits[_edit(r, ops[0])] = r["target_image"]
            assert (r["width"], r["height"]) == Image.open(io.BytesIO(r["target_image"])).size
    for r in rows:
        ops = json.loads(r["operations"])
        if r["kind"] == "inverse":  # back to the real photo, from the same edited bytes
            assert r["target_id"] == r["base_id"] and len(ops) == 1 and ops[0]["inverse"]
            assert r["source_image"] == edits[_edit(r, ops[0])]
        if r["kind"] == "mixed":
            assert [o["inverse"] for o in ops] == [True, False] and ", then " in r["instruction"]
            assert r["source_image"] == edits[_edit(r, ops[0])]
            assert r["target_image"] == edits[_edit(r, ops[1])]


def test_rendered_text_pairs_read_back(paired):
    run, _ = paired
    ocr = RapidOcrEngine()
    squash = lambda s: "".join(s.split()).upper()  # noqa: E731
    texts = [r for r in read_table(run, "edit_pairs").to_pylist() if r["kind"] == "text_render"]
    for r in texts:
        (op,) = json.loads(r["operations"])
        assert json.loads(r["provenance"])["verified"] is True
        if op["op"] == "text_add":
            assert r["source_id"] == r["base_id"] and r["source_image"] is None
        read = ocr.read(Image.open(io.BytesIO(r["target_image"]))).text
        assert squash(op["after"]["text"]) in squash(read), (r["instruction"], read)
        assert f'"{op["after"]["text"]}"' in r["instruction"] or op["op"] == "text_replace"


def test_ocr_mismatch_drops_the_pair_with_its_reason(photos):
    """On thumbnails a rendered word is often unreadable: those pairs go to rejects."""
    stage = ImagePairsStage(expert=ExpertPairs(fraction=0.0), min_side=16,
                            text=TextPairs(fraction=1.0, changes=("replace",)))  # fmt: skip
    stage.setup()
    images = []
    for path in COCO25[:8]:
        buf = io.BytesIO()
        Image.open(path).resize((32, 24)).save(buf, format="PNG")
        images.append(buf.getvalue())
    out = stage.process_batch(pa.table({"sample_id": [f"s{i}" for i in range(8)],
                                        "uri": [None] * 8, "image": images}))  # fmt: skip
    errors = [e for e in out.column("error").to_pylist() if e is not None]
    assert "ocr_mismatch" in errors and set(errors) <= {"ocr_mismatch", "edit_failed"}
    assert out.num_rows == 8  # every picked sample: a verified pair or a reject


def test_select_turns_pairs_into_i2i_rows_the_trainer_loads(paired, tmp_path):
    run, _ = paired
    samples = {r["sample_id"]: r for r in read_table(run, "samples").to_pylist()}
    excluded = sorted(samples)[0]
    recipe = Recipe(name="omni", where=(f"sample_id <> '{excluded}'",), sampling=Sampling(
        t2i_i2i_ratio=(1, 1), resolution_buckets=((64, 64),)),
        pairs=PairSelection(keep={"text_render": 0.0}, zh_fraction=1.0))  # fmt: skip
    manifest = select(run, recipe, str(tmp_path / "shards"))
    by_kind = manifest["totals"]["i2i_by_kind"]
    per_photo = EDITS * (EDITS + 1) // 1  # expert + inverse + mixed for N = 2
    assert "text_render" not in by_kind and sum(by_kind.values()) == (N_PHOTOS - 1) * per_photo
    shards = read_shards(tmp_path / "shards")
    i2i = [r for r in shards if r["task"] == "i2i"]
    assert all(excluded not in r["sample_id"] for r in i2i)  # pair ids, never the sample's
    pairs = {r["pair_id"]: r for r in read_table(run, "edit_pairs").to_pylist()}
    for r in i2i:
        p = pairs[r["sample_id"]]
        assert p["base_id"] != excluded and r["instruction"] == p["instruction_zh"]
        assert r["source_image"] == (p["source_image"] or samples[p["source_id"]]["image"])
        assert r["image"] == (p["target_image"] or samples[p["target_id"]]["image"])

    ratio = Recipe(name="ratio", sampling=Sampling(t2i_i2i_ratio=(2, 1)),
                   pairs=PairSelection(match_ratio=True))  # fmt: skip
    capped = select(run, ratio, str(tmp_path / "capped"))
    assert capped["totals"]["i2i"] == (N_PHOTOS + 1) // 2  # t2i: photos + thumbnail

    data = StageData(Manifest.load(str(tmp_path / "shards" / "manifest.json")),
                     DataConfig(t2i_i2i_ratio=(0, 1), caption_dropout=0.0), seed=0)  # fmt: skip
    examples, skipped = data.load(data.plan(0)[0])
    assert examples and not skipped
    for e in examples:
        assert e.task == "i2i" and e.source is not None and e.source.shape == e.image.shape
        assert not torch.equal(e.source, e.image) and any("\u4e00" <= c <= "\u9fff" for c in e.text)


def read_shards(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"expert": {"editors": ["sparkle"]}}, "editors"),
        ({"expert": {"edits": 4, "editors": ["flip", "tint"]}}, "edits"),
        ({"text": {"changes": ["shout"]}}, "changes"),
        ({"video": {"band": [0.9, 0.5]}}, "band"),
        ({"expert": {"model": "/nowhere"}}, "instructions"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"min_side": 2048}, "max_side"),
    ],
)
def test_bad_pairs_configs_name_the_field(data, key):
    with pytest.raises((ConfigError, ValueError), match=key):
        from_dict(PairsConfig, data, source="test")


def test_unknown_kind_in_a_recipe_names_the_field():
    with pytest.raises((ConfigError, ValueError), match="keep"):
        from_dict(Recipe, {"name": "x", "pairs": {"keep": {"selfie": 0.5}}}, source="test")


# -- video-frame pairs ------------------------------------------------------------------------
F = 12  # frames per shot
CUT = ("000000099053", "000000126107")  # colours the tiny random CLIP tells apart
PIPELINE = """
steps = ["ingest", "profile", "pairs", "select"]
[executor]
kind = "local"
progress = false
[ingest]
rows_per_shard = 4
[[ingest.sources]]
path = "photos"
name = "photos"
[pairs]
expert = { fraction = 1.0, edits = 1, editors = ["flip"] }
text = { fraction = 0.5, changes = ["replace", "move"] }
[pairs.video]
videos = "videos"
frames_per_clip = 16
band = [0.985, 0.9995]   # the tiny CLIP's scale (tests/curation/test_video.py)
max_pairs_per_clip = 6
model = "zf-tiny-clip"
[select]
recipe = "recipe.toml"
"""


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A clip with shots of photo A (still, pan, zoom) then a cut to B (still); a still clip;
    a pan as a folder of frames; a file of random bytes named .mp4; a text file."""
    from tests.curation.videos import Segment, write_frames, write_video

    out = tmp_path_factory.mktemp("videos")
    a, b = (Image.open(EXAMPLES / "data" / "coco25" / f"{n}.jpg") for n in CUT)
    shots = [Segment(a, m, F) for m in ("static", "pan", "zoom")] + [Segment(b, "static", F)]
    write_video(out / "shots.mp4", shots)
    write_video(out / "still.mp4", [Segment(b, "static", F)])
    write_frames(out / "walk", [Segment(a, "pan", F)])
    (out / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (out / "notes.txt").write_text("not a clip")
    return out


def _pipeline(folder: Path, photos: Path, videos: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "photos").symlink_to(photos)
    (folder / "videos").symlink_to(videos)
    (folder / "recipe.toml").write_text('name = "omni"\n[sampling]\nt2i_i2i_ratio = [1, 1]\n')
    (folder / "pipeline.toml").write_text(PIPELINE)
    return folder / "pipeline.toml"


def _video_rows(run) -> dict[tuple[str, int, int], dict]:
    clips = {r["clip_id"]: Path(r["uri"]).name for r in read_table(run, "clips").to_pylist()}
    rows = [r for r in read_table(run, "edit_pairs").to_pylist() if r["kind"] == "video"]
    return {(clips[r["base_id"]], *json.loads(r["provenance"])["frames"]): r for r in rows}


def test_all_pairs_through_zfoundry_run_then_on_ray_with_difference_captions(
    photos, videos, tmp_path, ray_local
):
    from tests.captioner.openai_server import ReplayVLM, serve

    pipeline = _pipeline(tmp_path / "local", photos, videos)
    result = CliRunner().invoke(app, ["run", str(pipeline), "--run", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    run = RunDir(tmp_path / "run")
    stats = json.loads((tmp_path / "run" / "stats" / "video_pairs.json").read_text())
    assert (stats["in"], stats["ok"], stats["rejected"]) == (4, 2, 2)
    assert stats["reasons"] == {"no_pair_in_band": 1, "unreadable": 1}  # still; random bytes
    rows = _video_rows(run)
    assert {clip for clip, _, _ in rows} == {"shots.mp4", "walk"}
    for (clip, i, j), r in rows.items():
        assert i < j and r["instruction"] is None and r["source_image"] and r["target_image"]
        assert (r["width"], r["height"]) == (160, 120) and r["source_id"] is None
        if clip == "shots.mp4":  # never across the cut, nor two frames of a still shot
            assert F <= j < 3 * F, (i, j)
    assert max(Counter(c for c, _, _ in rows).values()) <= 6  # max_pairs_per_clip
    manifest = json.loads((tmp_path / "run" / "shards" / "manifest.json").read_text())
    assert "video" not in manifest["totals"]["i2i_by_kind"]  # no instruction: not selected
    assert manifest["totals"]["i2i_by_kind"]["expert"] == N_PHOTOS

    shutil.copytree(tmp_path / "run", tmp_path / "ray-run")  # the pairs again, with a backend
    shutil.rmtree(tmp_path / "ray-run" / "edit_pairs")
    vlm = ReplayVLM(broken_alt="")
    with serve(vlm) as url:
        backend = ["--set", 'backend.kind="http"', "--set", f'backend.url="{url}"',
                   "--set", 'backend.model="replay-vlm"']  # fmt: skip
        result = CliRunner().invoke(app, ["pairs", str(tmp_path / "ray-run"), "--executor", "ray",
                                          "--config", str(pipeline), *backend])  # fmt: skip
    assert result.exit_code == 0, result.output
    recipe = Recipe(name="omni", sampling=Sampling(t2i_i2i_ratio=(1, 1)))
    manifest = select(RunDir(tmp_path / "ray-run"), recipe, str(tmp_path / "ray-shards"))
    ray_run = RunDir(tmp_path / "ray-run")
    images = lambda r: sorted(  # noqa: E731
        (p["pair_id"], p["source_image"], p["target_image"], p["instruction"])
        for p in read_table(r, "edit_pairs").to_pylist() if p["kind"] != "video")  # fmt: skip
    assert images(ray_run) == images(run)  # expert and text pairs: identical on Ray
    captioned = _video_rows(ray_run)
    assert captioned.keys() == rows.keys()  # the same frames kept on Ray
    for key, r in captioned.items():
        assert r["instruction"] == "Add a sign reading OPEN and remove the plates."
        assert r["instruction_zh"] == "添加写着OPEN的牌子，并移除盘子。"  # difference_zh
        assert r["source_image"] == rows[key]["source_image"]
        assert json.loads(r["provenance"])["difference_caption"]["model"] == "replay-vlm"
    assert manifest["totals"]["i2i_by_kind"]["video"] == len(captioned)


# -- the expert-model slot ----------------------------------------------------------------------
def test_a_diffusers_editing_model_edits_and_its_inverse_gets_a_difference_caption(tmp_path):
    """A tiny random InstructPix2Pix pipeline as one of N = 2 edits (the other a flip): pairs
    whose steps include undoing the model's edit have no composed instruction; without a
    backend they stay null, with one they get the three-step difference caption."""
    from captioner.backends import BackendConfig
    from tests.captioner.openai_server import ReplayVLM, serve
    from tests.curation.tiny_editor import INSTRUCTIONS, save_tiny_instruct_pix2pix

    model = save_tiny_instruct_pix2pix(tmp_path / "p2p")
    buf = io.BytesIO()
    Image.open(COCO25[0]).resize((96, 64)).save(buf, format="PNG")
    batch = pa.table({"sample_id": ["s0"], "uri": [None], "image": [buf.getvalue()]})
    expert = ExpertPairs(fraction=1.0, edits=2, editors=("flip",), model=str(model),
                         instructions=INSTRUCTIONS[:1], steps=2)  # fmt: skip
    stage = ImagePairsStage(expert=expert, text=TextPairs(fraction=0.0), min_side=32)
    stage.setup()
    rows = {(r["kind"], json.dumps([o["op"] for o in json.loads(r["operations"])])): r
            for r in stage.process_batch(batch).to_pylist()}  # fmt: skip
    assert len(rows) == 6 and all(r["error"] is None for r in rows.values())
    edit = rows["expert", '["expert_model"]']
    assert edit["instruction"] == "Make it snow." and edit["instruction_zh"] is None
    out = np.asarray(Image.open(io.BytesIO(edit["target_image"])))
    assert out.shape == (64, 96, 3) and out.std() > 0  # the model's (random) edit, resized
    unknown = {k for k, r in rows.items() if r["instruction"] is None}
    assert unknown == {("inverse", '["expert_model"]'), ("mixed", '["expert_model", "flip"]')}
    assert rows["mixed", '["flip", "expert_model"]']["instruction"] == (
        "Flip the image horizontally, then make it snow.")  # fmt: skip

    with serve(ReplayVLM(broken_alt="")) as url:
        backend = BackendConfig(kind="http", url=url, model="replay-vlm")
        captioned = ImagePairsStage(expert=expert, text=TextPairs(fraction=0.0), min_side=32,
                                    backend=backend)  # fmt: skip
        captioned.setup()
        again = captioned.process_batch(batch).to_pylist()
    got = {r["pair_id"]: r["instruction"] for r in again}
    zh = {r["pair_id"]: r["instruction_zh"] for r in again}
    for key in unknown:
        assert got[rows[key]["pair_id"]] == "Add a sign reading OPEN and remove the plates."
        assert zh[rows[key]["pair_id"]] == "添加写着OPEN的牌子，并移除盘子。"
    assert sum(v == "Add a sign reading OPEN and remove the plates." for v in got.values()) == 2
