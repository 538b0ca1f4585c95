"""A vision-language model through ``transformers`` behind the ``TextGenBackend`` protocol.

``VisionTransformersBackend`` loads ``AutoProcessor`` + ``AutoModelForImageTextToText`` from
a hub id or a local folder (Qwen2.5-VL and the other image-text-to-text architectures whose
processor has a chat template). Per prompt it builds one user message whose content is an
``{"type": "image"}`` part per image, in order, then the text part (after an optional system
message), and renders it with the processor's chat template and the generation prompt.

Images are decoded like the profiling stage does (``curation.profiling.decode``: first frame,
EXIF orientation applied, transparency over white) to 8-bit RGB and downscaled, aspect kept,
to at most ``max_pixels`` pixels; the model's processor then applies its own resizing. An
image that does not decode is that row's error (``BackendError`` with its ``index``), found
before batching, so it never touches the other rows; likewise a row the processor rejects
(found by re-running a failed batch row by row). Prompts are sorted by image count and text
length and run ``batch_size`` at a time with left padding and greedy decoding; only the new
tokens are decoded (special tokens skipped) and stripped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from captioner.backends import (
    DEFAULT_MAX_PIXELS,
    DTYPES,
    BackendError,
    ImageEntry,
    _check_inputs,
    _torch_dtype,
    load_error,
    resolve_model,
)
from infra.config import require

log = logging.getLogger(__name__)


def load_rgb(data: bytes, max_pixels: int | None) -> Any:
    """``data`` decoded to an 8-bit RGB PIL image of at most ``max_pixels`` pixels (aspect
    kept; None: as decoded). Raises ``curation.profiling.decode.DecodeError``."""
    from PIL import Image

    from curation.profiling.decode import PILLOW_HARD_LIMIT, decode, to_rgb8

    image = to_rgb8(decode(data, max_pixels=PILLOW_HARD_LIMIT).image)
    w, h = image.size
    if max_pixels is not None and w * h > max_pixels:
        scale = math.sqrt(max_pixels / (w * h))
        size = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


class VisionTransformersBackend:
    """An image-text-to-text model through ``transformers`` (greedy, left-padded batches)."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 4,
        system_prompt: str | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from curation.clip import pick_device

        who = "VisionTransformersBackend"
        require(dtype in DTYPES, "dtype", dtype, f"must be one of {list(DTYPES)}")
        require(batch_size >= 1, "batch_size", batch_size, "must be >= 1")
        require(max_pixels is None or max_pixels >= 1, "max_pixels", max_pixels, "must be >= 1")
        source, is_local = resolve_model(model, who)
        self.name, self.device = model, pick_device(device)
        self.batch_size, self.system_prompt, self.max_pixels = batch_size, system_prompt, max_pixels
        t0 = time.perf_counter()
        try:
            kw = {"trust_remote_code": trust_remote_code}
            self.processor = AutoProcessor.from_pretrained(source, **kw)
            self.model = AutoModelForImageTextToText.from_pretrained(
                source, dtype=_torch_dtype(dtype, self.device), **kw
            )
        except (OSError, ValueError) as e:
            raise load_error(who, source, is_local, e) from e
        self.model.to(self.device).eval()
        tok = self.tokenizer = getattr(self.processor, "tokenizer", None)
        if tok is None or getattr(self.processor, "chat_template", None) is None:
            raise OSError(f"{who}: {source!r} has no processor tokenizer with a chat template")
        tok.padding_side = "left"
        if tok.pad_token is None:
            require(tok.eos_token is not None, "model", model, "tokenizer needs a pad or eos token")
            tok.pad_token = tok.eos_token
        log.info("loaded %s on %s in %.1f s", model, self.device, time.perf_counter() - t0)

    def render(self, prompt: str, n_images: int = 0) -> str:
        """The text the model is given for ``prompt`` with ``n_images`` images before it."""
        content = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": prompt})
        messages: list[dict] = [{"role": "user", "content": content}]
        if self.system_prompt is not None:
            system = [{"type": "text", "text": self.system_prompt}]
            messages.insert(0, {"role": "system", "content": system})
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    def _decode_images(self, images: list[bytes], index: int) -> list[Any]:
        from curation.profiling.decode import DecodeError

        out = []
        for k, data in enumerate(images):
            try:
                out.append(load_rgb(data, self.max_pixels))
            except DecodeError as e:
                raise BackendError(f"images[{index}][{k}]: {e}", index=index) from e
        return out

    def _encode(self, texts: list[str], images: list[list[Any]]) -> Any:
        """The processor's batch (left-padded) on the model's device and dtype."""
        kw: dict[str, Any] = {"images": images} if any(images) else {}
        enc = self.processor(text=texts, return_tensors="pt", padding=True, **kw)
        return enc.to(self.device, dtype=self.model.dtype)

    def _run(self, enc: Any, max_new_tokens: int) -> list[str]:
        import torch

        with torch.inference_mode():
            ids = self.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )  # (B, L + new)
        new = ids[:, enc["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def _batch(
        self, rows: list[int], texts: list[str], pics: dict[int, list[Any]], max_new_tokens: int
    ) -> dict[int, str | BackendError]:
        """Answers for ``rows``. When the processor rejects the batch, each row is encoded
        alone: the rows it rejects become errors and the rest run as one batch (a batch that
        fails with every row fine alone raises)."""
        try:
            enc = self._encode([texts[i] for i in rows], [pics[i] for i in rows])
        except Exception as batch_error:
            out: dict[int, str | BackendError] = {}
            for i in rows:
                try:
                    self._encode([texts[i]], [pics[i]])
                except Exception as e:
                    msg = f"row {i}: the processor rejects it: {type(e).__name__}: {e}"
                    out[i] = BackendError(msg, index=i)
            if not out:
                raise batch_error
            good = [i for i in rows if i not in out]
            return out | (self._batch(good, texts, pics, max_new_tokens) if good else {})
        return dict(zip(rows, self._run(enc, max_new_tokens), strict=True))

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        images: Sequence[ImageEntry] | None = None,
        return_errors: bool = False,
    ) -> list[Any]:
        prompts, encoded = _check_inputs(prompts, images, max_new_tokens)
        out: list[Any] = [None] * len(prompts)
        pics: dict[int, list[Any]] = {}
        for i, ims in enumerate(encoded):
            try:
                pics[i] = self._decode_images(ims, i)
            except BackendError as e:
                if not return_errors:
                    raise
                out[i] = e
        texts = [self.render(p, len(ims)) for p, ims in zip(prompts, encoded, strict=True)]
        order = sorted(pics, key=lambda i: (len(pics[i]), len(texts[i])))
        for s in range(0, len(order), self.batch_size):
            rows = order[s : s + self.batch_size]
            for i, answer in self._batch(rows, texts, pics, max_new_tokens).items():
                if isinstance(answer, BackendError) and not return_errors:
                    raise answer
                out[i] = answer
        return out
