"""Text generation behind one protocol: ``TextGenBackend.generate(prompts) -> texts``.

Everything in zfoundry that asks a language or vision-language model something -- the
knowledge graph's generatability judge and taxonomy naming, the caption programs -- calls
this one protocol, so a run can swap a local model for a served one in its config alone.

**Protocol.** ``generate(prompts, *, max_new_tokens=64, images=None)`` returns one string
per prompt, in order: the model's answer only (no prompt, no special tokens), stripped.
``images``, when given, holds one encoded image (PNG/JPEG/GIF/WebP bytes) or ``None`` per
prompt, for vision-language backends; a text-only backend given any image raises
``ValueError`` saying it is text-only. Decoding is greedy, so the same prompts give the same
answers. ``name`` says which model answered (for provenance columns).

**Backends.**

* ``TransformersBackend``: a causal LM loaded with ``AutoTokenizer`` /
  ``AutoModelForCausalLM`` from a hub id or a local folder (offline: a hub id must already
  be in the Hugging Face cache). A prompt becomes the user message of the tokenizer's chat
  template when it has one (after an optional system message; ``enable_thinking=False`` is
  passed, which Qwen3-style templates read and others ignore), else it is fed raw. Prompts
  are sorted by length and run ``batch_size`` at a time with left padding and greedy
  decoding (``do_sample=False``, whatever the model's generation config says). Text only.
* ``HttpBackend``: an OpenAI-compatible ``/v1/chat/completions`` server (vLLM, SGLang,
  llama.cpp, TGI, OpenAI itself) over ``urllib``: one request per prompt, ``concurrency``
  in flight at once (servers batch concurrent requests), ``temperature`` 0. Images go in
  the user content list as base64 ``data:`` URLs before the text. 5xx, 429 and connection
  errors are retried ``max_retries`` times with exponential backoff; other errors raise
  ``BackendError`` with the HTTP status and the first 200 characters of the body.

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
from typing import Any, Protocol, runtime_checkable

from infra.config import require

log = logging.getLogger(__name__)

KINDS = ("transformers", "http")
DTYPES = ("auto", "fp32", "fp16", "bf16")
# magic bytes -> MIME type of the data URLs HttpBackend sends
IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}


@runtime_checkable
class TextGenBackend(Protocol):
    name: str

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        images: Sequence[bytes | None] | None = None,
    ) -> list[str]:
        """One answer per prompt, in order (generated text only, stripped)."""
        ...


class BackendError(RuntimeError):
    """A backend request failed; ``status`` is the HTTP status (None: no response)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _check_inputs(
    prompts: Sequence[str], images: Sequence[bytes | None] | None, max_new_tokens: int
) -> tuple[list[str], list[bytes | None]]:
    prompts = list(prompts)
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts: must all be strings, got {prompts[bad[0]]!r} at {bad[0]}")
    require(max_new_tokens >= 1, "max_new_tokens", max_new_tokens, "must be >= 1")
    if images is None:
        return prompts, [None] * len(prompts)
    images = list(images)
    require(
        len(images) == len(prompts),
        "images",
        f"{len(images)} entries",
        f"must hold one entry per prompt ({len(prompts)})",
    )
    return prompts, images


def _reject_images(backend: str, images: list[bytes | None]) -> None:
    given = [i for i, im in enumerate(images) if im is not None]
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
        path = Path(model).expanduser()
        looks_local = model.startswith(("/", ".", "~")) or model.count("/") > 1
        if looks_local and not path.is_dir():
            raise FileNotFoundError(f"TransformersBackend: model folder {str(path)!r} not found")
        source = str(path) if path.is_dir() else model
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
            where = "local folder" if path.is_dir() else "hub id (offline: in the HF cache?)"
            raise OSError(f"TransformersBackend: cannot load {source!r} as a {where}: {e}") from e
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
        images: Sequence[bytes | None] | None = None,
    ) -> list[str]:
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

    def payload(self, prompt: str, image: bytes | None, index: int, max_new_tokens: int) -> dict:
        """The JSON body sent for one prompt."""
        content: str | list[dict] = prompt
        if image is not None:
            content = [
                {"type": "image_url", "image_url": {"url": _data_url(image, index)}},
                {"type": "text", "text": prompt},
            ]
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

    def _one(self, prompt: str, image: bytes | None, index: int, max_new_tokens: int) -> str:
        reply = self._post(self.payload(prompt, image, index, max_new_tokens))
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            preview = json.dumps(reply)[:200]
            raise BackendError(f"{self.url}: no choices[0].message in reply: {preview}") from e
        return (content or "").strip()

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        images: Sequence[bytes | None] | None = None,
    ) -> list[str]:
        prompts, imgs = _check_inputs(prompts, images, max_new_tokens)
        for i, im in enumerate(imgs):  # bad image bytes fail before any request
            if im is not None:
                _mime(im, i)
        pairs = enumerate(zip(prompts, imgs, strict=True))
        jobs = [(p, im, i, max_new_tokens) for i, (p, im) in pairs]
        if self.concurrency == 1 or len(jobs) <= 1:
            return [self._one(*job) for job in jobs]
        with ThreadPoolExecutor(min(self.concurrency, len(jobs))) as pool:
            return list(pool.map(lambda job: self._one(*job), jobs))


@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    """Which text-generation backend answers prompts."""

    kind: str = "transformers"
    """``transformers`` (a local causal LM) or ``http`` (an OpenAI-compatible server)."""
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

    def __post_init__(self) -> None:
        require(self.kind in KINDS, "kind", self.kind, f"must be one of {list(KINDS)}")
        require(bool(self.model), "model", self.model, "must name a model")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "must be >= 1")
        require(self.dtype in DTYPES, "dtype", self.dtype, f"must be one of {list(DTYPES)}")
        require(self.timeout > 0, "timeout", self.timeout, "must be > 0")
        if self.kind == "http":
            require(self.url is not None, "url", self.url, "is required with kind = 'http'")
            require(
                self.url.startswith(("http://", "https://")), "url", self.url, "must be http(s)"
            )
            for name in ("device", "dtype"):
                value = getattr(self, name)
                require(value == "auto", name, value, "applies to kind = 'transformers' only")
        else:
            for name in ("url", "api_key_env"):
                value = getattr(self, name)
                require(value is None, name, value, "applies to kind = 'http' only")


def backend_from_config(cfg: BackendConfig) -> TextGenBackend:
    """The backend ``cfg`` names (a transformers model is loaded now)."""
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
