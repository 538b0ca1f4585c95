"""A local OpenAI-compatible server in front of any ``TextGenBackend``, for tests.

``serve(backend)`` starts a ``ThreadingHTTPServer`` on 127.0.0.1 (a free port) in a thread and
yields its base URL (``http://127.0.0.1:PORT``), a ``str`` that also carries ``.stats``:

* ``POST /v1/chat/completions``: the last user message's text parts (joined by newlines) and
  its ``image_url`` parts (``data:`` URLs, decoded to bytes, in order) go to
  ``backend.generate([text], images=[images], max_new_tokens=max_tokens, return_errors=True)``;
  the answer comes back as ``choices[0].message.content`` (no ``usage``). System messages are
  ignored (the backend has its own). A row error (an image that does not decode) or a
  malformed request answers 400 with ``{"error": {"message": ...}}``; a backend that raises,
  500.
* ``GET /v1/models``: the backend's name.
* The first ``fail_first`` POSTs answer ``fail_status`` with a JSON error body, before their
  body is read, to exercise a client's retries.

Requests are answered one at a time behind a lock (models are not thread-safe).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from captioner.backends import BackendError


@dataclass
class ServerStats:
    """What the server saw: every POST's status in arrival order."""

    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def posts(self) -> int:
        return len(self.statuses)

    @property
    def ok(self) -> int:
        return self.statuses.count(200)

    @property
    def failed(self) -> int:
        return self.posts - self.ok


class ServedURL(str):
    """The server's base URL; ``stats`` counts its requests."""

    stats: ServerStats


class BadRequest(ValueError):
    pass


def _image_bytes(url: Any) -> bytes:
    if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
        raise BadRequest(f"image_url.url must be a data: URL, got {str(url)[:40]!r}")
    head, payload = url.split(",", 1)
    if not head.endswith(";base64"):
        raise BadRequest(f"image_url.url must be base64 encoded, got {head!r}")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as e:
        raise BadRequest(f"image_url.url is not valid base64: {e}") from e


def parse_request(body: Any) -> tuple[str, list[bytes], int]:
    """(text, images, max_tokens) of a chat-completions body, or ``BadRequest``."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise BadRequest("body must be a JSON object with a 'messages' list")
    users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise BadRequest("messages must hold a user message")
    content = users[-1].get("content")
    if isinstance(content, str):
        texts, images = [content], []
    elif isinstance(content, list):
        texts, images = [], []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                images.append(_image_bytes(part["image_url"].get("url")))
            else:
                raise BadRequest(f"unsupported content part {json.dumps(part)[:80]}")
    else:
        raise BadRequest("user content must be a string or a list of parts")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 64))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}")
    return "\n".join(texts), images, max_tokens


def _failure(status: int, message: str) -> tuple[int, dict]:
    return status, {"error": {"message": message, "code": status}}


class _Handler(BaseHTTPRequestHandler):
    server: Any  # the ThreadingHTTPServer with .backend, .stats, .model_lock, .fail_*

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            return self._reply(*_failure(404, f"no route GET {self.path}"))
        name = self.server.backend.name
        self._reply(200, {"object": "list", "data": [{"id": name, "object": "model"}]})

    def do_POST(self) -> None:
        srv = self.server
        with srv.stats.lock:
            n = srv.stats.posts
            srv.stats.statuses.append(0)  # placeholder: set before the reply is sent
        status, body = self._answer(n)
        with srv.stats.lock:
            srv.stats.statuses[n] = status
        self._reply(status, body)

    def _answer(self, n: int) -> tuple[int, dict]:
        """(status, JSON body) for the ``n``-th POST."""
        srv = self.server
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if n < srv.fail_first:
            return _failure(srv.fail_status, f"injected failure {n + 1}/{srv.fail_first}")
        if self.path.rstrip("/") != "/v1/chat/completions":
            return _failure(404, f"no route POST {self.path}")
        try:
            text, images, max_tokens = parse_request(json.loads(raw or b"null"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return _failure(400, f"body is not JSON: {e}")
        except BadRequest as e:
            return _failure(400, str(e))
        try:
            with srv.model_lock:
                (answer,) = srv.backend.generate(
                    [text], images=[images], max_new_tokens=max_tokens, return_errors=True
                )
        except Exception as e:
            return _failure(500, f"backend failed: {type(e).__name__}: {e}")
        if isinstance(answer, BackendError):
            return _failure(400, str(answer))
        message = {"role": "assistant", "content": answer}
        return 200, {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": srv.backend.name,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(backend: Any, *, fail_first: int = 0, fail_status: int = 503) -> Iterator[ServedURL]:
    """Serve ``backend`` over the OpenAI chat-completions API on localhost until exit."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.backend, srv.stats, srv.model_lock = backend, ServerStats(), threading.Lock()
    srv.fail_first, srv.fail_status = fail_first, fail_status
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    url = ServedURL(f"http://127.0.0.1:{srv.server_address[1]}")
    url.stats = srv.stats
    try:
        yield url
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


class ReplayVLM:
    """Answers in the documented output formats, built from what the prompt carries (the
    transcript, the alt text, the language); for one photo it answers prose without JSON.
    It stands in for a real VLM (none can be downloaded here) behind the real HTTP path."""

    name = "replay-vlm"

    def __init__(self, broken_alt: str) -> None:
        self.prompts: list[str] = []
        self.broken_alt = broken_alt
        self.lock = threading.Lock()

    def generate(self, prompts, *, max_new_tokens=64, images=None, return_errors=False):
        with self.lock:
            self.prompts += list(prompts)
        return [self._answer(p) for p in prompts]

    def _answer(self, prompt: str) -> str:
        if prompt.startswith("Describe this image in detail"):
            return "A photo of a table with plates of food under warm light."
        if prompt.startswith("Two images"):
            return 'Differences:\n["a sign reading OPEN was added", "the plates were removed",]'
        if prompt.startswith("Differences between"):
            lang = re.search(r"in (English|Simplified Chinese)\.", prompt).group(1)
            if lang == "English":
                return 'Instruction: "Add a sign reading OPEN and remove the plates."'
            return "添加写着OPEN的牌子，并移除盘子。"
        ocr = re.search(r"may be empty\): (.*)\n", prompt).group(1)
        ocr = "" if ocr == "(none)" else ocr
        alt = re.search(r"Alt text: (.*)\n", prompt)
        alt = alt.group(1) if alt else "A photo"
        if alt == self.broken_alt:
            return "I think this is a nice picture of some food."
        quoted = f' A sign reads "{ocr}".' if ocr else ""
        if "Simplified Chinese" in prompt:
            answer = {
                "caption_long": f"一张照片，桌上有食物。{quoted}",
                "caption_medium": "桌上有几盘食物。",
                "caption_short": "食物",
                "caption_tags": ["食物", "桌子"],
                "caption_user_prompt": "桌上的食物",
            }
        else:
            answer = {
                "Caption Long": f"{alt.rstrip('.')}, seen from above in daylight.{quoted}",
                "caption_medium": alt,
                "caption_short": alt.split(",")[0][:60],
                "caption_tags": "food, table, plates",
                "caption_user_prompt": "food on a table",
            }
        return "```json\n" + json.dumps(answer, ensure_ascii=False) + ",\n```"
