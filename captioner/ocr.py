"""OCR for OCR-first captions: ``RapidOcrEngine.read(image) -> OcrResult``.

The engine wraps ``rapidocr_onnxruntime.RapidOCR`` (PP-OCRv4 detection + recognition, with
the mobile angle classifier). The ONNX models ship inside the PyPI wheel, so it runs offline
on CPU with no downloads. ``read`` returns every text line with its confidence and box, and
the page text in reading order: detections are grouped into rows by vertical overlap (a line
joins a row when at least half of its height overlaps the row's extent), rows run top to
bottom, lines within a row left to right joined by one space, rows joined by "\\n".

**Space recovery.** PP-OCRv4's recogniser is a CTC model whose vocabulary ends in " ", but
greedy decoding usually lets the blank token win in the gap between two Latin words, so
"OPEN DAILY 9AM" reads back as "OPENDAILY9AM". The model still puts visible probability on
" " there, so the engine decodes with one extra rule: between two consecutive emitted
characters that are not both CJK, when the *summed* probability of " " over the blank
columns separating them is at least ``space_threshold`` (default 0.008), the column where
" " is likeliest is decoded as a space. Between two CJK characters nothing is inserted.
Spaces the model emits itself are kept; leading, trailing and repeated spaces are removed.

Validation (325 renders of 25 strings on COCO photos; seven fonts including a monospace, a
serif and SimHei; 16-64 px; with and without a background box; JPEG q85): on the 257 lines
whose characters were read correctly, 250 come back with exactly the rendered spaces (116
without this rule); per character pair the rule errs on 5 of 2,274. The obvious
alternative, the gap between ``return_word_box`` character boxes, errs on ~9 % of pairs at
its best threshold: rapidocr derives those boxes from the same CTC peak columns with one
fixed width per script, so "9AM" shows the same gap between "A" and "M" as between two
words. An ink-projection gap in the line crop fails on text drawn straight onto busy photos.
Known limits: half-width Latin in CJK fonts (SimHei) can gain a space after a narrow letter
("i Phone"), and text under ~20 px occasionally loses one.

The rule hooks the recogniser's CTC decoder (``text_rec.postprocess_op``), an internal of
rapidocr 1.4, when the engine is first used, and fails loudly if its shape changed.
"""

from __future__ import annotations

import importlib.metadata
import io
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DIST = "rapidocr-onnxruntime"
SPACE_THRESHOLD = 0.008
MAX_OCR_ASPECT = 8  # longer side / shorter side given to the detector (see _bounded_aspect)
# Han, kana, CJK punctuation and full-width forms: scripts written without spaces.
_CJK = re.compile("[\u2e80-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003ffff]")


class OcrError(ValueError):
    """One image could not be read (undecodable bytes or a failure inside the OCR model)."""


@dataclass(frozen=True)
class OcrLine:
    text: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels


@dataclass(frozen=True)
class OcrResult:
    text: str  # lines in reading order: " " within a row, "\n" between rows
    lines: tuple[OcrLine, ...]  # same order


