"""A stdlib-only, OpenAI-compatible stub server for running real lm-eval jobs offline.

Run it as a script::

    python tests/support/stub_openai.py --port 0 --port-file /tmp/port [--delay 0.2]
        [--fail-first N --fail-status 500] [--quiet] [--tasks-dir DIR] [--no-tokenizer]

It writes the bound port to ``--port-file`` (atomically) and then prints
``LISTENING <port>`` on stdout. SIGTERM / SIGINT shut it down cleanly (exit code 0).

Or in-process::

    with start_stub(delay_s=0.1) as stub:
        stub.completions_url  # http://127.0.0.1:<port>/v1/completions
        stub.stats()

Routes:

* ``POST /v1/completions``: ``prompt`` as str, list[str], list[int] or list[list[int]].
  With ``echo`` + ``logprobs`` it answers loglikelihood requests (one ``token_logprobs`` /
  ``top_logprobs`` entry per prompt token plus one generated token); otherwise it generates.
* ``POST /v1/chat/completions``: answers the last user message.
* vLLM-style remote tokenizer: ``GET /tokenizer_info``, ``POST /tokenize``,
  ``POST /detokenize``. Byte-level: ids 0-255 are UTF-8 bytes, id 256 is ``<|endoftext|>``.
* ``GET /health``, ``GET /v1/models``, ``GET /stats``, ``POST /stats/reset``.

The stub "knows" the answers of every ``*.jsonl`` file in the tasks directory (default:
``tasks/`` next to this file): rows with ``question`` + ``choices`` + ``label`` (multiple
choice) or ``question`` + ``answer`` (generation). It finds the question that occurs last
in the prompt; for loglikelihood the continuation that ends with the correct choice gets
the highest (and greedy) logprob, and generation returns the correct answer text.

A fixed answer pattern makes scores differ deterministically: a request whose ``model`` is
``stub-wrong-<m>-<r>`` gets a wrong answer for every question at row ``i`` (0-based, in its
own file) with ``i % m == r`` (the next choice, or ``wrong <answer>`` for generation).

``GET /stats`` returns ``{"routes": {"POST /v1/completions": n, ...}, "v1_requests",
"prompts", "loglikelihood_prompts", "generation_prompts", "chat_requests",
"failures_injected", "client_disconnects", "in_flight", "delay_s", "fail_remaining"}``.
``/v1`` requests are counted on arrival (before the delay); ``/stats`` routes are not
counted; ``client_disconnects`` (clients gone before the answer was written) is best effort.

``--delay S`` sleeps S seconds in every ``/v1/...`` request (not the tokenizer routes), so
lm-eval's "Requesting API" progress is observable. ``--fail-first N`` answers the first N
``/v1/...`` requests with ``--fail-status`` (default 500).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, ClassVar, TypeGuard

DEFAULT_TASKS_DIR = Path(__file__).resolve().parent / "tasks"
EOS_TOKEN = "<|endoftext|>"
EOS_ID = 256
VOCAB_SIZE = 257
MAX_MODEL_LEN = 4096
MODEL_NAME = "stub-model"

# Logprob levels: every "neutral" token is a confident greedy token; the tokens of a
# wrong answer choice are far less likely than those of the right one.
NEUTRAL_LOGPROB = -0.1
CORRECT_LOGPROB = -0.01
WRONG_LOGPROB = -5.0
BEST_ALTERNATIVE = "<|best|>"

JSONDict = dict[str, Any]


# --------------------------------------------------------------------------- tokenizer


def encode(text: str) -> list[int]:
    """Byte-level encoding; the literal ``<|endoftext|>`` becomes the single id 256."""
    ids: list[int] = []
    for i, part in enumerate(text.split(EOS_TOKEN)):
        if i:
            ids.append(EOS_ID)
        ids.extend(part.encode("utf-8"))
    return ids


def decode(ids: list[int]) -> str:
    """Inverse of :func:`encode` (invalid UTF-8 byte runs are replaced with U+FFFD)."""
    out: list[str] = []
    buf = bytearray()
    for tok in ids:
        if tok == EOS_ID:
            out.append(buf.decode("utf-8", errors="replace"))
            buf.clear()
            out.append(EOS_TOKEN)
        else:
            buf.append(tok)
    out.append(buf.decode("utf-8", errors="replace"))
    return "".join(out)


def token_str(tok: int) -> str:
    """OpenAI-style display string of one token (non-ASCII bytes as ``bytes:\\xNN``)."""
    if tok == EOS_ID:
        return EOS_TOKEN
    if tok < 128:
        return chr(tok)
    return f"bytes:\\x{tok:02x}"


def _valid_ids(value: Any) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < VOCAB_SIZE for t in value
    )


# --------------------------------------------------------------------------- knowledge


@dataclass(frozen=True)
class Fact:
    question: str
    answer: str
    choices: tuple[str, ...] = ()
    row: int = 0  # the row in its file (for answer patterns)


def load_facts(tasks_dir: Path) -> list[Fact]:
    """Read every ``*.jsonl`` in ``tasks_dir`` into question -> answer facts."""
    facts: list[Fact] = []
    for path in sorted(tasks_dir.glob("*.jsonl")):
        for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("question"), str):
                continue
            choices = row.get("choices")
            label = row.get("label")
            if isinstance(choices, list) and isinstance(label, int):
                texts = tuple(str(c) for c in choices)
                facts.append(Fact(row["question"], texts[label], texts, index))
            elif "answer" in row:
                facts.append(Fact(row["question"], str(row["answer"]), (), index))
    return facts


WRONG_PATTERN = re.compile(r"stub-wrong-([1-9][0-9]*)-([0-9]+)")


def facts_for(facts: list[Fact], model: Any) -> list[Fact]:
    """The facts a request's ``model`` answers from: with ``stub-wrong-<m>-<r>``, the rows
    ``i % m == r`` answer wrong (see the module docstring); any other model, all right."""
    match = WRONG_PATTERN.fullmatch(model) if isinstance(model, str) else None
    if match is None:
        return facts
    modulus, remainder = int(match.group(1)), int(match.group(2))
    return [_wrong(fact) if fact.row % modulus == remainder else fact for fact in facts]


def _wrong(fact: Fact) -> Fact:
    if fact.choices:
        nxt = fact.choices[(fact.choices.index(fact.answer) + 1) % len(fact.choices)]
        return Fact(fact.question, nxt, fact.choices, fact.row)
    return Fact(fact.question, f"wrong {fact.answer}", (), fact.row)


def find_fact(facts: list[Fact], text: str) -> Fact | None:
    """The fact whose question ends last in ``text`` (few-shot prompts hold several)."""
    best: Fact | None = None
    best_key = (-1, -1)
    for fact in facts:
        idx = text.rfind(fact.question)
        if idx < 0:
            continue
        key = (idx + len(fact.question), len(fact.question))
        if key > best_key:
            best, best_key = fact, key
    return best


def answer_text(facts: list[Fact], text: str) -> str:
    fact = find_fact(facts, text)
    return fact.answer if fact is not None else "I don't know"


def score_prompt(facts: list[Fact], ids: list[int]) -> JSONDict:
    """Echoed logprobs for ``ids`` plus one generated token (an OpenAI ``logprobs`` object).

    If the prompt ends with one of the choices of the question it contains, the bytes of
    that choice get CORRECT_LOGPROB (greedy) or WRONG_LOGPROB (not greedy); every other
    token gets NEUTRAL_LOGPROB (greedy). The first token has no logprob (``None``), as
    with the real API.
    """
    n = len(ids)
    suffix_len = 0
    suffix_lp = NEUTRAL_LOGPROB
    text = decode(ids)
    fact = find_fact(facts, text)
    if fact is not None:
        candidates = fact.choices or (fact.answer,)
        matches = [c for c in candidates if c and text.endswith(c)]
        if matches:
            chosen = max(matches, key=len)
            suffix_len = min(len(encode(chosen)), n - 1)
            suffix_lp = CORRECT_LOGPROB if chosen == fact.answer else WRONG_LOGPROB

    token_logprobs: list[float | None] = [None]
    top_logprobs: list[dict[str, float] | None] = [None]
    for pos in range(1, n):
        lp = suffix_lp if pos >= n - suffix_len else NEUTRAL_LOGPROB
        tok = token_str(ids[pos])
        top = {tok: lp}
        if lp == WRONG_LOGPROB:
            top = {BEST_ALTERNATIVE: CORRECT_LOGPROB, tok: lp}
        token_logprobs.append(lp)
        top_logprobs.append(top)
    # the one generated token (max_tokens=1)
    token_logprobs.append(NEUTRAL_LOGPROB)
    top_logprobs.append({EOS_TOKEN: NEUTRAL_LOGPROB})

    tokens = [token_str(t) for t in ids] + [EOS_TOKEN]
    offsets: list[int] = []
    pos_chars = 0
    for t in ids:
        offsets.append(pos_chars)
        pos_chars += len(decode([t]))
    offsets.append(pos_chars)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": offsets,
    }


def truncate(text: str, stop: list[str], max_tokens: int | None) -> tuple[str, str]:
    """Apply stop sequences and a max_tokens budget (tokens = bytes). Returns (text, reason)."""
    reason = "stop"
    cut = len(text)
    for s in stop:
        if s:
            idx = text.find(s)
            if 0 <= idx < cut:
                cut = idx
    text = text[:cut]
    if max_tokens is not None and max_tokens >= 0:
        ids = encode(text)
        if len(ids) > max_tokens:
            text = decode(ids[:max_tokens])
            reason = "length"
    return text, reason


def _stop_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for s in value if isinstance(s, str)]
    return []


def _max_tokens(payload: JSONDict, *keys: str) -> int | None:
    for key in keys:
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


# --------------------------------------------------------------------------- state


class BadRequest(Exception):
    pass


@dataclass
class StubState:
    facts: list[Fact]
    delay_s: float = 0.0
    fail_remaining: int = 0
    fail_status: int = 500
    tokenizer_enabled: bool = True
    quiet: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)
    routes: dict[str, int] = field(default_factory=dict)
    v1_requests: int = 0
    prompts: int = 0
    loglikelihood_prompts: int = 0
    generation_prompts: int = 0
    chat_requests: int = 0
    failures_injected: int = 0
    client_disconnects: int = 0
    in_flight: int = 0
    counter: int = 0

    def snapshot(self) -> JSONDict:
        with self.lock:
            return {
                "routes": dict(self.routes),
                "v1_requests": self.v1_requests,
                "prompts": self.prompts,
                "loglikelihood_prompts": self.loglikelihood_prompts,
                "generation_prompts": self.generation_prompts,
                "chat_requests": self.chat_requests,
                "failures_injected": self.failures_injected,
                "client_disconnects": self.client_disconnects,
                "in_flight": self.in_flight,
                "delay_s": self.delay_s,
                "fail_remaining": self.fail_remaining,
            }

    def reset(self) -> None:
        """Zero the counters (``in_flight``, delay and the failure budget are kept)."""
        with self.lock:
            self.routes.clear()
            self.v1_requests = self.prompts = 0
            self.loglikelihood_prompts = self.generation_prompts = 0
            self.chat_requests = self.failures_injected = self.client_disconnects = 0

    def next_id(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: StubState) -> None:
        self.state = state
        super().__init__(address, StubHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Client disconnects while reading/writing are normal when jobs are cancelled.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "StubOpenAI/1.0"
    # Without this, keep-alive requests stall ~40 ms each (Nagle + delayed ACK).
    disable_nagle_algorithm = True
    server: StubServer

    # ------------------------------------------------------------------ plumbing

    @property
    def state(self) -> StubState:
        return self.server.state

    def log_message(self, format: str, *args: Any) -> None:
        if not self.state.quiet:
            super().log_message(format, *args)

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client went away (e.g. lm_eval was killed mid-request): count it, no traceback.
            self.close_connection = True
            with self.state.lock:
                self.state.client_disconnects += 1

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "code": status}})

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_json(self) -> JSONDict:
        raw = self._read_body()
        try:
            payload = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"invalid JSON body: {exc}") from exc
        if not isinstance(payload, dict):
            raise BadRequest("JSON body must be an object")
        return payload

    def _count(self, route: str) -> None:
        with self.state.lock:
            self.state.routes[route] = self.state.routes.get(route, 0) + 1

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        route = f"{method} {path}"
        handler = self._ROUTES.get(route)
        if method == "POST" and handler is None:
            self._read_body()  # keep the connection in sync
        if handler is None:
            self._error(HTTPStatus.NOT_FOUND, f"no route {route}", "not_found")
            return
        if not path.startswith("/stats"):
            self._count(route)
        try:
            if path.startswith("/v1/") and method == "POST":
                self._v1(handler)
            else:
                handler(self)
        except BadRequest as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))

    def _v1(self, handler: Callable[..., None]) -> None:
        state = self.state
        payload = self._read_json()
        with state.lock:
            state.v1_requests += 1
            state.in_flight += 1
        try:
            if state.delay_s > 0:
                state.closing.wait(state.delay_s)
            with state.lock:
                fail = state.fail_remaining > 0
                if fail:
                    state.fail_remaining -= 1
                    state.failures_injected += 1
            if fail:
                self._error(state.fail_status, "injected failure", "server_error")
                return
            handler(self, payload)
        finally:
            with state.lock:
                state.in_flight -= 1

    # ------------------------------------------------------------------ routes

    def _health(self) -> None:
        self._send_json(HTTPStatus.OK, {"status": "ok"})

    def _models(self) -> None:
        self._send_json(
            HTTPStatus.OK,
            {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "stub"}]},
        )

    def _stats(self) -> None:
        self._send_json(HTTPStatus.OK, self.state.snapshot())

    def _stats_reset(self) -> None:
        self._read_body()
        self.state.reset()
        self._send_json(HTTPStatus.OK, self.state.snapshot())

    def _tokenizer_guard(self) -> bool:
        if not self.state.tokenizer_enabled:
            self._error(HTTPStatus.NOT_FOUND, "tokenizer routes disabled", "not_found")
            return False
        return True

    def _tokenizer_info(self) -> None:
        if self._tokenizer_guard():
            self._send_json(
                HTTPStatus.OK,
                {
                    "tokenizer_class": "StubByteTokenizer",
                    "eos_token": EOS_TOKEN,
                    "bos_token": None,
                    "pad_token": None,
                    "model_max_length": MAX_MODEL_LEN,
                    "vocab_size": VOCAB_SIZE,
                },
            )

    def _tokenize(self) -> None:
        payload = self._read_json()
        if not self._tokenizer_guard():
            return
        prompt = payload.get("prompt")
        if prompt is None and isinstance(payload.get("messages"), list):
            prompt = _messages_text(payload["messages"])
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string")
        tokens = encode(prompt)
        self._send_json(
            HTTPStatus.OK,
            {"count": len(tokens), "max_model_len": MAX_MODEL_LEN, "tokens": tokens},
        )

    def _detokenize(self) -> None:
        payload = self._read_json()
        if not self._tokenizer_guard():
            return
        tokens = payload.get("tokens")
        if not _valid_ids(tokens):
            raise BadRequest(f"'tokens' must be a list of ints in [0, {VOCAB_SIZE})")
        self._send_json(HTTPStatus.OK, {"prompt": decode(tokens)})

    def _completions(self, payload: JSONDict) -> None:
        state = self.state
        facts = facts_for(state.facts, payload.get("model"))
        prompts = _normalize_prompts(payload.get("prompt"))
        echo = bool(payload.get("echo"))
        scoring = echo and payload.get("logprobs") is not None
        stop = _stop_list(payload.get("stop"))
        max_tokens = _max_tokens(payload, "max_tokens")
        choices: list[JSONDict] = []
        completion_tokens = 0
        prompt_tokens = 0
        for index, ids in enumerate(prompts):
            text = decode(ids)
            prompt_tokens += len(ids)
            if scoring:
                choices.append(
                    {
                        "index": index,
                        "text": text + EOS_TOKEN,
                        "logprobs": score_prompt(facts, ids),
                        "finish_reason": "length",
                    }
                )
                completion_tokens += 1
            else:
                answer = answer_text(facts, text)
                if not text[-1:].isspace():
                    answer = " " + answer
                out, reason = truncate(answer, stop, max_tokens)
                completion_tokens += len(encode(out))
                choices.append(
                    {
                        "index": index,
                        "text": (text + out) if echo else out,
                        "logprobs": None,
                        "finish_reason": reason,
                    }
                )
        with state.lock:
            state.prompts += len(prompts)
            if scoring:
                state.loglikelihood_prompts += len(prompts)
            else:
                state.generation_prompts += len(prompts)
        self._send_json(
            HTTPStatus.OK,
            {
                "id": f"cmpl-stub-{state.next_id()}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": payload.get("model", MODEL_NAME),
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )

    def _chat(self, payload: JSONDict) -> None:
        state = self.state
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list")
        user_texts = [
            _content_text(m.get("content"))
            for m in messages
            if isinstance(m, dict) and m.get("role") == "user"
        ]
        facts = facts_for(state.facts, payload.get("model"))
        fact = find_fact(facts, user_texts[-1]) if user_texts else None
        if fact is None:
            fact = find_fact(facts, _messages_text(messages))
        answer = fact.answer if fact is not None else "I don't know"
        out, reason = truncate(
            answer,
            _stop_list(payload.get("stop")),
            _max_tokens(payload, "max_completion_tokens", "max_tokens"),
        )
        prompt_tokens = len(encode(_messages_text(messages)))
        with state.lock:
            state.prompts += 1
            state.chat_requests += 1
        self._send_json(
            HTTPStatus.OK,
            {
                "id": f"chatcmpl-stub-{state.next_id()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": payload.get("model", MODEL_NAME),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": out},
                        "finish_reason": reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(encode(out)),
                    "total_tokens": prompt_tokens + len(encode(out)),
                },
            },
        )

    _ROUTES: ClassVar[dict[str, Callable[..., None]]] = {
        "GET /health": _health,
        "GET /v1/models": _models,
        "GET /stats": _stats,
        "POST /stats/reset": _stats_reset,
        "GET /tokenizer_info": _tokenizer_info,
        "POST /tokenize": _tokenize,
        "POST /detokenize": _detokenize,
        "POST /v1/completions": _completions,
        "POST /v1/chat/completions": _chat,
    }


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _messages_text(messages: list[Any]) -> str:
    return "\n".join(_content_text(m.get("content")) for m in messages if isinstance(m, dict))


def _normalize_prompts(prompt: Any) -> list[list[int]]:
    """str | list[str] | list[int] | list[list[int]] -> list of token-id lists."""
    if isinstance(prompt, str):
        return [encode(prompt)]
    if isinstance(prompt, list):
        if not prompt:
            return []
        if all(isinstance(p, str) for p in prompt):
            return [encode(p) for p in prompt]
        if _valid_ids(prompt):
            return [list(prompt)]
        if all(_valid_ids(p) for p in prompt):
            return [list(p) for p in prompt]
    raise BadRequest("'prompt' must be a string, list of strings, or token id list(s)")


# --------------------------------------------------------------------------- in-process API


class StubHandle:
    """A stub server running in a background thread (see :func:`start_stub`)."""

    def __init__(self, server: StubServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host: str = str(server.server_address[0])
        self.port: int = int(server.server_address[1])

    @property
    def state(self) -> StubState:
        return self._server.state

    @property
    def base_url(self) -> str:
        """Server root, e.g. ``http://127.0.0.1:PORT`` (tokenizer routes live here)."""
        return f"http://{self.host}:{self.port}"

    @property
    def completions_url(self) -> str:
        """Full endpoint for ``--model local-completions base_url=...``."""
        return f"{self.base_url}/v1/completions"

    @property
    def chat_completions_url(self) -> str:
        """Full endpoint for ``--model local-chat-completions base_url=...``."""
        return f"{self.base_url}/v1/chat/completions"

    def stats(self) -> JSONDict:
        """Same JSON as ``GET /stats``."""
        return self.state.snapshot()

    def reset_stats(self) -> None:
        self.state.reset()

    def set_delay(self, delay_s: float) -> None:
        self.state.delay_s = delay_s

    def set_fail_first(self, n: int, status: int = 500) -> None:
        with self.state.lock:
            self.state.fail_remaining = n
            self.state.fail_status = status

    def close(self) -> None:
        """Stop serving; requests sleeping in ``delay`` are woken up. Idempotent."""
        if self.state.closing.is_set():
            return
        self.state.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> StubHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def make_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    delay_s: float = 0.0,
    fail_first: int = 0,
    fail_status: int = 500,
    tasks_dir: Path | str | None = None,
    tokenizer: bool = True,
    quiet: bool = True,
) -> StubServer:
    state = StubState(
        facts=load_facts(Path(tasks_dir) if tasks_dir is not None else DEFAULT_TASKS_DIR),
        delay_s=delay_s,
        fail_remaining=fail_first,
        fail_status=fail_status,
        tokenizer_enabled=tokenizer,
        quiet=quiet,
    )
    return StubServer((host, port), state)


