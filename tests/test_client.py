"""The typed client against a real server: every route, async under trio and blocking."""

from __future__ import annotations

import json
import socket
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import trio

from lmeval_trio.client import (
    ApiError,
    AsyncClient,
    Client,
    EndEvent,
    LogEvent,
    ProgressEvent,
    ServerUnreachable,
    StatusEvent,
)
from lmeval_trio.client._protocol import Follow, LogPager
from lmeval_trio.config import Settings
from lmeval_trio.http.schemas import JobDetail, LogChunkOut
from lmeval_trio.jobs.status import JobStatus
from tests.conftest import Server, fake_job, make_settings, start_server

LM_EVAL_RESULTS: dict[str, Any] = {
    "results": {"tiny_mc": {"alias": "tiny_mc", "acc,none": 0.75, "acc_stderr,none": 0.16}},
    "groups": {},
    "n-samples": {"tiny_mc": {"original": 8, "effective": 8}},
    "config": {"model": "dummy"},
    "lm_eval_version": "0.4.13",
}


@pytest.fixture
async def client(server: Server) -> Any:
    async with AsyncClient(server.url) as client:
        yield client


def write_results(settings: Settings, job_id: int) -> None:
    """What lm-eval would have written (the fake lm_eval writes no results)."""
    folder = settings.data_dir / "jobs" / str(job_id) / "output" / "dummy"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results_2025-01-01T00-00-00.json").write_text(json.dumps(LM_EVAL_RESULTS))


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_operator_routes(client: AsyncClient) -> None:
    health = await client.health()
    assert health["status"] == "ok" and health["supervisor"] == "alive"
    assert await client.ready() is True
    assert (await client.config())["max_concurrency"] == 4
    assert "# TYPE" in await client.metrics()
    assert "/job/{job_id}/events" in (await client.openapi())["paths"]


async def test_submit_wait_list_show_logs(client: AsyncClient) -> None:
    submitted = await client.submit(fake_job("env"))
    assert submitted.message == f"Job {submitted.job_id} successfully queued."
    final = await client.wait(submitted.job_id)
    assert isinstance(final, JobDetail)
    assert final.status is JobStatus.COMPLETED and final.exit_code == 0
    assert json.loads("".join(final.stdout))["argv"][1] == "run"
    listed = await client.list_jobs()
    assert [j.job_id for j in listed.jobs] == [submitted.job_id] and listed.total == 1
    assert (await client.list_jobs(status=[JobStatus.COMPLETED])).total == 1
    assert (await client.list_jobs(active_only=True)).jobs == []
    assert (await client.list_jobs("Failed,Stopped")).total == 0
    chunk = await client.logs(submitted.job_id, "stdout")
    assert isinstance(chunk, LogChunkOut) and chunk.size == chunk.next_offset > 0
    tail = await client.logs(submitted.job_id, "stdout", tail=10)
    assert tail.offset == chunk.size - 10
    async with aclosing(client.read_log(submitted.job_id, "stdout")) as lines:
        assert "".join([line async for line in lines]) == chunk.text


async def test_results_and_artifacts(server: Server, client: AsyncClient) -> None:
    job_id = (await client.submit(fake_job("env"))).job_id
    await client.wait(job_id)
    with pytest.raises(ApiError) as missing:
        await client.results(job_id)
    assert missing.value.status_code == 404 and "no results" in str(missing.value)
    write_results(server.app.extensions["lmeval_trio.settings"], job_id)
    results = await client.results(job_id)
    assert results.status is JobStatus.COMPLETED and results.lm_eval_version == "0.4.13"
    [row] = results.metrics
    assert (row.task, row.metric, row.filter, row.value, row.stderr) == (
        "tiny_mc",
        "acc",
        "none",
        0.75,
        0.16,
    )
    names = [a.name for a in (await client.artifacts(job_id)).artifacts]
    assert "stdout.log" in names and any(n.startswith("output/dummy/results_") for n in names)
    raw = await client.artifact(job_id, next(n for n in names if "results_" in n))
    assert json.loads(raw) == LM_EVAL_RESULTS


async def test_stop_resume_delete(server: Server, client: AsyncClient) -> None:
    first = (await client.submit(fake_job("block"))).job_id
    await server.wait_status(first, JobStatus.RUNNING)
    stopped = await client.stop(first)
    assert stopped.job_status is JobStatus.STOPPED and "stopped" in stopped.message
    resumed = await client.resume(first)
    assert "resumes job" in resumed.message
    await server.wait_status(resumed.job_id, JobStatus.RUNNING)
    assert (await client.get_job(resumed.job_id)).resumed_from == first
    assert (await client.stop_all()).job_ids == [resumed.job_id]
    assert (await client.delete(first)).job_ids == [first]
    assert (await client.delete_all()).message == "Deleted 1 jobs."
    assert (await client.list_jobs()).total == 0


async def test_events_and_log_follow(client: AsyncClient) -> None:
    job_id = (await client.submit(fake_job("exit", FAKE_CODE="3"))).job_id
    async with aclosing(client.events(job_id)) as stream:
        events = [event async for event in stream]
    statuses = [e.job.status for e in events if isinstance(e, StatusEvent)]
    assert statuses[-1] is JobStatus.FAILED
    assert any(isinstance(e, ProgressEvent) for e in events)
    assert events[-1] == EndEvent(job_id, JobStatus.FAILED, None)
    logs = [e for e in events if isinstance(e, LogEvent)]
    assert {e.stream for e in logs} == {"stdout", "stderr"} and logs[-1].event_id
    async with aclosing(client.follow_logs(job_id, ("stderr",))) as lines:
        followed = [line async for line in lines]
    assert [line.text for line in followed] == ["ValueError: fake failure for the test\n"]
    # Resuming after the last log event sends no log line again.
    async with aclosing(client.events(job_id, last_event_id=logs[-1].event_id)) as stream:
        again = [event async for event in stream]
    assert not any(isinstance(e, LogEvent) for e in again)


