"""The caption stage: ``samples`` -> ``captions`` (one row per sample), OCR first.

Per batch of samples:

1. **Image.** Inline bytes or the sample's ``uri`` are decoded once (the profile stage's
   decoder and error codes: ``read_failed``, ``truncated``, ...), EXIF-rotated, and
   re-encoded as JPEG when larger than ``max_side`` or not JPEG/PNG, so OCR, a local VLM and a
   served one all see the same pixels.
2. **OCR** (``ocr``): ``rapidocr`` transcribes the image with PP-OCR models shipped in the
   ``rapidocr-onnxruntime`` package (offline, CPU); ``vlm`` asks the caption backend with the
   ``ocr`` prompt; ``none`` skips it. The transcript keeps the original language.
3. **Captions** (when ``backend`` is set): the ``captions`` prompt, conditioned on the
   transcript and on world knowledge -- the alt text, a page title from the sample's ``meta``
   and the knowledge-graph concepts ``weights/`` matched to the sample -- asks for the five
   caption types as JSON, in English or (for a ``zh_fraction`` of samples, chosen by
   ``sample_id``) Chinese. :func:`captioner.programs.parse_captions` validates the answer.

A row whose image cannot be read, whose backend request failed, or whose answer was
rejected keeps null caption columns and gets ``error`` + a ``rejects/`` row with the reason
(``detail`` says exactly why); its alt caption is what select and the trainer fall back to.
A transcript from the VLM is kept only when its captions were accepted (a model that fails
the caption checks is not trusted to have read the text either); a RapidOCR transcript is
kept whenever OCR ran.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from captioner.backends import BackendConfig
from captioner.programs import (
    CAPTION_FIELDS,
    Prompts,
    Rejected,
    caption_prompt,
    load_prompts,
    parse_captions,
    parse_ocr,
)
from infra.config import require
from infra.stage import Resources, Stage
from infra.tables import CAPTIONS, ERROR_DETAIL

OCR_MODES = ("rapidocr", "vlm", "none")
# meta keys read as the page an image came from (first present wins)
TITLE_KEYS = ("title", "page_title", "TITLE")
MAX_CONCEPTS = 12  # concept names put into one prompt
KEEP_FORMATS = frozenset({"JPEG", "PNG"})


@dataclass(kw_only=True)
class CaptionStage(Stage):
    """OCR + multi-level captions per sample (module docstring)."""

    name: ClassVar[str] = "caption"
    input_table: ClassVar[str] = "samples"
    output_table: ClassVar[str] = "captions"
    input_columns: ClassVar[tuple[str, ...]] = ("sample_id", "uri", "image", "caption_alt", "meta")

    backend: BackendConfig | None = None
    """The vision-language model that writes captions (``[caption.backend]``: ``kind =
    "transformers"`` for a local model, ``"http"`` for a served one). Unset: OCR only."""
    ocr: str = "rapidocr"
    """OCR engine: ``rapidocr`` (PP-OCR, offline), ``vlm`` (the backend with the ocr prompt)
    or ``none``."""
    ocr_text_score: float = 0.8
    """rapidocr: lines recognised with a lower confidence are dropped (on COCO photos most
    reads under 0.8 are texture, not text)."""
    ocr_min_chars: int = 2
    """rapidocr: lines with fewer characters are dropped (lone letters read off textures)."""
    prompt_version: str = "v1"
    """Prompt folder under ``captioner/prompts/`` (the table records its content hash too)."""
    zh_fraction: float = 0.0
    """Fraction of samples captioned in Chinese (picked by a hash of ``sample_id``); the rest
    in English."""
    context: bool = True
    """Put world knowledge (alt text, page title, knowledge-graph concepts) into the prompt."""
    max_side: int = 1536
    """Longer image sides are scaled down to this before OCR and captioning."""
    max_pixels: int = 100_000_000
    """Images with more pixels are refused before decoding (as in profile)."""
    max_new_tokens: int = 768
    """Token budget of one caption answer (the JSON with all five captions)."""
    ocr_max_new_tokens: int = 256
    """Token budget of a VLM transcription."""
    gpus: float = 0.0
    """GPUs per worker for a local model (e.g. 1.0 on GPU nodes, 0.5 to pack two per GPU)."""
    batch_rows: int = 64
    """Rows handed to the stage at once (the backend batches within them)."""
    weights_table: str | None = None
    """Filled by the caption step: the run's ``weights/`` folder, for concept names."""
    kg: str | None = None
    """Filled by the caption step: the knowledge graph ``weights/`` was computed against."""
    _backend: Any = field(default=None, init=False, repr=False)
    _ocr: Any = field(default=None, init=False, repr=False)
    _prompts: Prompts | None = field(default=None, init=False, repr=False)
    _names: pa.Array | None = field(default=None, init=False, repr=False)
    _weights: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.backend, dict):  # built from to_dict() on a Ray worker
            self.backend = BackendConfig(**self.backend)
        require(self.ocr in OCR_MODES, "ocr", self.ocr, f"must be one of {list(OCR_MODES)}")
        require(
            self.ocr != "vlm" or self.backend is not None,
            "ocr",
            self.ocr,
            "'vlm' needs a [caption.backend] to ask",
        )
        require(0 <= self.zh_fraction <= 1, "zh_fraction", self.zh_fraction, "must be in [0, 1]")
        require(
            0 < self.ocr_text_score < 1, "ocr_text_score", self.ocr_text_score, "must be in (0, 1)"
        )
        for name in (
            "max_side",
            "max_pixels",
            "max_new_tokens",
            "ocr_max_new_tokens",
            "ocr_min_chars",
        ):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        require(self.batch_rows >= 1, "batch_rows", self.batch_rows, "must be >= 1")
        require(self.gpus >= 0, "gpus", self.gpus, "must be >= 0")
        try:  # an unknown version fails at load time
            load_prompts(self.prompt_version)
        except ValueError as err:
            raise ValueError(f"prompt_version: {err}") from None

    @property
    def resources(self) -> Resources:
        # an actor pool: the OCR engine and the model load once per worker
        return Resources(cpus=1.0, gpus=self.gpus, actors=True)

    def setup(self) -> None:
        self._prompts = load_prompts(self.prompt_version)
        if self.ocr == "rapidocr":
            from captioner.ocr import RapidOcrEngine

            # a Ray worker sets OMP_NUM_THREADS to its CPUs; onnxruntime would use every core
            threads = os.environ.get("OMP_NUM_THREADS")
            self._ocr = RapidOcrEngine(
                text_score=self.ocr_text_score,
                max_side=self.max_side,
                threads=int(threads) if threads and threads.isdigit() else None,
            )
        if self.backend is not None:
            from captioner.backends import backend_from_config

            self._backend = backend_from_config(self.backend)
        if self.context and self.kg and self.weights_table:
            import pyarrow.dataset as pads

            from infra.storage import resolve_uri
            from knowledge_graph.concepts import concept_names

            self._names = pa.array(concept_names(self.kg), pa.string())
            fs, root = resolve_uri(self.weights_table)  # files named _* are skipped
            self._weights = pads.dataset(root, filesystem=fs, format="parquet")

    # -- one batch -------------------------------------------------------------------------
    def process_batch(self, table: pa.Table) -> pa.Table:
        ids = table.column("sample_id").to_pylist()
        rows = [_Row(sid) for sid in ids]
        for row, data, uri in zip(
            rows, table.column("image").to_pylist(), table.column("uri").to_pylist(), strict=True
        ):
            row.image = self._image(row, data, uri)
        live = [r for r in rows if r.error is None]
        self._transcribe(live)
        if self.backend is not None:
            contexts = self._contexts(table) if self.context else [{} for _ in ids]
            by_id = dict(zip(ids, contexts, strict=True))
            self._caption([r for r in live if r.error is None], by_id)
        return self._table(rows)

    def _image(self, row: _Row, data: bytes | None, uri: str | None) -> bytes | None:
        from curation.profiling.decode import DecodeError, decode, to_rgb8
        from infra.storage import read_bytes

        if data is None:
            try:
                data = read_bytes(uri or "")
            except OSError as err:
                row.fail("read_failed", f"{uri}: {err}")
                return None
        try:
            d = decode(data, max_pixels=self.max_pixels)
        except DecodeError as err:
            row.fail(err.code, err.detail)
            return None
        im = d.image
        as_stored = im.format is not None  # decode() returns a copy when EXIF rotates it
        if (
            as_stored
            and d.format in KEEP_FORMATS
            and d.n_frames == 1
            and im.mode in ("RGB", "L")
            and max(im.size) <= self.max_side
        ):
            return data  # already fine: send the original bytes
        rgb = to_rgb8(im)
        if max(rgb.size) > self.max_side:
            rgb = rgb.copy()
            rgb.thumbnail((self.max_side, self.max_side))
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=95)
        return buf.getvalue()

    def _transcribe(self, rows: list[_Row]) -> None:
        if not rows or self.ocr == "none":
            return
        if self.ocr == "rapidocr":
            from captioner.ocr import OcrError, reading_order

            for row, res in zip(rows, self._ocr.read_many([r.image for r in rows]), strict=True):
                if isinstance(res, OcrError):
                    row.fail("ocr_failed", str(res))
                    continue
                kept = [ln for ln in res.lines if len(ln.text.strip()) >= self.ocr_min_chars]
                row.ocr_text, row.ocr_engine = reading_order(kept).text, self._ocr.name
            return
        assert self._prompts is not None
        prompt = self._prompts.render("ocr")
        answers = self._backend.generate(
            [prompt] * len(rows),
            images=[r.image for r in rows],
            max_new_tokens=self.ocr_max_new_tokens,
            return_errors=True,
        )
        for row, answer in zip(rows, answers, strict=True):
            if isinstance(answer, BaseException):
                row.fail("backend_error", f"ocr: {answer}")
                continue
            try:
                row.ocr_text, row.ocr_engine = parse_ocr(answer), self._backend.name
            except Rejected as err:
                row.fail("ocr_rejected", str(err))

    def _caption(self, rows: list[_Row], contexts: dict[str, dict[str, str]]) -> None:
        if not rows:
            return
        assert self._prompts is not None
        prompts = []
        for row in rows:
            row.lang = "zh" if _fraction(row.sample_id) < self.zh_fraction else "en"
            prompts.append(
                caption_prompt(self._prompts, row.ocr_text or "", row.lang, contexts[row.sample_id])
            )
        answers = self._backend.generate(
            prompts,
            images=[r.image for r in rows],
            max_new_tokens=self.max_new_tokens,
            return_errors=True,
        )
        for row, answer in zip(rows, answers, strict=True):
            if isinstance(answer, BaseException):
                row.fail("backend_error", str(answer))
                continue
            try:
                row.captions = parse_captions(
                    answer, ocr_text=row.ocr_text or "", language=row.lang
                )
            except Rejected as err:
                row.fail("caption_rejected", str(err))

    def _contexts(self, table: pa.Table) -> list[dict[str, str]]:
        """World knowledge per row: alt text, page title, knowledge-graph concept names."""
        alts = table.column("caption_alt").to_pylist()
        metas = table.column("meta").to_pylist()
        concepts = self._concepts(table.column("sample_id"))
        out = []
        for alt, meta, names in zip(alts, metas, concepts, strict=True):
            title = _title(meta)
            out.append(
                {
                    "Alt text": (alt or "").strip(),
                    "Page title": title,
                    "Knowledge-graph concepts": ", ".join(names),
                }
            )
        return out

    def _concepts(self, ids: pa.ChunkedArray) -> list[list[str]]:
        """Names of the concepts ``weights/`` matched to each sample (empty without one)."""
        out: list[list[str]] = [[] for _ in range(len(ids))]
        if self._names is None or self._weights is None:
            return out
        part = self._weights.to_table(
            columns=["sample_id", "concepts"], filter=pc.field("sample_id").isin(ids)
        )
        where = {sid: i for i, sid in enumerate(part.column("sample_id").to_pylist())}
        lists = part.column("concepts").to_pylist()
        n = len(self._names)
        for i, sid in enumerate(ids.to_pylist()):
            found = where.get(sid)
            if found is None or not lists[found]:
                continue
            valid = [c for c in lists[found] if 0 <= c < n][:MAX_CONCEPTS]
            names = self._names.take(pa.array(valid, pa.int64())).to_pylist() if valid else []
            out[i] = list(dict.fromkeys(x for x in names if x))
        return out

    def _table(self, rows: list[_Row]) -> pa.Table:
        assert self._prompts is not None
        model = self._backend.name if self._backend is not None else None
        cols: dict[str, list[Any]] = {name: [] for name in CAPTIONS.names}
        cols[ERROR_DETAIL] = []
        for row in rows:
            ok = row.captions is not None
            keep_ocr = row.ocr_text is not None and (ok or self.ocr != "vlm")
            cols["sample_id"].append(row.sample_id)
            for name in CAPTION_FIELDS:
                cols[name].append(getattr(row.captions, name) if ok else None)
            cols["ocr_text"].append(row.ocr_text if keep_ocr else None)
            cols["caption_lang"].append(row.lang if ok else None)
            cols["prompt_version"].append(self._prompts.version if model else None)
            cols["model"].append(model)
            cols["ocr_engine"].append(row.ocr_engine if keep_ocr else None)
            cols["error"].append(row.error)
            cols[ERROR_DETAIL].append(row.detail)
        return pa.table({name: pa.array(values, pa.string()) for name, values in cols.items()})


@dataclass
class _Row:
    sample_id: str
    image: bytes | None = None
    ocr_text: str | None = None
    ocr_engine: str | None = None
    lang: str = "en"
    captions: Any = None
    error: str | None = None
    detail: str | None = None

    def fail(self, code: str, detail: str) -> None:
        self.error, self.detail = code, detail[:500]


def _fraction(sample_id: str) -> float:
    """A stable number in [0, 1) per sample (language choice)."""
    digest = hashlib.blake2b(sample_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _title(meta: str | None) -> str:
    if not meta:
        return ""
    try:
        data = json.loads(meta)
    except json.JSONDecodeError:
        return ""
    if not isinstance(data, dict):
        return ""
    return next((str(data[k]).strip() for k in TITLE_KEYS if data.get(k)), "")
