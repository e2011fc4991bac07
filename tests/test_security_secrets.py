"""Secrets: private at rest, never served, still delivered to the child.

A job carries credentials in env_vars and model_args (a string, a JSON string, a dict); the
child prints them (the fake lm_eval prints its argv and environment); every view the API
serves must hide them while the child still sees the real values.
"""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import trio

from lmeval_trio.http.download import CHUNK_BYTES
from lmeval_trio.secrets import job_secrets, masked_chunks, secret_name
from lmeval_trio.status import JobStatus
from tests.conftest import Server, fake_job, make_settings, start_server

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
