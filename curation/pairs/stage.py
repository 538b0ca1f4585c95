"""The pairs stages: editing pairs into ``edit_pairs/`` (the Z-Image report's section 2.5).

* :class:`ImagePairsStage` (``samples`` -> ``edit_pairs/00007.parquet``). For an
  ``expert.fraction`` of samples (picked by a hash of ``sample_id``), ``expert.edits`` seeded
  edits and every ordered pair among the photo and its edits: expert, inverse and mixed,
  N(N+1) pairs. For a ``text.fraction`` of samples, one rendered text edit (``text_render``),
  a ``text.verify_fraction`` of them read back by OCR.
* :class:`VideoPairsStage` (``clips`` -> ``edit_pairs/video-00007.parquet``). Frames sampled
  per clip, and the frame pairs whose CLIP cosine lies in ``band`` (``video``).

An image that is a sample is referenced by ``source_id`` / ``target_id``: the input photo of
an expert pair, the target of an inverse pair. Generated images (edits, renders, frames) are
stored inline as JPEG in ``source_image`` / ``target_image``. ``base_id`` names the sample or
clip a pair was made from; accounting and rejects use it. A sample counts as ok when it gave
at least one pair, rejected when it only gave rejects (undecodable, every rendered pair
failed OCR), and skipped when it was not picked.

A pair whose operations cannot be described (an expert model's edit backwards, two video
frames) gets its instruction from the captioner's difference captions when ``backend`` is
set, and keeps a null instruction otherwise; select skips pairs without one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa
from PIL import Image

from captioner.backends import BackendConfig
from curation.edit_pairs import pair_id
from curation.pairs.combine import Node, combine
from curation.pairs.editors import BUILTIN, DiffusersEditor, Editor
from curation.pairs.text_edits import CHANGES, text_edit, verify
from infra.config import Location, require
from infra.stage import Resources, Stage
from infra.storage import with_credentials
from infra.tables import EDIT_PAIRS, ERROR_DETAIL


@dataclass(frozen=True, kw_only=True)
class ExpertPairs:
    """Expert edits and their graphical combination (``[pairs.expert]``)."""

    fraction: float = 0.5
    """Fraction of samples edited (picked by a hash of ``sample_id``)."""
    edits: int = 2
    """Edits per picked sample, N: N(N+1) pairs (N expert, N inverse, N(N-1) mixed)."""
    editors: tuple[str, ...] = tuple(BUILTIN)
    """Built-in editors to draw the N edits from (distinct per sample)."""
    model: str | None = None
    """A diffusers image-editing pipeline folder: when set, one of the N edits is this model
    applying one of ``instructions`` (its inverse is left to difference captions)."""
    instructions: tuple[str, ...] = ()
    """Instructions for ``model``."""
    steps: int = 20
    """Inference steps of ``model``."""

    def __post_init__(self) -> None:
        require(0 <= self.fraction <= 1, "fraction", self.fraction, "must be in [0, 1]")
        require(self.edits >= 0, "edits", self.edits, "must be >= 0")
        unknown = sorted(set(self.editors) - set(BUILTIN))
        require(not unknown, "editors", unknown, f"unknown; built-in: {sorted(BUILTIN)}")
        pool = len(set(self.editors)) + (self.model is not None)
        require(self.edits <= pool, "edits", self.edits, f"needs as many editors ({pool})")
        require(self.model is None or bool(self.instructions), "instructions",
                self.instructions, "must list at least one instruction for model")  # fmt: skip
        require(self.steps >= 1, "steps", self.steps, "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class TextPairs:
    """Rendered text edits (``[pairs.text]``)."""

    fraction: float = 0.25
    """Fraction of samples used as backgrounds (picked by a hash of ``sample_id``)."""
    changes: tuple[str, ...] = CHANGES
    """Changes to draw from: replace, recolour, resize, move, add, remove."""
    zh_prob: float = 0.3
    """Probability that the rendered text is Chinese."""
    verify_fraction: float = 1.0
    """Fraction of rendered pairs read back with OCR; a target whose reading does not match
    the instruction is dropped (reject reason ``ocr_mismatch``)."""

    def __post_init__(self) -> None:
        for name in ("fraction", "zh_prob", "verify_fraction"):
            value = getattr(self, name)
            require(0 <= value <= 1, name, value, "must be in [0, 1]")
        unknown = sorted(set(self.changes) - set(CHANGES))
        require(bool(self.changes) and not unknown, "changes", self.changes,
                f"must be a non-empty subset of {list(CHANGES)}")  # fmt: skip


def _unit(*parts: Any) -> float:
    """A number in [0, 1) fixed by ``parts`` (which samples are picked)."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# the stage's rows before the framework moves failed ones to rejects/ (every column nullable)
