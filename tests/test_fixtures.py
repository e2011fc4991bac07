"""Fast unit tests of the offline fixtures: the OpenAI stub server and the tiny task data.

Nothing here runs lm_eval; the integration tests do. The loglikelihood check below scores
responses exactly like lm_eval 0.4.13 (``LocalCompletionsAPI.parse_logprobs``).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.stub_openai import EOS_ID, EOS_TOKEN, StubHandle, decode, encode, start_stub

SUPPORT = Path(__file__).resolve().parent / "support"
TASKS = SUPPORT / "tasks"


def _rows(name: str) -> list[dict[str, Any]]:
    text = (TASKS / f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


MC_ROWS = _rows("tiny_mc")
GEN_ROWS = _rows("tiny_gen")


@pytest.fixture(scope="module")
def stub() -> Iterator[StubHandle]:
    with start_stub() as handle:
        yield handle


@pytest.fixture
def client(stub: StubHandle) -> Iterator[httpx.Client]:
    stub.reset_stats()
    with httpx.Client(base_url=stub.base_url, timeout=10) as c:
        yield c


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(path, json=body)
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def _score(choice: dict[str, Any], ctxlen: int) -> tuple[float, bool]:
    """lm_eval's parse_logprobs for one choice."""
    lps = choice["logprobs"]["token_logprobs"][ctxlen:-1]
    tops = choice["logprobs"]["top_logprobs"][ctxlen:-1]
    greedy = all(lp == max(top.values()) for lp, top in zip(lps, tops, strict=True))
    return sum(lps), greedy


# --------------------------------------------------------------------------- data files


def test_task_data_shape() -> None:
    assert len(MC_ROWS) == 8
    assert len(GEN_ROWS) == 6
    for row in MC_ROWS:
        assert len(row["choices"]) == 4
        assert 0 <= row["label"] < 4
        # no choice may be a suffix of another: the stub matches choices by suffix
        for a in row["choices"]:
            assert not any(b != a and b.endswith(a) for b in row["choices"]), row
    assert {r["label"] for r in MC_ROWS} == {0, 1, 2, 3}
    for yaml_name in ("tiny_mc.yaml", "tiny_gen.yaml"):
        assert (TASKS / yaml_name).is_file()


# --------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(
    "text",
    ["", "Question: What is 2 + 2?\nAnswer: 4", "héllo wörld ✓ 日本", f"a{EOS_TOKEN}b", EOS_TOKEN],
)
def test_tokenize_detokenize_round_trip(client: httpx.Client, text: str) -> None:
    tokens = _post(client, "/tokenize", {"prompt": text, "add_special_tokens": False})["tokens"]
    assert tokens == encode(text)
    assert all(isinstance(t, int) and 0 <= t <= EOS_ID for t in tokens)
    assert _post(client, "/detokenize", {"tokens": tokens})["prompt"] == text
    assert decode(encode(text)) == text


def test_tokenizer_info_and_eos(client: httpx.Client) -> None:
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == EOS_TOKEN
    assert _post(client, "/tokenize", {"prompt": EOS_TOKEN})["tokens"] == [EOS_ID]
    assert encode("ab") == [97, 98]


def test_detokenize_rejects_bad_ids(client: httpx.Client) -> None:
    assert client.post("/detokenize", json={"tokens": [1, 999]}).status_code == 400
    assert client.post("/detokenize", json={"tokens": "abc"}).status_code == 400


def test_unknown_route_and_bad_json(client: httpx.Client) -> None:
    assert client.get("/nope").status_code == 404
    assert client.post("/v1/nope", json={}).status_code == 404
    resp = client.post("/v1/completions", content=b"{not json")
    assert resp.status_code == 400
    assert "error" in resp.json()


# --------------------------------------------------------------------------- loglikelihood


@pytest.mark.parametrize("as_tokens", [True, False], ids=["token_ids", "strings"])
def test_loglikelihood_picks_the_right_answer(client: httpx.Client, as_tokens: bool) -> None:
    for row in MC_ROWS:
        ctx = f"Question: {row['question']}\nAnswer:"
        ctxlen = len(encode(ctx))
        fulls = [ctx + " " + c for c in row["choices"]]
        prompt: list[Any] = [encode(f) for f in fulls] if as_tokens else fulls
        body = {
            "model": "stub-model",
            "prompt": prompt,
            "temperature": 0,
            "max_tokens": 1,
            "logprobs": 1,
            "seed": 1234,
            "echo": True,
        }
        choices = sorted(
            _post(client, "/v1/completions", body)["choices"], key=lambda c: c["index"]
        )
        assert len(choices) == 4
        for choice, full in zip(choices, fulls, strict=True):
            n = len(encode(full))
            assert len(choice["logprobs"]["token_logprobs"]) == n + 1
            assert len(choice["logprobs"]["top_logprobs"]) == n + 1
        scores = [_score(c, ctxlen) for c in choices]
        best = max(range(4), key=lambda i: scores[i][0])
        assert best == row["label"], (row, scores)
        assert [g for _, g in scores] == [i == row["label"] for i in range(4)]


