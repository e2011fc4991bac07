"""Secrets: private at rest, never served, still delivered to the child.

A job carries credentials in env_vars and model_args (a string, a JSON string, a dict); the
child prints them (the fake lm_eval prints its argv and environment); every view the API
serves must hide them while the child still sees the real values.
"""

from __future__ import annotations

import json
import shlex
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import trio

from lmeval_trio.http.download import CHUNK_BYTES
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.policy.secrets import (
    job_secrets,
    mask_text,
    masked_chunks,
    secret_forms,
    secret_name,
)
from tests.conftest import DUMMY_JOB, Server, fake_job, job_files, make_settings, start_server
from tests.test_cli import cli

TOKEN = "hf_tok_0123456789abcdef"
API_KEY = "sk-live-9876543210zyxw"
NESTED = "pw-nested-4444-5555"
SECRETS = (TOKEN, API_KEY, NESTED)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_data_dir_and_database_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)  # an existing, world-readable data dir is made private at start
    async with trio.open_nursery() as nursery:
        url, shutdown, _app = await start_server(nursery, make_settings(tmp_path))
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.post("/job", json=fake_job("env"))).status_code == 200
        assert mode(data) == 0o700
        for name in ("jobs.db", "jobs.db-wal", "jobs.db-shm"):
            if (data / name).exists():
                assert mode(data / name) == 0o600, name
        assert (data / "jobs.db").exists()
        shutdown.set()


def secret_job(model_args: Any) -> dict[str, Any]:
    job = fake_job("env", HF_TOKEN=TOKEN)
    return {**job, "model_args": model_args}


MODEL_ARGS: list[Any] = [
    f"pretrained=x,api_key={API_KEY},password={NESTED}",
    json.dumps({"pretrained": "x", "api_key": API_KEY, "extra": {"token": NESTED}}),
    {"pretrained": "x", "apiKey": API_KEY, "model_kwargs": {"auth_token": NESTED}},
]


async def served_texts(server: Server, job_id: int) -> dict[str, str]:
    """Every view of the job the API serves, as text."""
    client = server.client
    views = {
        "job": f"/job/{job_id}",
        "jobs": "/jobs",
        "logs": f"/job/{job_id}/logs?stream=stdout",
        "tail": f"/job/{job_id}/logs?stream=stdout&tail=100000",
        "stdout.log": f"/job/{job_id}/artifacts/stdout.log",
        "results": f"/job/{job_id}/results",
        "results file": f"/job/{job_id}/artifacts/output/dummy/results_2026.json",
    }
    texts = {name: (await client.get(path)).text for name, path in views.items()}
    async with client.stream("GET", f"/job/{job_id}/events") as stream:
        lines = [line async for line in stream.aiter_lines()]
    texts["events"] = "\n".join(lines)
    return texts


async def test_secrets_are_masked_in_every_view(server: Server, tmp_path: Path) -> None:
    for model_args in MODEL_ARGS:
        job_id = await server.submit(secret_job(model_args))
        job = await server.wait_status(job_id, JobStatus.COMPLETED)
        job_dir = tmp_path / "data" / "jobs" / str(job_id)
        # The child saw the real values (it printed them to its own log).
        seen = (job_dir / "stdout.log").read_text()
        assert all(secret in seen for secret in SECRETS), model_args
        assert json.loads(seen)["env"]["HF_TOKEN"] == TOKEN
        # lm-eval copies model_args into its results: plant such a file.
        out = job_dir / "output" / "dummy"
        out.mkdir(parents=True)
        results = {"results": {"t": {"acc,none": 1.0}}, "config": {"model_args": model_args}}
        (out / "results_2026.json").write_text(json.dumps(results))
        texts = await served_texts(server, job_id)
        for view, text in texts.items():
            for secret in SECRETS:
                assert secret not in text, (view, model_args)
        assert "***" in texts["stdout.log"] and "***" in texts["results"]
        assert job["request"]["env_vars"] == {"FAKE_MODE": "***", "HF_TOKEN": "***"}
        assert "pretrained" in json.dumps(job["request"])  # the rest stays readable