_WITH_ERRORS = pa.schema(
    [
        *(f.with_nullable(True) for f in EDIT_PAIRS),
        ("error", pa.string()),
        (ERROR_DETAIL, pa.string()),
    ]
)


@dataclass
class _Pair:
    """One output row in the making (inline images are PIL until written)."""

    base_id: str
    kind: str
    source: str | Image.Image  # a sample_id, or a generated image
    target: str | Image.Image
    refs: tuple[str, str]  # stable names of source and target, for pair_id
    size: tuple[int, int]  # target (width, height)
    instruction: str | None
    instruction_zh: str | None
    operations: list[dict] | None
    provenance: dict[str, Any]
    error: tuple[str, str] | None = None  # (code, detail): the pair goes to rejects


@dataclass(kw_only=True)
class _PairsStage(Stage):
    """What both pairs stages share: output rows, accounting, difference captions."""

    output_table: ClassVar[str] = "edit_pairs"
    one_to_one: ClassVar[bool] = False
    expands: ClassVar[bool] = True
    row_key: ClassVar[str] = "base_id"
    count_by: ClassVar[str | None] = "kind"

    backend: BackendConfig | None = None
    """Vision-language model for difference captions of pairs whose operations cannot be
    described (``[pairs.backend]``, as ``[caption.backend]``). Unset: those pairs keep a null
    instruction."""
    difference_zh: bool = True
    """Also ask the backend for a difference-captioned pair's instruction in Chinese (one more
    text-only prompt per pair) for ``instruction_zh``; an answer that fails validation leaves
    it null (the reason is in the pair's provenance)."""
    seed: int = 0
    """Seed of every random choice (same seed, same pairs)."""
    jpeg_quality: int = 95
    """JPEG quality of generated images stored inline."""
    gpus: float = 0.0
    """GPUs per worker (an expert model or a local captioning model)."""
    _backend: Any = field(default=None, init=False, repr=False)
    _originals: dict[str, Image.Image] = field(default_factory=dict, init=False, repr=False)
    """The decoded samples of the current batch (difference captions of pairs naming them)."""
    _encoded: dict[int, tuple[Image.Image, bytes]] = field(default_factory=dict, init=False,
                                                            repr=False)  # fmt: skip

    def __post_init__(self) -> None:
        if isinstance(self.backend, dict):  # built from to_dict() on a Ray worker
            self.backend = BackendConfig(**self.backend)
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality", self.jpeg_quality,
                "must be in [1, 100]")  # fmt: skip
        require(self.gpus >= 0, "gpus", self.gpus, "must be >= 0")

    @property
    def resources(self) -> Resources:
        return Resources(cpus=1.0, gpus=self.gpus, actors=True)

    def setup(self) -> None:
        if self.backend is not None:
            from captioner.backends import backend_from_config

            self._backend = backend_from_config(self.backend)

    def _caption_differences(self, pairs: list[_Pair]) -> None:
        """Fill the instruction of pairs that have none with a difference caption."""
        todo = [p for p in pairs if p.error is None and p.instruction is None]
        if not todo or self._backend is None:
            return
        from captioner.programs import Rejected, difference_captions

        images = [(self._bytes(p.source), self._bytes(p.target)) for p in todo]
        also = ("zh",) if self.difference_zh else ()
        got_all = difference_captions(self._backend, images, language="en", also=also)
        for pair, got in zip(todo, got_all, strict=True):
            if isinstance(got, Exception):
                code = "caption_rejected" if isinstance(got, Rejected) else "backend_error"
                pair.error = (code, f"{pair.kind} pair {pair.refs}: {got}")
            else:
                pair.instruction = got.edit_instruction
                pair.instruction_zh = got.translations.get("zh")
                pair.provenance["difference_caption"] = {
                    "model": self.backend.model if self.backend else None,
                    "prompt_version": got.prompt_version,
                    "differences": got.differences.splitlines(),
                    **({"errors": got.translation_errors} if got.translation_errors else {}),
                }

    def _bytes(self, image: str | Image.Image) -> bytes:
        """JPEG bytes of a sample (by id) or of a generated image, encoded once per batch (an
        edit is in 2N pairs)."""
        im = self._originals[image] if isinstance(image, str) else image
        if id(im) not in self._encoded:
            self._encoded[id(im)] = (im, _jpeg(im, self.jpeg_quality))  # im keeps its id alive
        return self._encoded[id(im)][1]

    def _table(self, pairs: list[_Pair], failed: list[tuple[str, str, str]]) -> pa.Table:
        """Output rows; ``failed`` are (base_id, code, detail) of inputs that gave no pair."""
        cols: dict[str, list] = {name: [] for name in EDIT_PAIRS.names}
        cols["error"], cols[ERROR_DETAIL] = [], []
        for p in pairs:
            inline = {end: not isinstance(img, str) for end, img in
                      (("source", p.source), ("target", p.target))}  # fmt: skip
            cols["pair_id"].append(pair_id(*p.refs, p.kind))
            cols["base_id"].append(p.base_id)
            for end, img in (("source", p.source), ("target", p.target)):
                cols[f"{end}_id"].append(None if inline[end] else img)
                cols[f"{end}_image"].append(
                    self._bytes(img) if inline[end] and p.error is None else None
                )
            cols["width"].append(p.size[0])
            cols["height"].append(p.size[1])
            cols["instruction"].append(p.instruction)
            cols["instruction_zh"].append(p.instruction_zh)
            cols["kind"].append(p.kind)
            ops = None if p.operations is None else json.dumps(p.operations, ensure_ascii=False)
            cols["operations"].append(ops)
            cols["provenance"].append(json.dumps(p.provenance, ensure_ascii=False))
            cols["error"].append(p.error[0] if p.error else None)
            cols[ERROR_DETAIL].append(p.error[1] if p.error else None)
        for base_id, code, detail in failed:
            for name in cols:
                cols[name].append(None)
            cols["base_id"][-1], cols["error"][-1], cols[ERROR_DETAIL][-1] = base_id, code, detail
            cols["pair_id"][-1], cols["kind"][-1] = f"failed:{base_id}", "failed"
        self._originals, self._encoded = {}, {}  # the batch is done
        return pa.table(cols, schema=_WITH_ERRORS)


