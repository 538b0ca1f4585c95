"""Video-frame pairs: clips found, frames sampled evenly from real videos and frame folders,
damaged files turned into specific ClipErrors, the cosine band, and (tiny CLIP) the order
static > same-shot neighbours > across a cut that the band relies on."""

from __future__ import annotations

import hashlib
import random
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.pairs.video import Clip, ClipError, band_pairs, list_clips, sample_frames
from tests.conftest import EXAMPLES
from tests.curation.videos import MOTIONS, Segment, render, write_frames, write_video

PHOTOS = sorted((EXAMPLES / "data" / "coco25").glob("*.jpg"))
FPS = 8


def photo(name: str) -> Image.Image:
    return Image.open(EXAMPLES / "data" / "coco25" / f"{name}.jpg")


@pytest.fixture(scope="module")
def segments() -> list[Segment]:
    a, b = Image.open(PHOTOS[0]), Image.open(PHOTOS[1])
    return [Segment(a, "static", 8), Segment(a, "pan", 16), Segment(b, "zoom", 16)]


@pytest.fixture(scope="module")
def video(tmp_path_factory, segments) -> Clip:
    (clip,) = list_clips(write_video(tmp_path_factory.mktemp("v") / "clip.mp4", segments))
    return clip


def diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


def sha(rel: str) -> str:
    return hashlib.sha256(rel.encode()).hexdigest()[:24]


# -- list_clips ------------------------------------------------------------------------------


def test_list_clips_finds_videos_and_frame_folders(tmp_path):
    for rel in ["a.mp4", "sub/B.MKV", "sub/notes.txt", "deep/er/c.webm", ".hidden/x.mp4",
                ".y.mp4", "one/f.jpg", "frames/f_10.jpg", "frames/f_2.jpg", "frames/f_1.png",
                "frames/.f_0.jpg", "sub/p1.png", "sub/p2.png", "dir.mp4/readme.md"]:  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    clips = list_clips(tmp_path)
    rels = ["a.mp4", "deep/er/c.webm", "frames", "sub", "sub/B.MKV"]
    assert [c.clip_id for c in clips] == [sha(r) for r in rels]
    assert [c.uri for c in clips] == [str(tmp_path / r) for r in rels]
    assert [c.kind for c in clips] == ["video", "video", "frames", "frames", "video"]
    names = [p.rsplit("/", 1)[1] for p in clips[2].frames]
    assert names == ["f_1.png", "f_2.jpg", "f_10.jpg"]  # natural order, hidden file left out
    assert clips[3].frames == (str(tmp_path / "sub/p1.png"), str(tmp_path / "sub/p2.png"))
    assert clips[0].frames == () and len({c.clip_id for c in clips}) == len(clips)
    assert list_clips(str(tmp_path)) == clips  # stable across calls

    (frames_root,) = list_clips(tmp_path / "frames")
    assert frames_root.clip_id == sha(".") and frames_root.kind == "frames"
    assert list_clips(tmp_path / "sub" / "B.MKV") == [Clip(sha("B.MKV"), clips[4].uri, "video")]
    assert list_clips(tmp_path / "one") == []