class RapidOcrEngine:
    """PP-OCRv4 through rapidocr-onnxruntime, with Latin word spaces recovered."""

    def __init__(
        self,
        *,
        text_score: float = 0.5,
        max_side: int = 2000,
        threads: int | None = None,
        space_threshold: float = SPACE_THRESHOLD,
    ) -> None:
        if not 0.0 <= text_score <= 1.0:
            raise ValueError(f"text_score must be in [0, 1], got {text_score}")
        if max_side < 32:
            raise ValueError(f"max_side must be >= 32, got {max_side}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        if not 0.0 < space_threshold <= 1.0:
            raise ValueError(f"space_threshold must be in (0, 1], got {space_threshold}")
        self.text_score, self.max_side, self.threads = text_score, max_side, threads
        self.space_threshold = space_threshold
        self.name = f"{DIST}-{_version()}/{_model_tag()}"
        self._ocr: Any = None

    def read(self, image: bytes | Image.Image) -> OcrResult:
        """Text lines of one image (encoded bytes or a PIL image), in reading order."""
        bgr = _to_bgr(image)
        ocr = self._engine()
        try:
            found, _ = ocr(_bounded_aspect(bgr))
        except Exception as e:  # cv2 / onnxruntime errors on a pathological image
            h, w = bgr.shape[:2]
            raise OcrError(f"OCR failed on a {w}x{h} image: {type(e).__name__}: {e}") from e
        lines = [_line(quad, text, score) for quad, text, score in found or []]
        return reading_order([line for line in lines if line.text])

    def read_many(self, images: Iterable[bytes | Image.Image]) -> list[OcrResult | OcrError]:
        """``read`` per image; a bad image gives its ``OcrError`` in place, never raises."""
        out: list[OcrResult | OcrError] = []
        for image in images:
            try:
                out.append(self.read(image))
            except OcrError as e:
                out.append(e)
        return out

    def _engine(self) -> Any:
        if self._ocr is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as e:
                raise ImportError(f"OCR needs {DIST}: pip install '{DIST}>=1.4,<2'") from e
            kwargs: dict[str, Any] = {"text_score": self.text_score, "max_side_len": self.max_side}
            if self.threads is not None:
                kwargs |= {"intra_op_num_threads": self.threads, "inter_op_num_threads": 1}
            ocr = RapidOCR(**kwargs)
            ocr.text_rec.postprocess_op = _SpaceDecoder(
                ocr.text_rec.postprocess_op, self.space_threshold
            )
            self._ocr = ocr
        return self._ocr


class _SpaceDecoder:
    """Wraps rapidocr's ``CTCLabelDecode``: marks likely spaces in ``preds``, then decodes."""

    def __init__(self, decoder: Any, threshold: float) -> None:
        chars = getattr(decoder, "character", None)
        if not isinstance(chars, list) or len(chars) < 3 or chars[-1] != " ":
            raise RuntimeError(
                f"{DIST} {_version()}: its CTC decoder no longer has a character list ending "
                f"in ' '; space recovery supports {DIST}>=1.4,<2"
            )
        self.decoder, self.threshold, self.space = decoder, threshold, len(chars) - 1
        self.cjk = np.array([bool(_CJK.match(c)) for c in chars])

    def __call__(self, preds: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        return self.decoder(
            mark_spaces(preds, self.space, self.cjk, self.threshold), *args, **kwargs
        )


def mark_spaces(preds: np.ndarray, space: int, cjk: np.ndarray, threshold: float) -> np.ndarray:
    """Copy of CTC probabilities ``preds`` (B, T, C; blank = 0) with recovered spaces.

    For each pair of consecutive emitted characters, not both CJK, separated only by blank
    columns whose summed P(space) >= ``threshold``: swap the blank and space probabilities at
    the column where P(space) is highest, so greedy decoding emits " " there.
    """
    out = preds.copy()
    best = preds.argmax(axis=2)  # (B, T)
    for b in range(preds.shape[0]):
        emit = np.flatnonzero(best[b] != 0)  # columns emitting a character or a space
        for k0, k1 in itertools.pairwise(emit):
            c0, c1 = best[b, k0], best[b, k1]
            if k1 - k0 < 2 or space in (c0, c1) or (cjk[c0] and cjk[c1]):
                continue
            gap = preds[b, k0 + 1 : k1, space]  # (G,) all blank columns
            if gap.sum() >= threshold:
                k = k0 + 1 + int(gap.argmax())
                out[b, k, 0], out[b, k, space] = preds[b, k, space], preds[b, k, 0]
    return out


def _line(quad: Sequence[Sequence[float]], text: str, score: float) -> OcrLine:
    pts = np.asarray(quad, dtype=np.float64)  # (4, 2)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return OcrLine(
        text=" ".join(text.split()),
        score=float(score),
        box=(float(x0), float(y0), float(x1), float(y1)),
    )


def reading_order(lines: list[OcrLine]) -> OcrResult:
    """Rows by vertical overlap (>= half the line's height), top to bottom, then left to right."""
    rows: list[tuple[float, float, list[OcrLine]]] = []  # (top, bottom, lines)
    for line in sorted(lines, key=lambda ln: (ln.box[1] + ln.box[3]) / 2):
        _, y0, _, y1 = line.box
        if rows:
            top, bottom, members = rows[-1]
            if min(y1, bottom) - max(y0, top) >= 0.5 * max(y1 - y0, 1e-6):
                rows[-1] = (min(top, y0), max(bottom, y1), [*members, line])
                continue
        rows.append((y0, y1, [line]))
    ordered = [sorted(members, key=lambda ln: ln.box[0]) for _, _, members in rows]
    text = "\n".join(" ".join(ln.text for ln in row) for row in ordered)
    return OcrResult(text=text, lines=tuple(ln for row in ordered for ln in row))


def _bounded_aspect(bgr: np.ndarray) -> np.ndarray:
    """``bgr`` with its short side padded (edge colours repeated, bottom or right, so boxes keep
    their coordinates) to at least 1/``MAX_OCR_ASPECT`` of the long side. rapidocr's detector
    scales the *short* side up to 736 px, so its memory grows with the aspect ratio: a 1536x1
    strip asked for a 46080x11520 float array, and a banner of 4000x2 px took over 24 GB."""
    h, w = bgr.shape[:2]
    short = -(-max(h, w) // MAX_OCR_ASPECT)  # ceil
    if min(h, w) >= short:
        return bgr
    pad = ((0, short - h), (0, 0), (0, 0)) if h < w else ((0, 0), (0, short - w), (0, 0))
    return np.pad(bgr, pad, mode="edge")


def _to_bgr(image: bytes | Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 BGR, as rapidocr expects an ndarray; OcrError when undecodable."""
    if isinstance(image, bytes | bytearray | memoryview):
        try:
            with Image.open(io.BytesIO(bytes(image))) as img:
                img.load()
                rgb = img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise OcrError(f"cannot decode image ({len(image)} bytes): {e}") from e
    elif isinstance(image, Image.Image):
        rgb = image.convert("RGB")
    else:
        raise TypeError(f"image must be bytes or a PIL image, got {type(image).__name__}")
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


def _version() -> str:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _model_tag() -> str:
    """Recogniser generation from the wheel's config (e.g. "PP-OCRv4"), without loading it."""
    try:
        import rapidocr_onnxruntime
    except ImportError:
        return "unknown"
    config = Path(rapidocr_onnxruntime.__file__).with_name("config.yaml")
    found = re.search(r"(PP-OCRv\d+)_rec", config.read_text()) if config.is_file() else None
    return found.group(1) if found else "unknown"