def test_secret_names() -> None:
    for name in ("api_key", "OPENAI_API_KEY", "apiKey", "hf_token", "HF_TOKEN", "password"):
        assert secret_name(name), name
    for name in ("add_bos_token", "max_tokens", "tokenizer", "pretrained", "base_url"):
        assert not secret_name(name), name


def test_job_secrets_parse_like_lm_eval() -> None:
    escaped = '{"api\\u005fkey": "' + API_KEY + '"}'  # the key spelled with a JSON escape
    assert job_secrets({"model_args": escaped}) == (API_KEY,)
    assert job_secrets({"model_args": f"token='{NESTED}'"}) == (NESTED,)
    assert job_secrets({"model_args": "add_bos_token=True,max_tokens=12345"}) == ()


async def test_masking_a_file_finds_secrets_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    head = b"x" * (CHUNK_BYTES - 5)
    path.write_bytes(head + API_KEY.encode() + b"y" * CHUNK_BYTES + TOKEN.encode())
    raw = path.read_bytes()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), CHUNK_BYTES):
            yield raw[start : start + CHUNK_BYTES]

    data = b"".join([chunk async for chunk in masked_chunks(chunks(), (TOKEN, API_KEY))])
    assert data == head + b"***" + b"y" * CHUNK_BYTES + b"***"


async def test_config_file_secrets_are_masked_in_job_output(server: Server, tmp_path: Path) -> None:
    """lm-eval prints the whole configuration, a --config file's credentials included."""
    config = tmp_path / "c.yaml"
    config.write_text(f"model_args: pretrained=x,api_key={API_KEY}\n")
    job_id = await server.submit({**fake_job("env"), "config": str(config)})
    await server.wait_status(job_id, JobStatus.COMPLETED)
    out = tmp_path / "data" / "jobs" / str(job_id) / "output" / "dummy"
    out.mkdir(parents=True)
    planted = {"results": {}, "config": {"model_args": f"api_key={API_KEY}"}}
    (out / "results_2026.json").write_text(json.dumps(planted))
    texts = await served_texts(server, job_id)
    assert all(API_KEY not in text for text in texts.values())
    assert "***" in texts["results"]


# -- windows: a secret cut by a ranged view's edge is still masked -------------------------

WINDOWED = "sk-VICTIMmodelargs987"


def window_view(raw: bytes, start: int, end: int, secret: bytes) -> str:
    """What a window ``[start, end)`` of ``raw`` must show: its bytes, with the part of each
    occurrence of ``secret`` inside it as ***."""
    out, at = b"", start
    for found in _occurrences(raw, secret):
        low, high = max(found, start), min(found + len(secret), end)
        if low < high and low >= at:
            out += raw[at:low] + b"***"
            at = high
    return (out + raw[at:end]).decode()


def _occurrences(raw: bytes, secret: bytes) -> list[int]:
    found, at = [], raw.find(secret)
    while at >= 0:
        found.append(at)
        at = raw.find(secret, at + 1)
    return found


async def event_lines(server: Server, job_id: int, last_event_id: str) -> list[str]:
    url = f"/job/{job_id}/events?last_event_id={last_event_id}"
    lines: list[str] = []
    async with server.client.stream("GET", url) as stream:
        kind = ""
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "log":
                lines += json.loads(line[6:])["lines"]
    return lines


