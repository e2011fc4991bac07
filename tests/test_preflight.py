"""Endpoint pre-flight against the stub OpenAI server on 127.0.0.1: up, down, a model it
does not serve, a remote tokenizer that does not answer; credentials never shown; no
evaluation request ever sent."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lmeval_trio.engine.preflight import server_root, shown
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import JobStatus
from tests.conftest import TASKS_DIR, Server, fake_job, make_settings, start_server, supervisor_of
from tests.support.stub_openai import StubHandle, running_stub


@pytest.fixture
def stub() -> Iterator[StubHandle]:
    with running_stub() as handle:
        yield handle


def _closed_port() -> int:
    """A port nothing listens on (bound, then closed: refused until someone takes it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _job(base_url: str, **model_args: Any) -> dict[str, Any]:
    return {
        "model": "local-completions",
        "model_args": {"model": "stub-model", "base_url": base_url, **model_args},
        "tasks": "tiny_gen",
        "include_path": str(TASKS_DIR),
    }


async def _endpoint(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    response = await server.client.post("/job", params={"dry_run": "true"}, json=body)
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    (check,) = [c for c in report["checks"] if c["name"] == "endpoint"]
    assert report["ok"] is check["ok"]
    return dict(check)


async def test_endpoint_up_serving_the_model(server: Server, stub: StubHandle) -> None:
    check = await _endpoint(server, _job(stub.completions_url, tokenizer_backend="remote"))
    assert check["ok"] is True
    assert (
        "serves 'stub-model'" in check["detail"] and "remote tokenizer answers" in check["detail"]
    )
    assert stub.state.snapshot()["v1_requests"] == 0  # no evaluation request was sent


async def test_endpoint_down_is_named(server: Server) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1/completions"
    check = await _endpoint(server, _job(url))
    assert check["ok"] is False
    assert check["detail"] == f"model_args: endpoint {url} refused the connection"


async def test_wrong_model_name(server: Server, stub: StubHandle) -> None:
    body = _job(stub.completions_url)
    body["model_args"]["model"] = "gpt-17"
    check = await _endpoint(server, body)
    assert check["ok"] is False
    assert check["detail"].startswith("model_args.model: endpoint")
    assert "serves 'stub-model', not 'gpt-17'" in check["detail"]


async def test_remote_tokenizer_down(server: Server) -> None:
    with running_stub(tokenizer=False) as stub:
        check = await _endpoint(server, _job(stub.completions_url, tokenizer_backend="remote"))
        assert check["ok"] is False
        assert check["detail"].startswith("model_args.tokenizer_backend: remote tokenizer")
        # without the remote tokenizer the same endpoint passes
        assert (await _endpoint(server, _job(stub.completions_url)))["ok"] is True


async def test_credentials_are_used_but_never_shown(server: Server, stub: StubHandle) -> None:
    port = _closed_port()
    url = f"http://user:hunter2@127.0.0.1:{port}/v1/completions?key=sk-in-query"
    body = _job(url, api_key="sk-secret-model-arg")
    body["env_vars"] = {"OPENAI_API_KEY": "sk-secret-env"}
    response = await server.client.post("/job", params={"dry_run": "true"}, json=body)
    text = response.text
    for secret in ("hunter2", "sk-in-query", "sk-secret-model-arg", "sk-secret-env", "user:"):
        assert secret not in text
    assert json.loads(text)["ok"] is False


def test_urls_are_shown_without_credentials() -> None:
    assert shown("http://a:b@h:81/v1/completions?k=v#f") == "http://h:81/v1/completions"
    assert shown("not a url \x00") in ("the base_url", "://")
    assert server_root("http://h/v1/chat/completions/") == "http://h"


async def test_non_api_models_are_not_checked(server: Server) -> None:
    body = {"model": "dummy", "tasks": "tiny_gen", "include_path": str(TASKS_DIR)}
    check = await _endpoint(server, body)
    assert check == {
        "name": "endpoint",
        "ok": True,
        "detail": "not an API model (dummy): nothing to check",
    }


# -- real jobs: the pre-flight before a slot ---------------------------------------------------


@asynccontextmanager
async def _serving(tmp_path: Path, **overrides: Any) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, make_settings(tmp_path, **overrides))
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            yield Server(url, client, app)
        shutdown.set()


async def _until(server: Server, job_id: int, done: Callable[[JobRecord], bool]) -> JobRecord:
    """Wait on the supervisor's change signal until ``done(record)``."""
    supervisor = supervisor_of(server)
    with trio.fail_after(120):
        while True:
            version = supervisor.changed.version
            record = await supervisor.get(job_id)
            if done(record):
                return record
            await supervisor.changed.wait_past(version)


async def test_fail_mode_fails_the_job_before_it_takes_a_slot(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1/completions"
    async with _serving(tmp_path, preflight="fail") as server:
        job_id = await server.submit(_job(url))
        job = await server.wait_status(job_id, JobStatus.FAILED, JobStatus.COMPLETED)
        assert job["status"] == "Failed"
        assert job["reason"] == f"model_args: endpoint {url} refused the connection"
        assert job["started_at"] is None and job["attempts"] == 0  # no slot, no process


async def test_wait_mode_waits_without_a_slot_then_runs_when_the_stub_comes_up(
    tmp_path: Path,
) -> None:
    port = _closed_port()
    url = f"http://127.0.0.1:{port}/v1/completions"
    async with _serving(tmp_path, max_concurrency=1) as server:
        job_id = await server.submit(_job(url, tokenizer_backend="remote"))
        waiting = await _until(server, job_id, lambda r: bool(r.reason))
        assert waiting.status is JobStatus.QUEUED
        refused = f"model_args: endpoint {url} refused the connection"
        assert waiting.reason == f"waiting for its endpoint: {refused}"
        supervisor = supervisor_of(server)
        assert supervisor.statistics().slots_free == 1  # the slot is not held meanwhile
        other = await server.submit(fake_job("env"))  # the queue moves on behind it
        assert (await server.wait_status(other))["status"] == "Completed"
        with running_stub(port=port) as stub:
            job = await server.wait_status(job_id)
            assert job["status"] == "Completed", job["reason"]
            assert job["reason"] is None and stub.state.snapshot()["v1_requests"] > 0


async def test_wait_mode_gives_up_at_its_bound(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1/completions"
    async with _serving(tmp_path, preflight_wait_max_s=1.5) as server:
        job_id = await server.submit(_job(url))
        job = await server.wait_status(job_id)
        assert job["status"] == "Failed"
        refused = f"model_args: endpoint {url} refused the connection"
        assert job["reason"] == f"{refused} (waited 1.5 s)"


async def test_a_waiting_job_can_be_stopped(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1/completions"
    async with _serving(tmp_path) as server:
        job_id = await server.submit(_job(url))
        await _until(server, job_id, lambda r: bool(r.reason))
        stopped = await server.client.post(f"/job/{job_id}/stop")
        assert stopped.json()["job_status"] == "Stopped"
        supervisor = supervisor_of(server)
        assert supervisor.statistics().queued == 0


async def test_shutdown_does_not_wait_for_a_waiting_job(tmp_path: Path) -> None:
    """The wait (600 s by default) ends with the server; the job stays Queued for the next."""
    url = f"http://127.0.0.1:{_closed_port()}/v1/completions"
    with trio.fail_after(60):  # a hang guard: the wait itself would take 600 s
        async with _serving(tmp_path) as server:
            job_id = await server.submit(_job(url))
            await _until(server, job_id, lambda r: bool(r.reason))
            supervisor = supervisor_of(server)
    assert supervisor.closed.is_set()
    async with _serving(tmp_path, preflight="fail") as again:
        job = await again.wait_status(job_id)
        assert job["status"] == "Failed" and "refused the connection" in job["reason"]