@dataclass(kw_only=True)
class ImagePairsStage(_PairsStage):
    """Expert edits with graphical combination and rendered text edits per sample."""

    name: ClassVar[str] = "pairs"
    input_table: ClassVar[str] = "samples"
    input_columns: ClassVar[tuple[str, ...]] = ("sample_id", "uri", "image")

    expert: ExpertPairs = field(default_factory=ExpertPairs)
    """Expert edits + graphical combination."""
    text: TextPairs = field(default_factory=TextPairs)
    """Rendered text edits."""
    max_side: int = 1024
    """Photos are scaled down to this longer side before editing (generated images are at
    most this large; pairs that reference the sample itself use its original bytes)."""
    min_side: int = 64
    """Photos with a shorter side are rejected (``too_small``): rendered text and shapes
    would not fit."""
    max_pixels: int = 100_000_000
    """Images with more pixels are refused before decoding (as in profile)."""
    batch_rows: int = 16
    """Samples handed to the stage at once."""
    _editors: dict[str, Editor] = field(default_factory=dict, init=False, repr=False)
    _ocr: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.expert, dict):
            self.expert = ExpertPairs(**self.expert)
        if isinstance(self.text, dict):
            self.text = TextPairs(**self.text)
        super().__post_init__()
        require(self.min_side >= 16, "min_side", self.min_side, "must be >= 16")
        require(self.max_side >= self.min_side, "max_side", self.max_side, "must be >= min_side")
        require(self.batch_rows >= 1, "batch_rows", self.batch_rows, "must be >= 1")

    def setup(self) -> None:
        super().setup()
        self._editors = {name: BUILTIN[name]() for name in self.expert.editors}
        if self.expert.model is not None:
            editor = DiffusersEditor(path=self.expert.model,
                                     instructions=self.expert.instructions,
                                     steps=self.expert.steps)  # fmt: skip
            editor.load()
            self._editors[editor.name] = editor
        if self.text.fraction > 0 and self.text.verify_fraction > 0:
            from captioner.ocr import RapidOcrEngine

            threads = os.environ.get("OMP_NUM_THREADS")  # a Ray worker's CPUs
            self._ocr = RapidOcrEngine(threads=int(threads) if threads and threads.isdigit()
                                       else None)  # fmt: skip

    def process_batch(self, table: pa.Table) -> pa.Table:
        from curation.profiling.decode import DecodeError, decode, fit, to_rgb8
        from infra.storage import read_bytes

        pairs: list[_Pair] = []
        failed: list[tuple[str, str, str]] = []
        for sid, data, uri in zip(table.column("sample_id").to_pylist(),
                                  table.column("image").to_pylist(),
                                  table.column("uri").to_pylist(), strict=True):  # fmt: skip
            expert = _unit(self.seed, "expert", sid) < self.expert.fraction and self.expert.edits
            text = _unit(self.seed, "text", sid) < self.text.fraction
            if not (expert or text):
                continue  # not picked: skipped
            try:
                image = to_rgb8(decode(data if data is not None else read_bytes(uri or ""),
                                       max_pixels=self.max_pixels).image)  # fmt: skip
            except DecodeError as err:
                failed.append((sid, err.code, err.detail))
                continue
            except OSError as err:
                failed.append((sid, "read_failed", f"{uri}: {err}"))
                continue
            if min(image.size) < self.min_side:
                failed.append((sid, "too_small", f"{image.size} is under min_side {self.min_side}"))
                continue
            self._originals[sid] = image
            small = fit(image, self.max_side)
            for make, picked in ((self._expert_pairs, expert), (self._text_pair, text)):
                try:
                    pairs += make(sid, image.size, small) if picked else []
                except ValueError as err:  # e.g. text that does not fit a narrow image
                    failed.append((sid, "edit_failed", f"{make.__name__[1:]}: {err}"))
        self._caption_differences(pairs)
        return self._table(pairs, failed)

    def _expert_pairs(self, sid: str, size: tuple[int, int], image: Image.Image) -> list[_Pair]:
        rng = random.Random(f"{self.seed}:expert:{sid}")
        names = rng.sample(sorted(self._editors), self.expert.edits)
        nodes = [Node(image, ())]
        for name in names:
            edited, op = self._editors[name].edit(image, rng)
            nodes.append(Node(edited, (op,)))
        refs = [sid] + [f"{sid}/edit-{i}:{n}" for i, n in enumerate(names, 1)]
        out = []
        for pair in combine(nodes):
            ends = [sid if i == 0 else nodes[i].image for i in (pair.source, pair.target)]
            target = nodes[pair.target].image
            out.append(_Pair(
                base_id=sid, kind=pair.kind, source=ends[0], target=ends[1],
                refs=(refs[pair.source], refs[pair.target]),
                size=size if pair.target == 0 else target.size,
                instruction=pair.instruction, instruction_zh=pair.instruction_zh,
                operations=[{**op.record(), "inverse": inv} for op, inv in pair.steps],
                provenance={"constructor": "expert", "seed": self.seed, "editors": names,
                            "source_node": pair.source, "target_node": pair.target},
            ))  # fmt: skip
        return out

    def _text_pair(self, sid: str, size: tuple[int, int], image: Image.Image) -> list[_Pair]:
        rng = random.Random(f"{self.seed}:text:{sid}")
        edit = text_edit(image, rng, change=rng.choice(self.text.changes),
                         zh_prob=self.text.zh_prob)  # fmt: skip
        # the plain background is the sample itself: add starts from it, remove returns to it
        source = sid if edit.before is None else edit.source
        target = sid if edit.after is None else edit.target
        pair = _Pair(
            base_id=sid, kind="text_render", source=source, target=target,
            refs=(f"{sid}/text-before", f"{sid}/text-after"),
            size=size if edit.after is None else edit.target.size,
            instruction=edit.instruction, instruction_zh=edit.instruction_zh,
            operations=[edit.record()],
            provenance={"constructor": "text_render", "seed": self.seed, "verified": False},
        )  # fmt: skip
        if self._ocr is not None and _unit(self.seed, "verify", sid) < self.text.verify_fraction:
            reason = verify(edit, self._ocr)
            if reason is not None:
                pair.error = ("ocr_mismatch", f"text_render {edit.change}: {reason}")
            pair.provenance["verified"] = reason is None
        return [pair]