def test_loglikelihood_with_fewshot_context_uses_last_question(client: httpx.Client) -> None:
    shot, row = MC_ROWS[0], MC_ROWS[1]
    ctx = (
        f"Question: {shot['question']}\nAnswer: {shot['choices'][shot['label']]}\n\n"
        f"Question: {row['question']}\nAnswer:"
    )
    body = {"prompt": [ctx + " " + c for c in row["choices"]], "max_tokens": 1}
    body |= {"logprobs": 1, "echo": True}
    choices = _post(client, "/v1/completions", body)["choices"]
    scores = [_score(c, len(encode(ctx)))[0] for c in choices]
    assert scores.index(max(scores)) == row["label"]


# --------------------------------------------------------------------------- generation


def test_completions_generate_answers(client: httpx.Client) -> None:
    for row in GEN_ROWS:
        prompt = f"Q: {row['question']}\nA:"
        for sent in (prompt, encode(prompt)):
            body = {"prompt": sent, "model": "stub-model", "max_tokens": 16, "stop": ["\n"]}
            choice = _post(client, "/v1/completions", body)["choices"][0]
            assert choice["text"] == " " + row["answer"]
            assert choice["finish_reason"] == "stop"


def test_completions_batched_generation_and_max_tokens(client: httpx.Client) -> None:
    prompts = [f"Q: {r['question']}\nA:" for r in GEN_ROWS]
    out = _post(client, "/v1/completions", {"prompt": prompts, "max_tokens": 16})
    assert [c["text"].strip() for c in out["choices"]] == [r["answer"] for r in GEN_ROWS]
    cut = _post(client, "/v1/completions", {"prompt": prompts[1], "max_tokens": 3})["choices"][0]
    assert cut["text"] == " Ma"
    assert cut["finish_reason"] == "length"
    unknown = _post(client, "/v1/completions", {"prompt": "Q: Who are you?\nA:"})["choices"][0]
    assert unknown["text"] == " I don't know"


def test_chat_answers(client: httpx.Client) -> None:
    for row in GEN_ROWS + MC_ROWS:
        body = {
            "model": "stub-model",
            "messages": [{"role": "user", "content": f"Q: {row['question']}\nA:"}],
            "max_tokens": 16,
            "temperature": 0,
            "stop": ["\n"],
        }
        expected = row["answer"] if "answer" in row else row["choices"][row["label"]]
        msg = _post(client, "/v1/chat/completions", body)["choices"][0]["message"]
        assert msg == {"role": "assistant", "content": expected}


def test_chat_multiturn_answers_last_user_turn(client: httpx.Client) -> None:
    a, b = GEN_ROWS[0], GEN_ROWS[1]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"Q: {a['question']}\nA:"},
        {"role": "assistant", "content": a["answer"]},
        {"role": "user", "content": [{"type": "text", "text": f"Q: {b['question']}\nA:"}]},
    ]
    out = _post(client, "/v1/chat/completions", {"messages": messages})
    assert out["choices"][0]["message"]["content"] == b["answer"]
    assert client.post("/v1/chat/completions", json={"messages": []}).status_code == 400


# --------------------------------------------------------------------------- stats


def test_stats_count_and_reset(client: httpx.Client, stub: StubHandle) -> None:
    _post(client, "/tokenize", {"prompt": "x"})
    _post(client, "/v1/completions", {"prompt": ["a", "b", "c"], "max_tokens": 1})
    _post(client, "/v1/completions", {"prompt": [[1, 2]], "max_tokens": 1, "echo": True})
    body = {"prompt": [[1, 2]], "max_tokens": 1, "echo": True, "logprobs": 1}
    _post(client, "/v1/completions", body)
    _post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    stats = client.get("/stats").json()
    assert stats == stub.stats()
    assert stats["routes"] == {
        "POST /tokenize": 1,
        "POST /v1/completions": 3,
        "POST /v1/chat/completions": 1,
    }
    assert stats["v1_requests"] == 4
    assert stats["prompts"] == 6
    assert stats["loglikelihood_prompts"] == 1
    assert stats["generation_prompts"] == 4
    assert stats["chat_requests"] == 1
    assert stats["in_flight"] == 0

    reset = client.post("/stats/reset").json()
    assert reset["routes"] == {}
    assert reset["v1_requests"] == reset["prompts"] == 0
    assert client.get("/stats").json()["routes"] == {}  # /stats itself is not counted