async def test_no_window_of_a_log_serves_part_of_a_secret(server: Server, tmp_path: Path) -> None:
    """lm-eval prints its model_args (repr) to stderr; every ranged read whose edge cuts
    the key (offset/limit, tail, a resumed event stream) shows *** for its part of it, so
    no combination of windows rebuilds the key."""
    job = {**DUMMY_JOB, "model_args": f"pretrained=dummy,api_key={WINDOWED}"}
    job_id = await server.submit(job)
    assert (await server.wait_status(job_id, JobStatus.COMPLETED))["status"] == "Completed"
    job_dir = tmp_path / "data" / "jobs" / str(job_id)
    raw, stdout_bytes = (
        (job_dir / "stderr.log").read_bytes(),
        (job_dir / "stdout.log").stat().st_size,
    )
    secret = WINDOWED.encode()
    at = raw.index(secret)
    for offset in range(at - 8, at + len(secret) + 2):
        for limit in (1, 6, 40):
            url = f"/job/{job_id}/logs?offset={offset}&limit={limit}"
            body = (await server.client.get(url)).json()
            assert body["offset"] == offset and body["next_offset"] == offset + limit
            assert body["text"] == window_view(raw, offset, offset + limit, secret), url
            assert "VICTIM" not in json.dumps(body)
    for start in (at + 1, at + 3, at + 10, at + len(secret) - 1):
        tail = (await server.client.get(f"/job/{job_id}/logs?tail={len(raw) - start}")).json()
        assert tail["offset"] == start and tail["text"].startswith("***"), start
        lines = await event_lines(server, job_id, f"{stdout_bytes}-{start}")
        assert lines[0].startswith("***") and "VICTIM" not in "".join(lines), start
    head = (await server.client.get(f"/job/{job_id}/logs?offset={at - 5}&limit=6")).json()
    assert head["text"] == raw[at - 5 : at].decode() + "***"  # not "... 's"


async def test_a_half_written_secret_at_the_end_of_a_log_is_masked(
    server: Server, tmp_path: Path
) -> None:
    """The child's output reaches the log in pipe-sized pieces: a log may end in the first
    half of a key. Tails, ranges, streams and downloads show *** for it, not the half."""
    job_id = await server.submit(secret_job(f"pretrained=x,api_key={API_KEY}"))
    await server.wait_status(job_id, JobStatus.COMPLETED)
    log = tmp_path / "data" / "jobs" / str(job_id) / "stdout.log"
    with log.open("ab") as file:
        file.write(b"\nconnecting with " + API_KEY[:12].encode())
    size = log.stat().st_size
    texts = await served_texts(server, job_id)
    texts["events from the half"] = "".join(await event_lines(server, job_id, f"{size - 6}-0"))
    for view, text in texts.items():
        assert API_KEY[:8] not in text and API_KEY[4:12] not in text, view
    job = await server.job(job_id)
    assert job["stdout"][-1] == "connecting with ***"


# -- forms: a secret printed escaped is masked too ----------------------------------------

ESCAPED_ARGS = '{"api_key":"sk-Back\\\\slash-VICTIM2","token":"tok-\u00fcn\u00ef-VICTIM3"}'


async def test_every_printed_form_of_a_secret_is_masked(server: Server, tmp_path: Path) -> None:
    """A backslash or a non-ASCII letter prints differently in JSON (argument, request, the
    fake's argv dump, results files) and in a repr: each form is masked in every view."""
    assert json.loads(ESCAPED_ARGS)["api_key"] == "sk-Back\\slash-VICTIM2"
    job_id = await server.submit(secret_job(ESCAPED_ARGS))
    await server.wait_status(job_id, JobStatus.COMPLETED)
    job_dir = tmp_path / "data" / "jobs" / str(job_id)
    seen = json.loads((job_dir / "stdout.log").read_text())
    assert f"--model_args={ESCAPED_ARGS}" in seen["argv"]  # the child got the real values
    out = job_dir / "output" / "dummy"
    out.mkdir(parents=True)
    repr_line = repr(json.loads(ESCAPED_ARGS))  # as lm-eval logs a model_args dict
    planted = {"results": {}, "config": {"model_args": ESCAPED_ARGS, "printed": repr_line}}
    (out / "results_2026.json").write_text(json.dumps(planted))
    with (job_dir / "stdout.log").open("a") as file:
        file.write(f"\nInitializing dummy model, with arguments: {repr_line}\n")
    texts = await served_texts(server, job_id)
    for view, text in texts.items():
        assert "VICTIM2" not in text and "VICTIM3" not in text, view
    run = await cli(server.url, "show", str(job_id))
    assert run.code == 0 and "VICTIM" not in run.out and "***" in run.out