def test_list_clips_refuses_missing_root_and_non_video_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_clips(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        list_clips(tmp_path / "notes.txt")


# -- sample_frames ---------------------------------------------------------------------------


def test_video_frames_evenly_spaced_in_time_order(video, segments):
    frames = sample_frames(video, 5, max_side=64)
    idx = [f.index for f in frames]
    assert idx[0] == 0 and idx[-1] == 39 and idx == sorted(set(idx)) and len(idx) == 5
    assert all(abs(i - k * 39 / 4) <= 0.5 for k, i in enumerate(idx))
    assert [f.time_s for f in frames] == pytest.approx([i / FPS for i in idx])
    assert all(f.image.size == (64, 48) and f.image.mode == "RGB" for f in frames)
    # the frames are the rendered ones at those indices, never upscaled
    full = sample_frames(video, 5, max_side=512)
    truth = render(segments, (160, 120))
    assert all(f.image.size == (160, 120) for f in full)
    for f in full:
        assert diff(f.image, truth[f.index]) < 6 < diff(f.image, truth[39 - f.index])


def test_undeclared_duration_is_found_by_demuxing(video, monkeypatch):
    from curation.pairs import video as module

    declared = sample_frames(video, 6)
    monkeypatch.setattr(module, "_declared_end", lambda container, stream: None)
    demuxed = sample_frames(video, 6)
    assert [f.index for f in demuxed] == [f.index for f in declared] == [0, 8, 16, 23, 31, 39]


def test_video_with_fewer_frames_than_asked_gives_each_once(tmp_path):
    path = write_video(tmp_path / "short.webm", [Segment(Image.open(PHOTOS[2]), "pan", 3)],
                       codec="libvpx")  # fmt: skip
    frames = sample_frames(list_clips(path)[0], 8)
    assert [f.index for f in frames] == [0, 1, 2]
    assert [f.time_s for f in frames] == pytest.approx([0, 1 / FPS, 2 / FPS])


def test_display_rotation_is_applied(tmp_path, segments):
    path = write_video(tmp_path / "phone.mp4", segments[:1], rotation=-90)
    first = sample_frames(list_clips(path)[0], 2)[0].image
    truth = render(segments[:1], (160, 120))[0]
    assert first.size == (120, 160)  # -90: shown turned a quarter clockwise
    assert diff(first, truth.transpose(Image.Transpose.ROTATE_270)) < 6


def test_frame_folder_sampling_and_undecodable_frames(tmp_path, segments):
    paths = write_frames(tmp_path / "shot", segments[:2], size=(160, 120))
    for p in paths[11:]:
        p.unlink()
    paths = paths[:11]
    (clip,) = list_clips(tmp_path)
    frames = sample_frames(clip, 5, max_side=100)
    assert [f.index for f in frames] == [0, 2, 5, 8, 10]  # round(k * 10 / 4)
    assert all(f.time_s is None and f.image.size == (100, 75) for f in frames)
    truth = render(segments[:2], (160, 120))
    full = sample_frames(clip, 5)
    assert all(diff(f.image, truth[f.index]) < 6 for f in full)

    paths[5].write_bytes(b"not a jpeg")  # skipped, the others kept
    assert [f.index for f in sample_frames(clip, 5)] == [0, 2, 8, 10]
    for p in paths[1:]:
        p.write_bytes(paths[1].read_bytes()[:100])
    with pytest.raises(ClipError) as err:
        sample_frames(clip, 5)
    assert err.value.code == "too_short"


def test_bad_arguments(video):
    with pytest.raises(ValueError, match="n: "):
        sample_frames(video, 1)
    with pytest.raises(ValueError, match="max_side"):
        sample_frames(video, 2, max_side=0)


# -- damaged inputs --------------------------------------------------------------------------


def code_of(path) -> str:
    with pytest.raises(ClipError) as err:
        sample_frames(list_clips(path)[0], 4)
    return err.value.code


def test_damaged_videos_give_specific_codes(tmp_path, video, segments):
    (tmp_path / "x.mp4").write_bytes(random.Random(0).randbytes(4096))
    assert code_of(tmp_path / "x.mp4") == "unreadable"
    (tmp_path / "empty.mov").write_bytes(b"")
    assert code_of(tmp_path / "empty.mov") == "unreadable"
    one = write_video(tmp_path / "one.mp4", [Segment(Image.open(PHOTOS[0]), "static", 1)])
    assert code_of(one) == "too_short"
    data = Path(video.uri).read_bytes()  # MP4 with its index at the end: cannot be opened
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 9 // 10])
    assert code_of(tmp_path / "cut.mp4") == "unreadable"


def test_audio_only_file_has_no_video_stream(tmp_path):
    import av

    with av.open(str(tmp_path / "sound.mkv"), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), "s16", "mono")
        frame.sample_rate, frame.pts = 8000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    assert code_of(tmp_path / "sound.mkv") == "no_video_stream"