@dataclass(frozen=True, kw_only=True)
class VideoPairs:
    """Video-frame pairs (``[pairs.video]``)."""

    videos: Location | None = None
    """A folder of video files and/or folders of frames (one clip each), or one video file: a
    local path or a URI (``s3://bucket/videos``). Unset: no video pairs."""
    clips_per_shard: int = 16
    """Clips per ``clips/`` shard: the unit of parallelism and of resume."""
    frames_per_clip: int = 8
    """Frames sampled evenly over each clip (first and last included)."""
    band: tuple[float, float] = (0.8, 0.95)
    """Keep frame pairs whose CLIP cosine is in [low, high]: above is a static shot (nothing
    to learn), below a cut or an unrelated shot. The default is a guess for ViT-L/14-class
    models, not measured (no real CLIP weights here): calibrate it on labelled frame pairs of
    your clips (each pair's ``cosine`` is in its provenance)."""
    max_pairs_per_clip: int = 4
    """At most this many pairs per clip (drawn with the seed)."""
    max_side: int = 512
    """Frames are scaled down to this longer side."""
    model: str | None = None
    """open_clip model for the cosines; unset: the run's CLIP (``vectors/_settings.json``)."""
    pretrained: str | None = None
    """Its pretrained tag or checkpoint path (with ``model``)."""

    def __post_init__(self) -> None:
        lo, hi = self.band
        require(-1 <= lo < hi <= 1, "band", self.band,
                "must be (low, high) with -1 <= low < high <= 1")  # fmt: skip
        for name in ("clips_per_shard", "max_pairs_per_clip"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        require(self.frames_per_clip >= 2, "frames_per_clip", self.frames_per_clip, "must be >= 2")
        require(self.max_side >= 16, "max_side", self.max_side, "must be >= 16")


@dataclass(kw_only=True)
class VideoPairsStage(_PairsStage):
    """Frame pairs per clip whose CLIP cosine lies in ``video.band`` (related, not identical)."""

    name: ClassVar[str] = "video_pairs"
    input_table: ClassVar[str] = "clips"
    output_prefix: ClassVar[str] = "video"
    input_columns: ClassVar[tuple[str, ...]] = ("clip_id", "uri", "kind", "frames")

    video: VideoPairs = field(default_factory=VideoPairs)
    """Frame sampling, cosine band and CLIP model."""
    batch_rows: int = 4
    """Clips handed to the stage at once."""
    _clip: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.video, dict):
            self.video = VideoPairs(**self.video)
        super().__post_init__()
        require(self.batch_rows >= 1, "batch_rows", self.batch_rows, "must be >= 1")

    def setup(self) -> None:
        from curation.clip import load_clip

        if self.video.model is None:
            raise ValueError("video pairs: no CLIP model (set [pairs.video] model, or run embed)")
        super().setup()
        self._clip = load_clip(self.video.model, self.video.pretrained)

    def process_batch(self, table: pa.Table) -> pa.Table:
        from curation.clip import encode_images, model_id
        from curation.pairs.video import Clip, ClipError, band_pairs, sample_frames

        cfg = self.video
        pairs: list[_Pair] = []
        failed: list[tuple[str, str, str]] = []
        # stored URIs carry no credentials: the configured root's, if it has any
        auth = lambda uri: with_credentials(uri, str(cfg.videos or ""))  # noqa: E731
        for row in table.to_pylist():
            clip = Clip(row["clip_id"], row["uri"], row["kind"], tuple(row["frames"] or ()))
            readable = Clip(clip.clip_id, auth(clip.uri), clip.kind, tuple(map(auth, clip.frames)))
            try:
                frames = sample_frames(readable, cfg.frames_per_clip, max_side=cfg.max_side)
            except ClipError as err:  # named by the stored URI (a video read from a URI is not)
                failed.append((clip.clip_id, err.code, f"{clip.uri}: {err.detail}"))
                continue
            vectors = encode_images(self._clip, [f.image for f in frames])
            rng = random.Random(f"{self.seed}:video:{clip.clip_id}")
            kept = band_pairs(vectors, *cfg.band, cfg.max_pairs_per_clip, rng)
            if not kept:
                detail = f"no frame pair of {clip.uri} has a CLIP cosine in {list(cfg.band)}"
                failed.append((clip.clip_id, "no_pair_in_band", detail))
                continue
            for i, j, cos in kept:
                a, b = frames[i], frames[j]
                pairs.append(_Pair(
                    base_id=clip.clip_id, kind="video", source=a.image, target=b.image,
                    refs=(f"{clip.clip_id}/frame-{a.index}", f"{clip.clip_id}/frame-{b.index}"),
                    size=b.image.size, instruction=None, instruction_zh=None, operations=None,
                    provenance={"constructor": "video", "clip": clip.uri,
                                "frames": [a.index, b.index], "times": [a.time_s, b.time_s],
                                "cosine": round(cos, 4),
                                "model": model_id(cfg.model or "", cfg.pretrained)},
                ))  # fmt: skip
        self._caption_differences(pairs)
        return self._table(pairs, failed)


