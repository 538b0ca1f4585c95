"""Text generation behind one protocol: ``TextGenBackend.generate(prompts) -> texts``.

Everything in zfoundry that asks a language or vision-language model something -- the
knowledge graph's generatability judge and taxonomy naming, the caption programs -- calls
this one protocol, so a run can swap a local model for a served one in its config alone.

**Protocol.** ``generate(prompts, *, max_new_tokens=64, images=None, return_errors=False)``
returns one string per prompt, in order: the model's answer only (no prompt, no special
tokens), stripped. ``images``, when given, holds one entry per prompt for vision-language
backends: ``None`` (text only), one encoded image (PNG/JPEG/GIF/WebP ``bytes``) or a sequence
of encoded images, which the model sees in that order before the prompt's text (an image pair
for a difference caption). A text-only backend given any image raises ``ValueError`` saying
it is text-only. Decoding is greedy, so the same prompts give the same answers. ``name`` says
which model answered (for provenance columns).

**Per-row errors.** With ``return_errors=False`` (the default) the first failing row raises
(``BackendError``, or ``ValueError`` for input that is wrong before any work, such as bytes
that are no image format). With ``return_errors=True`` a row that fails on its own -- an HTTP
error left after the retries, an image that does not decode, a reply without an answer --
gets a ``BackendError`` (``index``: its row, ``status``: the HTTP status or None) in its slot
instead of a string and the other rows are answered as usual, so a job records the error on
that row and goes on. Errors that are not about one row (bad arguments, a text-only backend
given images, the model failing on a whole batch) still raise.

**Backends.**

* ``TransformersBackend``: a causal LM loaded with ``AutoTokenizer`` /
  ``AutoModelForCausalLM`` from a hub id or a local folder (offline: a hub id must already
  be in the Hugging Face cache). A prompt becomes the user message of the tokenizer's chat
  template when it has one (after an optional system message; ``enable_thinking=False`` is
  passed, which Qwen3-style templates read and others ignore), else it is fed raw. Prompts
  are sorted by length and run ``batch_size`` at a time with left padding and greedy
  decoding (``do_sample=False``, whatever the model's generation config says). Text only.
* ``VisionTransformersBackend`` (``captioner.vlm``): a vision-language model loaded with
  ``AutoProcessor`` / ``AutoModelForImageTextToText`` (Qwen2.5-VL and the like); images are
  decoded with PIL and downscaled to ``max_pixels`` before the model's processor; text-only
  prompts work too. ``backend_from_config`` picks it for ``kind = "transformers"`` when the
  model's config is an image-text-to-text architecture.
* ``HttpBackend``: an OpenAI-compatible ``/v1/chat/completions`` server (vLLM, SGLang,
  llama.cpp, TGI, OpenAI itself) over ``urllib``: one request per prompt, ``concurrency``
  in flight at once (servers batch concurrent requests), ``temperature`` 0. Images go in
  the user content list as base64 ``data:`` URLs (one ``image_url`` part per image, in
  order) before the text. 5xx, 429 and connection errors are retried ``max_retries`` times
  with exponential backoff; other errors raise ``BackendError`` with the HTTP status and the
  first 200 characters of the body (with ``return_errors``: the row's error).

``BackendConfig`` is what configs carry and ``backend_from_config`` builds the backend it
names. ``ask_yes_no`` and ``ask_short_name`` are the two small question forms the
knowledge graph uses, with their answer parsing.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, overload, runtime_checkable

from infra.config import require

log = logging.getLogger(__name__)

KINDS = ("transformers", "http")
DTYPES = ("auto", "fp32", "fp16", "bf16")
DEFAULT_MAX_PIXELS = 1024 * 1024  # vision-language backends: images downscaled to this
# magic bytes -> MIME type of the data URLs HttpBackend sends
IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}


# One ``images`` entry: no image, one encoded image, or several shown in order.
ImageEntry = bytes | Sequence[bytes] | None


class BackendError(RuntimeError):
    """A backend request failed; ``status`` is the HTTP status (None: no response or not
    HTTP), ``index`` the prompt's row when the failure is that row's alone."""

    def __init__(self, message: str, *, status: int | None = None, index: int | None = None):
        super().__init__(message)
        self.status, self.index = status, index


@runtime_checkable
class TextGenBackend(Protocol):
    name: str

    @overload
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        images: Sequence[ImageEntry] | None = None,
        return_errors: Literal[False] = False,
    ) -> list[str]: ...

    @overload
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        images: Sequence[ImageEntry] | None = None,
        return_errors: Literal[True],
    ) -> list[str | BackendError]: ...

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        images: Sequence[ImageEntry] | None = None,
        return_errors: bool = False,
    ) -> list[Any]:
        """One answer per prompt, in order (generated text only, stripped); with
        ``return_errors`` a failed row holds its ``BackendError`` instead."""
        ...


def image_list(entry: ImageEntry, index: int) -> list[bytes]:
    """The encoded images of one ``images`` entry, in order (``[]`` for None)."""
    if entry is None:
        return []
    if isinstance(entry, bytes | bytearray | memoryview):
        return [bytes(entry)]
    if isinstance(entry, str) or not isinstance(entry, Sequence):
        raise ValueError(
            f"images[{index}]: must be None, encoded image bytes or a sequence of them, "
            f"got {type(entry).__name__}"
        )
    out = []
    for k, im in enumerate(entry):
        if not isinstance(im, bytes | bytearray | memoryview):
            raise ValueError(
                f"images[{index}][{k}]: must be encoded image bytes, got {type(im).__name__}"
            )
        out.append(bytes(im))
    return out


def _check_inputs(
    prompts: Sequence[str], images: Sequence[ImageEntry] | None, max_new_tokens: int
) -> tuple[list[str], list[list[bytes]]]:
    """The prompts and, per prompt, its list of encoded images (empty: text only)."""
    prompts = list(prompts)
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts: must all be strings, got {prompts[bad[0]]!r} at {bad[0]}")
    require(max_new_tokens >= 1, "max_new_tokens", max_new_tokens, "must be >= 1")
    if images is None:
        return prompts, [[] for _ in prompts]
    images = list(images)
    require(
        len(images) == len(prompts),
        "images",
        f"{len(images)} entries",
        f"must hold one entry per prompt ({len(prompts)})",
    )
    return prompts, [image_list(im, i) for i, im in enumerate(images)]


def _reject_images(backend: str, images: list[list[bytes]]) -> None:
    given = [i for i, im in enumerate(images) if im]
    if given:
        raise ValueError(
            f"{backend} is text-only, got an image for {len(given)} prompt(s) (first at index "
            f"{given[0]}); use a vision-language backend"
        )


def _torch_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def resolve_model(model: str, who: str) -> tuple[str, bool]:
    """``(source, is_local)`` for ``from_pretrained``: an existing folder, else a hub id. A
    name that looks like a path (``/``, ``.``, ``~`` or two slashes) must be a folder."""
    path = Path(model).expanduser()
    looks_local = model.startswith(("/", ".", "~")) or model.count("/") > 1
    if looks_local and not path.is_dir():
        what = "is a file, not a model folder" if path.exists() else "not found"
        raise FileNotFoundError(f"{who}: model folder {str(path)!r} {what}")
    return (str(path), True) if path.is_dir() else (model, False)


def load_error(who: str, source: str, is_local: bool, err: Exception) -> OSError:
    """The OSError raised when ``from_pretrained`` fails, saying where it looked."""
    where = "local folder" if is_local else "hub id (offline: in the HF cache?)"
    return OSError(f"{who}: cannot load {source!r} as a {where}: {err}")


class TransformersBackend:
    """A causal LM through ``transformers`` (greedy, left-padded batches, text only)."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        system_prompt: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from curation.clip import pick_device

        require(dtype in DTYPES, "dtype", dtype, f"must be one of {list(DTYPES)}")
        require(batch_size >= 1, "batch_size", batch_size, "must be >= 1")
        source, is_local = resolve_model(model, "TransformersBackend")
        self.name, self.device = model, pick_device(device)
        self.batch_size, self.system_prompt = batch_size, system_prompt
        t0 = time.perf_counter()
        try:
            kw = {"trust_remote_code": trust_remote_code}
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kw)
            self.model = AutoModelForCausalLM.from_pretrained(
                source, dtype=_torch_dtype(dtype, self.device), **kw
            )
        except (OSError, ValueError) as e:
            raise load_error("TransformersBackend", source, is_local, e) from e
        self.model.to(self.device).eval()
        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None:
            require(tok.eos_token is not None, "model", model, "tokenizer needs a pad or eos token")
            tok.pad_token = tok.eos_token
        self.chat = getattr(tok, "chat_template", None) is not None
        log.info(
            "loaded %s on %s in %.1f s (chat template: %s)",
            model,
            self.device,
            time.perf_counter() - t0,
            self.chat,
        )

    def render(self, prompt: str) -> str:
        """The text the model is given for ``prompt`` (chat template applied when present)."""
        if not self.chat:
            return prompt
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        images: Sequence[ImageEntry] | None = None,
        return_errors: bool = False,
    ) -> list[Any]:
        """One answer per prompt. Text only, and no row fails on its own here, so
        ``return_errors`` changes nothing (it is accepted for the protocol)."""
        import torch

        prompts, imgs = _check_inputs(prompts, images, max_new_tokens)
        _reject_images("TransformersBackend", imgs)
        texts = [self.render(p) for p in prompts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[str] = [""] * len(texts)
        tok = self.tokenizer
        for s in range(0, len(order), self.batch_size):
            rows = order[s : s + self.batch_size]
            # a chat template writes its own BOS/markers; a raw prompt gets the tokenizer's
            enc = tok(
                [texts[i] for i in rows],
                return_tensors="pt",
                padding=True,
                add_special_tokens=not self.chat,
            ).to(self.device)
            with torch.inference_mode():
                ids = self.model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )  # (B, L + new)
            new = ids[:, enc["input_ids"].shape[1] :]
            for i, text in zip(rows, tok.batch_decode(new, skip_special_tokens=True), strict=True):
                out[i] = text.strip()
        return out