async def test_jobs_event_stream(client: AsyncClient) -> None:
    async with aclosing(client.jobs_events()) as changes:
        first = await anext(changes)
        assert first.counts.get("Completed", 0) == 0
        job_id = (await client.submit(fake_job("env"))).job_id
        async for change in changes:
            if change.counts.get("Completed") == 1:
                break
    assert (await client.get_job(job_id)).status is JobStatus.COMPLETED


async def test_errors_carry_the_servers_detail(client: AsyncClient) -> None:
    with pytest.raises(ApiError) as not_found:
        await client.get_job(999)
    assert not_found.value.status_code == 404
    assert str(not_found.value) == "HTTP 404: No lm-evaluation-harness job with ID=999 found."
    with pytest.raises(ApiError) as invalid:
        await client.submit({"model": "dummy"})
    assert (
        invalid.value.status_code == 422 and str(invalid.value) == "HTTP 422: tasks: Field required"
    )
    with pytest.raises(ApiError) as refused:
        await client.submit({**fake_job("env"), "lm_eval_path": "/bin/sh"})
    assert refused.value.status_code == 403 and refused.value.field == "lm_eval_path"
    with pytest.raises(ApiError) as missing_events:
        async with aclosing(client.events(999)) as stream:
            await anext(stream)
    assert missing_events.value.status_code == 404


async def test_unreachable_server() -> None:
    async with AsyncClient(closed_port_url(), reconnects=0) as client:
        with pytest.raises(ServerUnreachable, match="cannot reach the lmeval-trio server"):
            await client.health()
        with pytest.raises(ServerUnreachable):
            async with aclosing(client.events(1)) as stream:
                await anext(stream)


async def test_api_key_from_argument_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, api_keys=("sesame",))
    async with trio.open_nursery() as nursery:
        url, shutdown, _app = await start_server(nursery, settings)
        async with AsyncClient(url, api_key="") as anonymous:
            with pytest.raises(ApiError) as refused:
                await anonymous.list_jobs()
            assert refused.value.status_code == 401 and "missing API key" in str(refused.value)
        async with AsyncClient(url, api_key="sesame") as keyed:
            assert (await keyed.list_jobs()).total == 0
        monkeypatch.setenv("LMEVAL_URL", url)
        monkeypatch.setenv("LMEVAL_API_KEY", "sesame")
        async with AsyncClient() as from_env:
            assert from_env.url == url and (await from_env.list_jobs()).total == 0
        shutdown.set()


async def test_blocking_client(server: Server) -> None:
    """The blocking client runs in a worker thread while trio serves."""

    def scenario() -> dict[str, Any]:
        with Client(server.url) as client:
            job_id = client.submit(fake_job("env")).job_id
            kinds = [type(e).__name__ for e in client.events(job_id)]
            lines = [line.text for line in client.follow_logs(job_id, ("stdout",))]
            return {
                "kinds": kinds,
                "lines": lines,
                "read": list(client.read_log(job_id, "stdout")),
                "final": client.wait(job_id),
                "listed": client.list_jobs(status=JobStatus.COMPLETED).total,
                "stopped": client.stop(job_id).message,
                "health": client.health()["status"],
                "jobs_event": next(client.jobs_events()).counts,
            }

    seen = await trio.to_thread.run_sync(scenario)
    assert seen["kinds"][0] == "StatusEvent" and seen["kinds"][-1] == "EndEvent"
    assert seen["lines"] == seen["read"] and json.loads("".join(seen["lines"]))["argv"]
    assert seen["final"].status is JobStatus.COMPLETED and seen["listed"] == 1
    assert "already finished" in seen["stopped"] and seen["health"] == "ok"
    assert seen["jobs_event"]["Completed"] == 1


def test_follow_resumes_after_the_last_log_event_and_gives_up_eventually() -> None:
    follow = Follow(job_id=1, last_event_id=None, reconnects=1)
    assert follow.headers() == {}
    frames = ["id: 5-7", "event: log", 'data: {"stream": "stderr", "offset": 0, "lines": ["x\\n"]}']
    assert [follow.feed(line) for line in frames] == [None, None, None]
    event = follow.feed("")
    assert event == LogEvent("stderr", 0, ["x\n"], "5-7")
    assert follow.feed(": keep-alive") is None and follow.feed("") is None
    assert follow.headers() == {"Last-Event-ID": "5-7"}
    error = ServerUnreachable("http://x", EOFError("gone"))
    follow.dropped(error)  # one reconnect allowed
    with pytest.raises(ServerUnreachable):
        follow.dropped(error)


def test_log_pager_keeps_lines_whole_across_pages() -> None:
    pager = LogPager(job_id=1, stream="stdout")

    def chunk(offset: int, text: str, size: int) -> LogChunkOut:
        end = offset + len(text)
        lines = text.splitlines(keepends=True)
        return LogChunkOut(
            job_id=1,
            stream="stdout",
            offset=offset,
            next_offset=end,
            size=size,
            text=text,
            lines=lines,
        )

    assert pager.take(chunk(0, "one\ntw", 10)) == ["one\n"] and not pager.done
    assert pager.call().params == {"stream": "stdout", "offset": 6, "limit": 1024 * 1024}
    assert pager.take(chunk(6, "o\nend", 11)) == ["two\n", "end"] and pager.done