@dataclass(frozen=True, kw_only=True)
class PairsConfig:
    """The pairs step (``[pairs]``): which constructors run and how."""

    expert: ExpertPairs = field(default_factory=ExpertPairs)
    """Expert edits + graphical combination (``[pairs.expert]``)."""
    text: TextPairs = field(default_factory=TextPairs)
    """Rendered text edits (``[pairs.text]``)."""
    video: VideoPairs = field(default_factory=VideoPairs)
    """Video-frame pairs (``[pairs.video]``; off unless ``videos`` is set)."""
    backend: BackendConfig | None = None
    """Vision-language model for difference captions (``[pairs.backend]``, as
    ``[caption.backend]``). Unset: pairs whose operations cannot be described keep a null
    instruction, and select skips them."""
    difference_zh: bool = True
    """Also ask ``backend`` for each difference caption's instruction in Chinese
    (``instruction_zh``; one more text-only prompt per pair)."""
    seed: int = 0
    """Seed of every random choice (same seed, same pairs)."""
    max_side: int = 1024
    """Photos are scaled down to this longer side before editing."""
    min_side: int = 64
    """Photos with a shorter side are rejected (``too_small``)."""
    jpeg_quality: int = 95
    """JPEG quality of generated images stored inline."""
    gpus: float = 0.0
    """GPUs per worker (an expert model or a local captioning model)."""
    batch_rows: int = 16
    """Samples handed to the image stage at once (clips: a quarter of it)."""

    def __post_init__(self) -> None:
        self.image_stage(), self.video_stage()  # the stages check the shared fields now

    def image_stage(self) -> ImagePairsStage:
        return ImagePairsStage(expert=self.expert, text=self.text, backend=self.backend,
                               difference_zh=self.difference_zh, seed=self.seed,
                               max_side=self.max_side, min_side=self.min_side,
                               jpeg_quality=self.jpeg_quality, gpus=self.gpus,
                               batch_rows=self.batch_rows)  # fmt: skip

    def video_stage(self, video: VideoPairs | None = None) -> VideoPairsStage:
        return VideoPairsStage(video=video or self.video, backend=self.backend,
                               difference_zh=self.difference_zh, seed=self.seed,
                               jpeg_quality=self.jpeg_quality, gpus=self.gpus,
                               batch_rows=max(1, self.batch_rows // 4))  # fmt: skip