def _mime(image: bytes, index: int) -> str:
    mime = next((m for magic, m in IMAGE_MAGIC.items() if image.startswith(magic)), None)
    if mime is None and image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        raise ValueError(
            f"images[{index}]: not PNG, JPEG, GIF or WebP bytes (starts {image[:12]!r})"
        )
    return mime


def _data_url(image: bytes, index: int) -> str:
    return f"data:{_mime(image, index)};base64,{base64.b64encode(image).decode('ascii')}"


def _endpoint(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return f"{url}/chat/completions" if url.endswith("/v1") else f"{url}/v1/chat/completions"


class HttpBackend:
    """An OpenAI-compatible chat-completions server (urllib; one request per prompt)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        timeout: float = 60,
        max_retries: int = 2,
        system_prompt: str | None = None,
        concurrency: int = 4,
        backoff: float = 0.5,
    ) -> None:
        require(url.startswith(("http://", "https://")), "url", url, "must be an http(s) URL")
        require(timeout > 0, "timeout", timeout, "must be > 0")
        require(max_retries >= 0, "max_retries", max_retries, "must be >= 0")
        require(concurrency >= 1, "concurrency", concurrency, "must be >= 1")
        self.url, self.name, self.system_prompt = _endpoint(url), model, system_prompt
        self.timeout, self.max_retries = timeout, max_retries
        self.concurrency, self.backoff = concurrency, backoff
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key_env is not None:
            key = os.environ.get(api_key_env)
            require(bool(key), "api_key_env", api_key_env, "must name a set environment variable")
            self.headers["Authorization"] = f"Bearer {key}"

    def payload(self, prompt: str, images: ImageEntry, index: int, max_new_tokens: int) -> dict:
        """The JSON body sent for one prompt: one ``image_url`` part per image, in order, then
        the text (a plain string content when there is no image)."""
        content: str | list[dict] = prompt
        encoded = image_list(images, index)
        if encoded:
            content = [
                {"type": "image_url", "image_url": {"url": _data_url(im, index)}} for im in encoded
            ]
            content.append({"type": "text", "text": prompt})
        messages = [{"role": "user", "content": content}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return {
            "model": self.name,
            "messages": messages,
            "max_tokens": max_new_tokens,
            "temperature": 0,
        }

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode()
        where = f"{self.url} (model {self.name!r})"
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read().decode("utf-8", "replace")
                break
            except urllib.error.HTTPError as e:
                text = e.read().decode("utf-8", "replace")[:200]
                err = BackendError(f"{where}: HTTP {e.code}: {text}", status=e.code)
                retry = e.code >= 500 or e.code == 429
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                err, retry = BackendError(f"{where}: no response: {e}"), True
            if not retry or attempt == self.max_retries:
                raise err
            log.warning("%s; retry %d/%d", err, attempt + 1, self.max_retries)
            time.sleep(self.backoff * 2**attempt)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise BackendError(f"{where}: response is not JSON: {raw[:200]}", status=200) from e

    def _one(
        self, prompt: str, images: list[bytes], index: int, max_new_tokens: int, keep: bool
    ) -> str | BackendError:
        """One prompt's answer; with ``keep`` a failure is returned (``index`` set)."""
        try:
            reply = self._post(self.payload(prompt, images, index, max_new_tokens))
            try:
                content = reply["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError) as e:
                preview = json.dumps(reply)[:200]
                raise BackendError(f"{self.url}: no choices[0].message in reply: {preview}") from e
        except BackendError as e:
            e.index = index if e.index is None else e.index
            if keep:
                return e
            raise
        return (content or "").strip()

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        images: Sequence[ImageEntry] | None = None,
        return_errors: bool = False,
    ) -> list[Any]:
        prompts, imgs = _check_inputs(prompts, images, max_new_tokens)
        out: list[Any] = [None] * len(prompts)
        for i, ims in enumerate(imgs):  # bad image bytes fail before any request
            try:
                for im in ims:
                    _mime(im, i)
            except ValueError as e:
                if not return_errors:
                    raise
                out[i] = BackendError(str(e), index=i)
        jobs = [
            (p, ims, i, max_new_tokens, return_errors)
            for i, (p, ims) in enumerate(zip(prompts, imgs, strict=True))
            if out[i] is None
        ]
        if self.concurrency == 1 or len(jobs) <= 1:
            answers = [self._one(*job) for job in jobs]
        else:
            with ThreadPoolExecutor(min(self.concurrency, len(jobs))) as pool:
                answers = list(pool.map(lambda job: self._one(*job), jobs))
        for job, answer in zip(jobs, answers, strict=True):
            out[job[2]] = answer
        return out


@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    """Which text-generation backend answers prompts."""

    kind: str = "transformers"
    """``transformers`` (a local model: a vision-language one when its config is an
    image-text-to-text architecture, else a causal LM) or ``http`` (an OpenAI-compatible
    server)."""
    model: str
    """transformers: hub id or local folder. http: the model name the server serves."""
    url: str | None = None
    """http only: server base URL (``http://host:8000``, ``.../v1`` or the full
    ``.../v1/chat/completions``)."""
    device: str = "auto"
    """transformers only: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:i]``."""
    dtype: str = "auto"
    """transformers only: ``auto`` (bf16 on GPU, fp32 on CPU), ``fp32``, ``fp16``, ``bf16``."""
    batch_size: int = 8
    """transformers: prompts per generate call. http: requests in flight at once."""
    max_new_tokens: int = 64
    """Answer length bound that callers pass to ``generate``."""
    system_prompt: str | None = None
    """System message before every prompt (none: no system message)."""
    api_key_env: str | None = None
    """http only: environment variable holding the bearer token (none: no auth header)."""
    timeout: float = 60
    """http only: seconds per request."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """transformers only, vision-language models: decoded images are downscaled (aspect kept)
    to at most this many pixels before the model's processor, which then applies its own
    limits; 0: no downscaling. An http server resizes images itself."""

    def __post_init__(self) -> None:
        require(self.kind in KINDS, "kind", self.kind, f"must be one of {list(KINDS)}")
        require(bool(self.model), "model", self.model, "must name a model")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "must be >= 1")
        require(self.dtype in DTYPES, "dtype", self.dtype, f"must be one of {list(DTYPES)}")
        require(self.timeout > 0, "timeout", self.timeout, "must be > 0")
        require(self.max_pixels >= 0, "max_pixels", self.max_pixels, "must be >= 0 (0: no limit)")
        if self.kind == "http":
            require(self.url is not None, "url", self.url, "is required with kind = 'http'")
            require(
                self.url.startswith(("http://", "https://")), "url", self.url, "must be http(s)"
            )
            for name in ("device", "dtype"):
                value = getattr(self, name)
                require(value == "auto", name, value, "applies to kind = 'transformers' only")
            require(
                self.max_pixels == DEFAULT_MAX_PIXELS,
                "max_pixels",
                self.max_pixels,
                "applies to kind = 'transformers' only (the server resizes images)",
            )
        else:
            for name in ("url", "api_key_env"):
                value = getattr(self, name)
                require(value is None, name, value, "applies to kind = 'http' only")


def is_vision_language(model: str) -> bool:
    """Whether ``model`` (hub id or folder) has an image-text-to-text config, i.e. loads with
    ``AutoModelForImageTextToText``. False when its config cannot be read (the causal-LM
    loader then reports why)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        source, _ = resolve_model(model, "is_vision_language")
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError):
        return False
    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def backend_from_config(cfg: BackendConfig) -> TextGenBackend:
    """The backend ``cfg`` names (a transformers model is loaded now: a vision-language model
    as ``VisionTransformersBackend``, any other as ``TransformersBackend``)."""
    if cfg.kind == "http":
        assert cfg.url is not None  # checked by BackendConfig
        return HttpBackend(
            cfg.url,
            cfg.model,
            api_key_env=cfg.api_key_env,
            timeout=cfg.timeout,
            system_prompt=cfg.system_prompt,
            concurrency=cfg.batch_size,
        )
    if is_vision_language(cfg.model):
        from captioner.vlm import VisionTransformersBackend  # vlm imports this module

        return VisionTransformersBackend(
            cfg.model,
            device=cfg.device,
            dtype=cfg.dtype,
            batch_size=cfg.batch_size,
            system_prompt=cfg.system_prompt,
            max_pixels=cfg.max_pixels or None,
        )
    return TransformersBackend(
        cfg.model,
        device=cfg.device,
        dtype=cfg.dtype,
        batch_size=cfg.batch_size,
        system_prompt=cfg.system_prompt,
    )


YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
NAME_LABEL = re.compile(r"^(?:category|name)(?: name)?\s*[:\-]\s*", re.IGNORECASE)
NAME_STRIP = " \t\"'`*_.,;:!?()[]{}<>“”‘’«»"


def _ask(backend: TextGenBackend, prompts: list[str], max_new_tokens: int) -> list[str]:
    answers = backend.generate(prompts, max_new_tokens=max_new_tokens)
    if len(answers) != len(prompts):
        raise BackendError(
            f"backend {backend.name!r} returned {len(answers)} answers for {len(prompts)} prompts"
        )
    return answers


def ask_yes_no(
    backend: TextGenBackend, questions: Sequence[str], *, max_new_tokens: int = 8
) -> list[bool | None]:
    """Ask each question for a yes/no answer: True/False from the first ``yes``/``no`` word of
    the answer (any case), None when it has neither."""
    prompts = [f"{q.strip()}\nAnswer with one word: yes or no." for q in questions]
    answers = _ask(backend, prompts, max_new_tokens)
    out: list[bool | None] = []
    for a in answers:
        m = YES_NO.search(a)
        out.append(None if m is None else m.group(1).lower() == "yes")
    return out


def clean_name(answer: str, *, max_words: int = 6) -> str:
    """A model's category-name answer reduced to a name: first non-empty line, a leading
    ``Name:``/``Category:`` label, surrounding quotes and punctuation removed, at most
    ``max_words`` words ("" when nothing is left)."""
    line = next((ln for ln in answer.splitlines() if ln.strip(NAME_STRIP)), "")
    line = NAME_LABEL.sub("", line.strip(NAME_STRIP)).strip(NAME_STRIP)
    return " ".join(line.split()[:max_words]).strip(NAME_STRIP)


def ask_short_name(
    backend: TextGenBackend,
    members: Sequence[Sequence[str]],
    *,
    max_new_tokens: int = 16,
    max_words: int = 6,
) -> list[str]:
    """A short noun-phrase name per group of example tags (``clean_name`` of the answer; the
    group's first tag when the answer cleans to nothing)."""
    groups = [list(m) for m in members]
    empty = [i for i, g in enumerate(groups) if not g]
    require(not empty, "members", empty[:1], "must not hold an empty group (index shown)")
    prompts = [
        "Give a short noun-phrase name (1-4 words) for a category containing these example "
        f"tags: {', '.join(g)}.\nAnswer with the name only."
        for g in groups
    ]
    answers = _ask(backend, prompts, max_new_tokens)
    names = (clean_name(a, max_words=max_words) for a in answers)
    return [name or g[0] for name, g in zip(names, groups, strict=True)]