def test_truncated_video_fails_unless_only_its_end_is_missing(tmp_path, segments):
    data = write_video(tmp_path / "full.mkv", segments).read_bytes()  # 40 frames, 4.875 s
    (tmp_path / "half.mkv").write_bytes(data[: len(data) // 2])
    assert code_of(tmp_path / "half.mkv") == "decode_error"
    (tmp_path / "most.mkv").write_bytes(data[: len(data) * 97 // 100])
    frames = sample_frames(list_clips(tmp_path / "most.mkv")[0], 5)
    assert frames[0].index == 0 and 36 <= frames[-1].index < 39 and len(frames) == 5


@pytest.mark.parametrize(("ext", "codec"), [("mp4", "libx264"), ("mkv", "libx264"),
                                            ("webm", "libvpx"), ("avi", "mpeg4")])  # fmt: skip
def test_no_damage_lets_another_exception_escape(tmp_path, segments, ext, codec):
    data = write_video(tmp_path / f"v.{ext}", segments[:2], codec=codec).read_bytes()
    path, outcomes = tmp_path / f"d.{ext}", set()
    for k in range(40):
        damaged = bytearray(data[: len(data) * k // 20] if k < 20 else data)
        rng = random.Random(k)
        for _ in range(k - 19 if k >= 20 else 0):  # 1..20 random bytes overwritten
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path.write_bytes(bytes(damaged))
        try:
            frames = sample_frames(list_clips(path)[0], 4)
        except ClipError as err:
            outcomes.add(err.code)
            continue
        assert len(frames) >= 2 and all(a.index < b.index for a, b in pairwise(frames))
        outcomes.add("ok")
    assert "ok" in outcomes and len(outcomes) >= 2


# -- band_pairs ------------------------------------------------------------------------------


def unit(*degrees: float) -> np.ndarray:
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_band_pairs_exact_on_known_angles():
    e = unit(0, 30, 60, 90, 180)  # cos: 30 deg .866, 60 deg .5, 90 deg 0
    got = band_pairs(e, 0.4, 0.9, 100, random.Random(0))
    assert [(i, j) for i, j, _ in got] == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]
    assert [c for *_, c in got] == pytest.approx([0.866025, 0.5, 0.866025, 0.5, 0.866025])
    assert all(type(c) is float and type(i) is int for i, _, c in got)
    half = band_pairs(e.astype(np.float16), 0.4, 0.9, 100, random.Random(0))
    assert [p[:2] for p in half] == [p[:2] for p in got]
    # bounds are inclusive: identical (cos 1) and opposite (cos -1) vectors
    same = np.array([[0.6, 0.8], [0.6, 0.8], [-0.6, -0.8]], np.float32)
    assert band_pairs(same, 0.5, 1.0, 5, random.Random(0)) == [(0, 1, 1.0)]
    assert band_pairs(same, -1.0, -0.5, 5, random.Random(0)) == [(0, 2, -1.0), (1, 2, -1.0)]
    assert band_pairs(unit(0), -1, 1, 5, random.Random(0)) == []


def test_band_pairs_cap_is_a_seeded_subset():
    e = unit(*np.linspace(0, 40, 10))  # 45 pairs, all with cos >= 0.76
    every = band_pairs(e, 0.7, 1.0, 1000, random.Random(0))
    assert len(every) == 45
    capped = [band_pairs(e, 0.7, 1.0, 7, random.Random(seed)) for seed in (1, 1, 2)]
    assert capped[0] == capped[1] != capped[2]
    for pairs in capped:
        assert len(pairs) == 7 and pairs == sorted(pairs) and set(pairs) <= set(every)


@pytest.mark.parametrize(
    ("lo", "hi", "cap", "field"),
    [(-1.5, 0.5, 3, "lo"), (0.2, 1.01, 3, "hi"), (0.5, 0.5, 3, "hi"), (0.1, 0.2, 0, "max_pairs")],
)
def test_band_pairs_validates_arguments(lo, hi, cap, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        band_pairs(unit(0, 1), lo, hi, cap, random.Random(0))
    with pytest.raises(ValueError, match=r"^embeddings: "):
        band_pairs(np.ones(4), 0.1, 0.2, 3, random.Random(0))


# -- the band with CLIP ----------------------------------------------------------------------

# Contrasting photo pairs: the tiny random CLIP sees mostly colour and layout, so a cut between
# two photos of similar colours can look as close as a pan. Measured over the 25 bundled photos
# (16-frame shots, 160x120, this generator's mpeg4): repeated frames > 0.99999; adjacent pan
# frames 0.989-0.9996, adjacent zoom frames 0.997-0.9999; across a cut 0.81-0.996 (median
# 0.961; 1 of 25 cuts above its own shot's neighbours); any two photos 0.73-0.993 (median 0.956).
CUTS = [("000000099053", "000000126107"), ("000000160012", "000000165518"),
        ("000000255165", "000000349860")]  # fmt: skip
F = 12  # frames per segment


@pytest.fixture(scope="module")
def embed():
    import torch

    from curation.clip import TINY, load_clip

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    clip = load_clip(TINY, None, device="cpu")

    def run(images: list[Image.Image]) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.stack([clip.preprocess(i) for i in images])
            v = clip.model.encode_image(batch).float().numpy()
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    yield run
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shots(tmp_path_factory, embed) -> list[np.ndarray]:
    """Per photo pair, the embedding of every frame of: A static, A pan, A zoom, cut, B static."""
    out = []
    for a, b in CUTS:
        segs = [Segment(photo(a), m, F) for m in MOTIONS] + [Segment(photo(b), "static", F)]
        path = write_video(tmp_path_factory.mktemp("cut") / f"{a}.mp4", segs)
        frames = sample_frames(list_clips(path)[0], 4 * F)
        assert len(frames) == 4 * F
        out.append(embed([f.image for f in frames]))
    return out


def test_clip_orders_static_over_neighbours_over_cut(shots):
    for e in shots:
        cos = lambda i, j, e=e: float(e[i] @ e[j])  # noqa: E731
        static = min(cos(i, i + 1) for i in range(F - 1))
        moving = [cos(i, i + 1) for i in [*range(F, 2 * F - 1), *range(2 * F, 3 * F - 1)]]
        cut = cos(3 * F - 1, 3 * F)
        assert static > 0.9999  # identical frames, up to the codec
        assert min(moving) > 0.98 and np.median(moving) < 0.9995  # related, not identical
        assert cut < min(moving) - 0.05


def test_band_keeps_same_shot_pairs_only(shots):
    for e in shots:
        picks = list(range(0, 4 * F, 3))  # 16 frames as the stage would sample them
        pairs = band_pairs(e[picks].astype(np.float16), 0.985, 0.9995, 50, random.Random(0))
        assert pairs
        for i, j, _ in pairs:
            assert picks[i] < picks[j] < 3 * F  # never across the cut, nor inside B's still shot
            assert picks[j] >= F  # never two frames of A's still shot