# --------------------------------------------------------------------------- delay, failures


def test_delay_applies_to_v1_only_and_shows_in_flight() -> None:
    with start_stub(delay_s=0.4) as stub, httpx.Client(base_url=stub.base_url) as client:
        t0 = time.monotonic()
        _post(client, "/tokenize", {"prompt": "abc"})
        assert time.monotonic() - t0 < 0.3

        results: list[float] = []

        def slow_request() -> None:
            with httpx.Client(base_url=stub.base_url) as c:
                t = time.monotonic()
                _post(c, "/v1/completions", {"prompt": "Q: What is 1 + 1?\nA:"})
                results.append(time.monotonic() - t)

        worker = threading.Thread(target=slow_request)
        worker.start()
        deadline = time.monotonic() + 2
        while stub.stats()["in_flight"] != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stub.stats()["in_flight"] == 1
        assert stub.stats()["v1_requests"] == 1  # counted on arrival, before the delay
        worker.join(5)
        assert results and results[0] >= 0.4
        assert stub.stats()["in_flight"] == 0

        stub.set_delay(0.0)
        t0 = time.monotonic()
        _post(client, "/v1/completions", {"prompt": "x"})
        assert time.monotonic() - t0 < 0.3


def test_close_wakes_delayed_requests() -> None:
    stub = start_stub(delay_s=30)
    done = threading.Event()

    def slow_request() -> None:
        with httpx.Client(base_url=stub.base_url, timeout=10) as c:
            c.post("/v1/completions", json={"prompt": "x"})
        done.set()

    worker = threading.Thread(target=slow_request)
    worker.start()
    deadline = time.monotonic() + 2
    while stub.stats()["in_flight"] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    stub.close()
    stub.close()  # idempotent
    assert done.wait(3)
    worker.join(1)
    assert time.monotonic() - t0 < 3


def test_client_disconnect_is_counted_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    with start_stub(delay_s=0.2) as stub:
        body = b'{"prompt": "x"}'
        head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", stub.port)) as sock:
            sock.sendall(head.encode() + body)
            time.sleep(0.05)  # the request is now sleeping in the delay
        deadline = time.monotonic() + 3
        while stub.stats()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stub.stats()["in_flight"] == 0
        assert stub.stats()["client_disconnects"] == 1
    assert "Traceback" not in capsys.readouterr().err


def test_fail_first() -> None:
    with (
        start_stub(fail_first=2, fail_status=503) as stub,
        httpx.Client(base_url=stub.base_url) as client,
    ):
        body = {"prompt": "Q: What is 4 * 5?\nA:", "max_tokens": 8}
        assert client.post("/v1/completions", json=body).status_code == 503
        assert client.post("/v1/chat/completions", json={"messages": []}).status_code == 503
        assert _post(client, "/v1/completions", body)["choices"][0]["text"] == " 20"
        # tokenizer routes never fail
        stub.set_fail_first(1)
        assert client.post("/tokenize", json={"prompt": "a"}).status_code == 200
        assert client.post("/v1/completions", json=body).status_code == 500
        stats = stub.stats()
        assert stats["failures_injected"] == 3
        assert stats["v1_requests"] == 4


# --------------------------------------------------------------------------- CLI


def test_cli_prints_listening_writes_port_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "sub" / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SUPPORT / "stub_openai.py"),
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--delay",
            "0.05",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("LISTENING "), line
        port = int(line.split()[1])
        assert port > 0
        assert int(port_file.read_text()) == port
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.get("/health").status_code == 200
            body = {"prompt": "Q: What is the capital of Egypt?\nA:", "stop": ["\n"]}
            assert _post(client, "/v1/completions", body)["choices"][0]["text"] == " Cairo"
            assert client.get("/stats").json()["v1_requests"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _, err = proc.communicate()
    assert err == ""  # --quiet: no access log