def start_stub(
    delay_s: float = 0.0,
    *,
    fail_first: int = 0,
    fail_status: int = 500,
    tasks_dir: Path | str | None = None,
    tokenizer: bool = True,
    quiet: bool = True,
    host: str = "127.0.0.1",
    port: int = 0,
) -> StubHandle:
    """Start the stub on ``host:port`` (default 127.0.0.1, a free port) in a daemon thread."""
    server = make_server(
        host,
        port,
        delay_s=delay_s,
        fail_first=fail_first,
        fail_status=fail_status,
        tasks_dir=tasks_dir,
        tokenizer=tokenizer,
        quiet=quiet,
    )
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        daemon=True,
        name=f"stub-openai-{server.server_address[1]}",
    )
    thread.start()
    return StubHandle(server, thread)


@contextlib.contextmanager
def running_stub(delay_s: float = 0.0, **kwargs: Any) -> Iterator[StubHandle]:
    """Context manager form of :func:`start_stub`."""
    handle = start_stub(delay_s, **kwargs)
    try:
        yield handle
    finally:
        handle.close()


# --------------------------------------------------------------------------- CLI


def _write_port_file(path: Path, port: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".port-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{port}\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per /v1 request")
    parser.add_argument("--fail-first", type=int, default=0, help="fail the first N /v1 requests")
    parser.add_argument("--fail-status", type=int, default=500)
    parser.add_argument("--tasks-dir", type=Path, default=DEFAULT_TASKS_DIR)
    parser.add_argument("--no-tokenizer", action="store_true", help="404 on tokenizer routes")
    parser.add_argument("--quiet", action="store_true", help="no per-request access log")
    args = parser.parse_args(argv)

    server = make_server(
        args.host,
        args.port,
        delay_s=args.delay,
        fail_first=args.fail_first,
        fail_status=args.fail_status,
        tasks_dir=args.tasks_dir,
        tokenizer=not args.no_tokenizer,
        quiet=args.quiet,
    )
    port = int(server.server_address[1])

    def _stop(signum: int, frame: FrameType | None) -> None:
        server.state.closing.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    if args.port_file is not None:
        _write_port_file(args.port_file, port)
    print(f"LISTENING {port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