async def test_a_quoted_key_in_a_real_results_file_is_masked(server: Server) -> None:
    """lm-eval writes model_args into results_*.json, its quotes JSON-escaped."""
    key = 'sk-"quoted"VICTIM4'
    job_id = await server.submit({**DUMMY_JOB, "model_args": f"pretrained=dummy,api_key={key}"})
    assert (await server.wait_status(job_id, JobStatus.COMPLETED))["status"] == "Completed"
    listed = (await server.client.get(f"/job/{job_id}/artifacts")).json()["artifacts"]
    name = next(a["name"] for a in listed if "/results_" in a["name"])
    download = (await server.client.get(f"/job/{job_id}/artifacts/{name}")).text
    assert "VICTIM4" not in download and "***" in download
    for path in (f"/job/{job_id}", f"/job/{job_id}/results", f"/job/{job_id}/logs"):
        assert "VICTIM4" not in (await server.client.get(path)).text, path


def test_secret_forms_cover_each_way_of_printing() -> None:
    value = "a'b\"c\\d\u00e9-x y&z"
    forms = set(secret_forms([value]))
    printed = [
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        ascii(value)[1:-1],
        shlex.quote(value)[1:-1],
        quote(value),
        quote_plus(value),
        json.dumps(repr(value)[1:-1])[1:-1],  # JSON of a repr
    ]
    assert value in forms and all(form in forms for form in printed)
    assert secret_forms(["sk-plain-123"]) == ("sk-plain-123",)  # a plain token: one search
    assert mask_text(f"x {printed[0]} y {printed[2]}", secret_forms([value])) == "x *** y ***"


# -- URL credentials ----------------------------------------------------------------------


async def test_credentials_in_a_url_are_masked(server: Server) -> None:
    """A base_url or proxy with user:password@ carries a credential whatever its key."""
    job = secret_job("pretrained=x,base_url=http://alice:pa55VICTIM5word@10.0.0.1/v1")
    job["env_vars"]["PROXY"] = "http://u:V6CTIM@h"  # short, under no credential's name
    job_id = await server.submit(job)
    await server.wait_status(job_id, JobStatus.COMPLETED)
    texts = await served_texts(server, job_id)
    for view, text in texts.items():
        assert "VICTIM5" not in text and "V6CTIM" not in text, view
    assert "10.0.0.1/v1" in texts["job"]  # the host stays readable


def test_url_credentials_anywhere_in_the_request() -> None:
    request = {
        "gen_kwargs": "until=x,endpoint=https://bob:gk-PASS-1@h.example/x",
        "metadata": {"mirror": ["ftp://carol:md%40PASS2@m.example"]},
        "env_vars": {"HTTPS_PROXY": "http://tok-ONLY-3@p"},
        "output_path": "/tmp/out",
    }
    found = job_secrets(request)
    for secret in ("gk-PASS-1", "bob:gk-PASS-1", "md%40PASS2", "md@PASS2", "tok-ONLY-3"):
        assert secret in found, secret
    assert not any("example" in s or s == "bob" for s in found)


async def test_a_secret_printed_as_a_phase_name_is_masked(server: Server, tmp_path: Path) -> None:
    """Progress phases are named from the child's log lines: a key printed where lm-eval
    names a request type must not come back as a phase name."""
    key = "sk_VICTIM7phase"
    text = f"INFO [evaluator:589] Running {key} requests\n{key}:  50%|#  | 1/2 [00:01<00:01]\n"
    (job_files(tmp_path) / "say.txt").write_text(text)
    job = {
        **fake_job("say", FAKE_TEXT_FILE=str(job_files(tmp_path) / "say.txt")),
        "model_args": f"pretrained=x,api_key={key}",
    }
    job_id = await server.submit(job)
    await server.wait_status(job_id, JobStatus.COMPLETED)
    raw = (await server.client.get(f"/job/{job_id}/logs?limit=1")).json()
    assert raw["text"] == "I"  # the job did print it
    texts = await served_texts(server, job_id)
    for view, shown in texts.items():
        assert "VICTIM7" not in shown, view
