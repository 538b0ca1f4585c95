"""Text-generation backends: a tiny random causal LM through transformers, an
OpenAI-compatible HTTP server on localhost, and the yes/no and naming helpers."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from captioner.backends import (
    BackendConfig,
    BackendError,
    HttpBackend,
    TextGenBackend,
    TransformersBackend,
    ask_short_name,
    ask_yes_no,
    backend_from_config,
    clean_name,
)

CORPUS = [
    "a photo of a red dog on the grass",
    "is this a cat yes or no",
    "name the category of these tags",
    "the quick brown fox jumps over the lazy dog",
]
SPECIALS = ["<unk>", "<pad>", "</s>", "<system>", "<user>", "<assistant>"]
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
PROMPTS = ["a red dog", "is this a cat", "the quick brown fox jumps", "name", "lazy dog on grass"]


def _save_tiny_lm(folder: Path, *, chat_template: str | None) -> Path:
    """A word-level tokenizer trained on CORPUS and a 2-layer random Qwen3, saved together."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    )
    tok.chat_template = chat_template
    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        initializer_range=0.5,  # spread-out logits: greedy picks are not near-ties
        tie_word_embeddings=False,
    )
    Qwen3ForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return _save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), chat_template=TEMPLATE)


def _n_tokens(backend: TransformersBackend, text: str) -> int:
    return len(backend.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_transformers_backend_is_deterministic_and_batching_does_not_change_answers(tiny_lm):
    b4 = TransformersBackend(str(tiny_lm), device="cpu", batch_size=4)
    assert isinstance(b4, TextGenBackend) and b4.name == str(tiny_lm)
    out = b4.generate(PROMPTS, max_new_tokens=6)
    assert len(out) == len(PROMPTS) and all(isinstance(o, str) for o in out)
    assert len(set(out)) > 1 and all(o == o.strip() for o in out)
    assert b4.generate(PROMPTS, max_new_tokens=6) == out
    # left padding done right: prompts alone (no padding) give the same greedy answers
    b1 = TransformersBackend(str(tiny_lm), device="cpu", batch_size=1)
    assert b1.generate(PROMPTS, max_new_tokens=6) == out
    assert b4.generate(PROMPTS[::-1], max_new_tokens=6) == out[::-1]
    assert b4.generate([]) == []


def test_transformers_backend_returns_only_the_new_tokens_of_the_templated_prompt(tiny_lm):
    import torch

    b = TransformersBackend(str(tiny_lm), device="cpu", system_prompt="name these tags")
    text = b.render("a red dog")
    assert text == "<system> name these tags <user> a red dog <assistant>"
    ids = b.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        full = b.model.generate(ids, max_new_tokens=5, do_sample=False)
    expected = b.tokenizer.decode(full[0, ids.shape[1] :], skip_special_tokens=True).strip()
    assert b.generate(["a red dog"], max_new_tokens=5) == [expected]
    assert expected and "<assistant>" not in expected


def test_transformers_backend_bounds_new_tokens(tiny_lm):
    b = TransformersBackend(str(tiny_lm), device="cpu", batch_size=2)
    three = [_n_tokens(b, o) for o in b.generate(PROMPTS, max_new_tokens=3)]
    assert max(three) == 3
    one = [_n_tokens(b, o) for o in b.generate(PROMPTS, max_new_tokens=1)]
    assert max(one) == 1 and min(one) >= 0  # an immediate special token decodes to ""
    assert max(_n_tokens(b, o) for o in b.generate(PROMPTS, max_new_tokens=8)) > 3


def test_transformers_backend_without_chat_template_feeds_the_raw_prompt(tmp_path):
    folder = _save_tiny_lm(tmp_path / "plain", chat_template=None)
    b = TransformersBackend(str(folder), device="cpu", system_prompt="ignored")
    assert b.render("a red dog") == "a red dog"
    assert len(b.generate(["a red dog", "is this a cat"], max_new_tokens=2)) == 2


def test_transformers_backend_rejects_images_and_bad_paths(tiny_lm, tmp_path):
    b = TransformersBackend(str(tiny_lm), device="cpu")
    with pytest.raises(ValueError, match=r"text-only.*index 1"):
        b.generate(["a", "b"], images=[None, b"\x89PNG\r\n\x1a\nxx"])
    with pytest.raises(ValueError, match="images: must hold one entry per prompt"):
        b.generate(["a", "b"], images=[None])
    assert len(b.generate(["a", "b"], images=[None, None], max_new_tokens=1)) == 2
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        TransformersBackend(str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError, match=re.escape(f"cannot load '{empty}' as a local folder")):
        TransformersBackend(str(empty))


def test_backend_config_validates_and_builds_the_named_backend(tiny_lm):
    b = backend_from_config(
        BackendConfig(model=str(tiny_lm), device="cpu", batch_size=3, system_prompt="hi")
    )
    assert isinstance(b, TransformersBackend) and b.batch_size == 3 and b.system_prompt == "hi"
    h = backend_from_config(BackendConfig(kind="http", model="m", url="http://h:1/v1"))
    assert isinstance(h, HttpBackend) and h.url == "http://h:1/v1/chat/completions"
    for kwargs, field in [
        ({"kind": "http", "model": "m"}, "url"),
        ({"kind": "http", "model": "m", "url": "h:1"}, "url"),
        ({"kind": "http", "model": "m", "url": "http://h", "device": "cuda"}, "device"),
        ({"model": "m", "url": "http://h"}, "url"),
        ({"kind": "vllm", "model": "m"}, "kind"),
        ({"model": ""}, "model"),
        ({"model": "m", "batch_size": 0}, "batch_size"),
        ({"model": "m", "dtype": "fp8"}, "dtype"),
    ]:
        with pytest.raises(ValueError, match=f"^{field}: "):
            BackendConfig(**kwargs)


# ---- HttpBackend against a local OpenAI-format server --------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
            status, text = srv.script.pop(0) if srv.script else (200, None)
        if text is None:  # echo what the request asked, so the test checks the body
            user = body["messages"][-1]["content"]
            if isinstance(user, list):
                n_img = sum(part["type"] == "image_url" for part in user)
                user = next(part["text"] for part in user if part["type"] == "text")
            else:
                n_img = 0
            answer = f" {body['model']}|{user}|{n_img}|{body['max_tokens']} \n"
            text = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]})
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.lock, srv.seen, srv.script = threading.Lock(), [], []
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _image(fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


def test_http_backend_sends_openai_chat_requests_in_order(server, monkeypatch):
    monkeypatch.setenv("ZF_TEST_KEY", "sekret")
    b = HttpBackend(
        server.base, "tiny-vlm", api_key_env="ZF_TEST_KEY", system_prompt="be brief", concurrency=3
    )
    assert isinstance(b, TextGenBackend) and b.name == "tiny-vlm"
    png, jpeg = _image("PNG"), _image("JPEG")
    prompts = [f"prompt {i}" for i in range(6)]
    out = b.generate(prompts, max_new_tokens=7, images=[png, None, jpeg, None, None, None])
    assert out == [f"tiny-vlm|prompt {i}|{int(i in (0, 2))}|7" for i in range(6)]
    assert len(server.seen) == 6
    by_prompt = {}
    for req in server.seen:
        assert req["path"] == "/v1/chat/completions"
        assert req["headers"]["Authorization"] == "Bearer sekret"
        body = req["body"]
        assert body["model"] == "tiny-vlm" and body["temperature"] == 0
        assert body["messages"][0] == {"role": "system", "content": "be brief"}
        user = body["messages"][1]
        assert user["role"] == "user"
        text = user["content"] if isinstance(user["content"], str) else user["content"][1]["text"]
        by_prompt[text] = user["content"]
    assert by_prompt["prompt 1"] == "prompt 1"
    for key, raw, mime in [("prompt 0", png, "image/png"), ("prompt 2", jpeg, "image/jpeg")]:
        image_part, text_part = by_prompt[key]
        assert text_part == {"type": "text", "text": key}
        url = image_part["image_url"]["url"]
        head, b64 = url.split(",", 1)
        assert head == f"data:{mime};base64" and base64.b64decode(b64) == raw


def test_http_backend_rejects_non_image_bytes_before_any_request(server):
    b = HttpBackend(server.base, "m")
    with pytest.raises(ValueError, match=r"images\[1\]: not PNG"):
        b.generate(["a", "b"], images=[None, b"plain text"])
    assert server.seen == []


def test_http_backend_retries_server_errors(server):
    server.script = [(500, "overloaded"), (503, "still busy")]
    b = HttpBackend(server.base + "/v1/", "m", max_retries=2, backoff=0.0)
    assert b.generate(["hello"], max_new_tokens=3) == ["m|hello|0|3"]
    assert len(server.seen) == 3
    server.seen.clear()
    server.script = [(500, "down")] * 3
    with pytest.raises(BackendError, match="HTTP 500: down") as err:
        HttpBackend(server.base, "m", max_retries=1, backoff=0.0).generate(["hello"])
    assert err.value.status == 500 and len(server.seen) == 2


def test_http_backend_client_errors_fail_at_once_with_status_and_body(server):
    body = json.dumps({"error": {"message": "model 'nope' not found " + "x" * 300}})
    server.script = [(400, body)]
    with pytest.raises(BackendError) as err:
        HttpBackend(server.base, "nope", max_retries=3, backoff=0.0).generate(["hi"])
    msg = str(err.value)
    assert err.value.status == 400 and "HTTP 400" in msg and "model 'nope' not found" in msg
    assert body[:200] in msg and body[:201] not in msg
    assert len(server.seen) == 1
    server.script = [(200, "not json at all")]
    with pytest.raises(BackendError, match="not JSON: not json at all"):
        HttpBackend(server.base, "m").generate(["hi"])


def test_http_backend_retries_connection_errors_then_names_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = HttpBackend(f"http://127.0.0.1:{port}", "m", max_retries=1, backoff=0.0, timeout=2)
    where = re.escape(f"127.0.0.1:{port}/v1/chat/completions")
    with pytest.raises(BackendError, match=f"{where}.*no response"):
        b.generate(["hi"])
    with pytest.raises(ValueError, match="api_key_env"):
        HttpBackend("http://h", "m", api_key_env="ZF_SURELY_UNSET_VARIABLE")


# ---- helpers -----------------------------------------------------------------------------


class ScriptedBackend:
    """Answers from a list, recording what it was asked (the helpers' input, not a mock)."""

    name = "scripted"

    def __init__(self, answers: list[str]):
        self.answers, self.asked = answers, []

    def generate(self, prompts, *, max_new_tokens=64, images=None):
        self.asked.append((list(prompts), max_new_tokens))
        return self.answers[: len(prompts)]


def test_ask_yes_no_reads_the_first_yes_or_no_word():
    answers = ["Yes.", "no, it is abstract", "NO", "I think so", "Answer: yes, not no", "Nobody"]
    backend = ScriptedBackend([*answers, "Yesterday"])
    questions = [f"q{i}?" for i in range(7)]
    assert ask_yes_no(backend, questions) == [True, False, False, None, True, None, None]
    prompts, max_new = backend.asked[0]
    assert max_new == 8 and all(p.startswith(f"q{i}?\n") for i, p in enumerate(prompts))
    assert all("yes or no" in p for p in prompts)
    with pytest.raises(BackendError, match="returned 1 answers for 2 prompts"):
        ask_yes_no(ScriptedBackend(["yes"]), ["a?", "b?"])


def test_ask_short_name_cleans_answers_and_falls_back_to_the_first_member():
    backend = ScriptedBackend(
        [
            '"Dog breeds."\nThese tags all name dogs.',
            "Category: musical instruments",
            "  ",
            "\n**Sea animals**",
            "one two three four five six seven eight",
        ]
    )
    members = [["poodle", "beagle"], ["violin", "drum"], ["tram", "bus"], ["crab"], ["x"]]
    names = ask_short_name(backend, members)
    assert names == [
        "Dog breeds",
        "musical instruments",
        "tram",
        "Sea animals",
        "one two three four five six",
    ]
    prompts, _ = backend.asked[0]
    assert "1-4 words" in prompts[0] and "poodle, beagle" in prompts[0]
    assert clean_name("'Name: kitchen tools!'") == "kitchen tools"
    with pytest.raises(ValueError, match="members"):
        ask_short_name(backend, [["a"], []])
