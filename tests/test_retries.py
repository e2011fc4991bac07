"""Time limits and retries: timeout_s, max_attempts and back-off, with real processes (the
fake lm_eval for the engine's paths, real lm-eval against the stub model end to end)."""

from __future__ import annotations

import math
import signal
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from lmeval_trio.config import Settings, SettingsError
from lmeval_trio.engine import retries
from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.harness.log_wording import transient_error
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.runners.environment import local_environment
from lmeval_trio.runners.fake import Exit, FakeRunner, Sleep, stderr
from tests.conftest import (
    DUMMY_JOB,
    Server,
    fake_job,
    job_files,
    make_settings,
    pid_alive,
    supervisor_of,
)
from tests.support.stub_openai import StubHandle, start_stub
from tests.test_real_lm_eval import completions_job

REFUSED = (
    "requests.exceptions.ConnectionError: ('Connection aborted.', ConnectionRefusedError(111))"
)


def _failing(tmp_path: Path, error: str, **extra: Any) -> dict[str, Any]:
    """A fake lm_eval that fails with ``error`` as its traceback's last line (read from a
    file: a long env_vars value counts as a secret and would be masked in the logs)."""
    text = job_files(tmp_path) / "error.txt"
    text.write_text(error + "\n")
    return {**fake_job("exit", FAKE_ERROR_FILE=str(text)), **extra}


async def _until(supervisor: Supervisor, job_id: int, ready: Any) -> JobRecord:
    """The job's record once ``ready(record)`` holds (waiting on the change signal)."""
    with trio.fail_after(120):
        while True:
            version = supervisor.changed.version
            record = await supervisor.get(job_id)
            if ready(record):
                return record
            await supervisor.changed.wait_past(version)


def _waiting_to_retry(record: JobRecord) -> bool:
    return record.status is JobStatus.QUEUED and record.retry_at is not None


# -- the engine, with the fake lm_eval -----------------------------------------------------


async def test_transient_failures_are_retried_until_max_attempts(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, retry_base_delay_s=0.01, retry_max_delay_s=0.02)
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit(_failing(tmp_path, REFUSED, max_attempts=3))
        final = await supervisor.wait(record.id)
    assert final.status is JobStatus.FAILED and final.attempts == 3
    assert final.reason == f"lm-eval exited with code 1: {REFUSED}" and final.retry_at is None
    history = final.attempt_history
    assert [a["attempt"] for a in history] == [1, 2, 3]
    assert [a["retried"] for a in history] == [True, True, False]
    assert all(a["outcome"] == "Failed" and a["exit_code"] == 1 for a in history)
    assert all(a["reason"] == final.reason for a in history)
    log = final.stderr_path.read_bytes()
    for entry in history[1:]:  # each attempt's output begins at its marker
        start = log[entry["stderr_offset"] :]
        assert start.startswith(f"[lmeval-trio] attempt {entry['attempt']} started at ".encode())
        assert b"after: attempt " in start.split(b"\n", 1)[0]  # the retry's reason
    assert history[0]["stderr_offset"] == 0


async def test_other_failures_are_final(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, retry_base_delay_s=0.01)
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit(
            _failing(tmp_path, "ValueError: bad value", max_attempts=5)
        )
        final = await supervisor.wait(record.id)
    assert final.status is JobStatus.FAILED and final.attempts == 1
    assert [a["retried"] for a in final.attempt_history] == [False]


async def test_a_job_killed_by_sigkill_it_was_not_sent_is_retried(tmp_path: Path) -> None:
    """The OOM killer's SIGKILL (here the job's own) is transient; ours after a stop is not."""
    settings = make_settings(tmp_path, retry_base_delay_s=0.01)
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit({**fake_job("oom"), "max_attempts": 2})
        final = await supervisor.wait(record.id)
    assert final.status is JobStatus.FAILED and final.attempts == 2
    assert final.exit_code == -signal.SIGKILL and "SIGKILL" in (final.reason or "")
    assert [a["retried"] for a in final.attempt_history] == [True, False]


async def test_a_stop_during_a_later_attempt_stops_the_job(tmp_path: Path) -> None:
    """The first attempt's own exit is no end of the second: the stopped second attempt
    leaves the job Stopped, not Failed with the first attempt's exit code."""
    settings = make_settings(tmp_path, retry_base_delay_s=0.01)
    body = _failing(tmp_path, REFUSED, max_attempts=2)
    marker = job_files(tmp_path) / "failed-once"
    body["env_vars"].update(FAKE_MODE="exit_once", FAKE_MARKER=str(marker))
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit(body)
        await _until(supervisor, record.id, lambda r: r.attempts == 2 and r.pid is not None)
        await supervisor.stop(record.id)
        final = await supervisor.wait(record.id)
    assert final.status is JobStatus.STOPPED and final.reason == "stopped by request"
    assert final.attempts == 2 and final.exit_code != 1
    assert [a["retried"] for a in final.attempt_history] == [True, False]


@pytest.mark.parametrize("how", ["stop", "delete"])
async def test_stop_or_delete_during_the_back_off_ends_the_wait_at_once(
    tmp_path: Path, how: str
) -> None:
    settings = make_settings(tmp_path, retry_base_delay_s=3600, retry_max_delay_s=3600)
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit(_failing(tmp_path, REFUSED, max_attempts=2))
        waiting = await _until(supervisor, record.id, _waiting_to_retry)
        assert waiting.attempts == 1 and "retrying at" in (waiting.reason or "")
        assert supervisor.slots.free == supervisor.slots.total  # the wait holds no slot
        with trio.fail_after(5):  # not the hour of back-off
            if how == "stop":
                await supervisor.stop(record.id)
                stopped = await supervisor.wait(record.id)
                assert stopped.status is JobStatus.STOPPED and stopped.attempts == 1
                assert stopped.reason == "stopped by request"
                assert stopped.retry_at is None
            else:
                await supervisor.delete(record.id)
                assert await supervisor.store.get(record.id) is None
        assert not supervisor.live.jobs


async def test_a_restart_keeps_the_back_off(tmp_path: Path) -> None:
    """Shut down while waiting to retry: the job stays Queued with its retry time, and the
    next start runs it no earlier than that."""
    settings = make_settings(tmp_path, retry_base_delay_s=1.5)
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit(_failing(tmp_path, REFUSED, max_attempts=2))
        waiting = await _until(supervisor, record.id, _waiting_to_retry)
    async with Supervisor(settings) as supervisor:
        stored = await supervisor.get(record.id)
        assert stored.status is JobStatus.QUEUED and stored.retry_at == waiting.retry_at
        final = await supervisor.wait(record.id)
    assert final.attempts == 2 and len(final.attempt_history) == 2
    second = final.attempt_history[1]
    assert waiting.retry_at is not None
    started, retry_at = (
        datetime.fromisoformat(t) for t in (second["started_at"], waiting.retry_at)
    )
    assert started >= retry_at


async def test_a_timeout_stops_the_job_and_it_fails(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, kill_grace_s=0.5, shutdown_timeout_s=5)
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit({**fake_job("tree"), "timeout_s": 0.5, "max_attempts": 3})
        running = await _until(supervisor, record.id, lambda r: r.pid is not None)
        final = await supervisor.wait(record.id)
    assert final.status is JobStatus.FAILED and final.reason == "timed out after 0.5 s"
    assert final.attempts == 1 and final.exit_code is None  # a timeout is not retried
    assert running.pid is not None and not pid_alive(running.pid)
    assert final.attempt_history[0]["outcome"] == "Failed"


async def test_the_server_default_timeout_applies_without_timeout_s(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, job_timeout_s=0.25, kill_grace_s=0.5, shutdown_timeout_s=5)
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit(fake_job("block"))
        final = await supervisor.wait(record.id)
        own_limit = await supervisor.submit({**fake_job("env"), "timeout_s": 60})
        quick = await supervisor.wait(own_limit.id)  # the request's limit wins
    assert final.status is JobStatus.FAILED and final.reason == "timed out after 0.25 s"
    assert quick.status is JobStatus.COMPLETED


def test_a_reattached_job_keeps_its_deadline(tmp_path: Path) -> None:
    """The deadline counts from the attempt's started_at, not from when it is followed."""
    settings = make_settings(tmp_path)
    record = JobRecord(
        id=1,
        status=JobStatus.RUNNING,
        request={"tasks": "x", "timeout_s": 60},
        argv=[],
        env={},
        job_dir=tmp_path,
        output_dir=tmp_path,
        created_at="2026-01-01T00:00:00+00:00",
        queued_at="2026-01-01T00:00:00+00:00",
        started_at=retries.stamp_after(-45),
    )

    async def main() -> None:
        left = retries.deadline(record, settings) - trio.current_time()
        assert 0 < left <= 15
        assert (
            retries.deadline(
                JobRecord(**{**record.__dict__, "started_at": retries.stamp_after(-90)}), settings
            )
            <= trio.current_time()
        )
        no_limit = JobRecord(**{**record.__dict__, "request": {"tasks": "x"}})
        assert retries.deadline(no_limit, settings) == math.inf

    trio.run(main)


def test_the_wording_of_transient_failures() -> None:
    """Lines as requests, aiohttp and lm-eval's remote tokenizer end a traceback with."""
    transient = [
        "requests.exceptions.HTTPError: 503 Server Error: Service Unavailable for url: http://h/v1",
        "requests.exceptions.HTTPError: 429 Client Error: Too Many Requests for url: http://h/v1",
        "requests.exceptions.ConnectionError: HTTPConnectionPool(host='h', port=1): Max retries "
        "exceeded with url: /v1 (Caused by NewConnectionError('[Errno 111] Connection refused'))",
        "requests.exceptions.ConnectionError: ('Connection aborted.', RemoteDisconnected('Remote "
        "end closed connection without response'))",
        "aiohttp.client_exceptions.ClientResponseError: 502, message='Bad Gateway', url='http://h'",
        "aiohttp.client_exceptions.ServerDisconnectedError: Server disconnected",
        "aiohttp.client_exceptions.ClientConnectorError: Cannot connect to host h:1 ssl:default",
        "RuntimeError: RemoteTokenizer: GET http://h/tokenizer_info failed after 3 attempts: "
        "HTTPConnectionPool(host='h', port=1): Max retries exceeded (Caused by NewConnection"
        "Error('Failed to establish a new connection: [Errno 111] Connection refused'))",
    ]
    final = [
        "requests.exceptions.HTTPError: 404 Client Error: Not Found for url: http://h/v2",
        "requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: http://h/v1",
        "requests.exceptions.ConnectionError: HTTPConnectionPool(host='nohost', port=80): Max "
        "retries exceeded (Caused by NameResolutionError(\"Failed to resolve 'nohost'\"))",
        "ValueError: Tasks not found: no_such_task",
        "RuntimeError: RemoteTokenizer: GET http://h/tokenizer_info failed after 3 attempts: "
        "401 Client Error: Unauthorized for url: http://h/tokenizer_info",
        "TypeError: __init__() got an unexpected keyword argument 'bogus'",
        "RuntimeError: Connection refused by the user's own code",
    ]
    assert [line for line in transient if not transient_error(line)] == []
    assert [line for line in final if transient_error(line)] == []
    assert retries.is_transient(-signal.SIGKILL, None) and retries.is_transient(137, None)
    assert not retries.is_transient(-signal.SIGTERM, None) and not retries.is_transient(1, None)


def test_back_off_doubles_up_to_its_cap(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, retry_base_delay_s=2, retry_max_delay_s=7)
    assert [retries.backoff_s(settings, n) for n in (1, 2, 3, 4, 500)] == [2, 4, 7, 7, 7]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LMEVAL_JOB_TIMEOUT_S", "0"),
        ("LMEVAL_JOB_TIMEOUT_S", "-5"),
        ("LMEVAL_JOB_TIMEOUT_S", "nan"),
        ("LMEVAL_JOB_TIMEOUT_S", "inf"),
        ("LMEVAL_JOB_TIMEOUT_S", "soon"),
        ("LMEVAL_MAX_ATTEMPTS_LIMIT", "0"),
        ("LMEVAL_MAX_ATTEMPTS_LIMIT", "1000"),
        ("LMEVAL_RETRY_BASE_DELAY_S", "0"),
        ("LMEVAL_RETRY_MAX_DELAY_S", "-1"),
    ],
)
def test_bad_settings_name_their_variable(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value, "LMEVAL_DATA_DIR": str(tmp_path / "d")})


# -- the API -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout_s", -1),
        ("timeout_s", 0),
        ("timeout_s", "60"),
        ("timeout_s", "NaN"),
        ("timeout_s", True),
        ("timeout_s", 1e12),
        ("timeout_s", [60]),
        ("max_attempts", 0),
        ("max_attempts", -2),
        ("max_attempts", 2.5),
        ("max_attempts", "2"),
        ("max_attempts", False),
        ("max_attempts", 10**30),
        ("max_attempts", 6),  # above LMEVAL_MAX_ATTEMPTS_LIMIT (5)
    ],
)
async def test_bad_values_are_refused_naming_the_field(
    server: Server, field: str, value: Any
) -> None:
    response = await server.client.post("/job", json={**DUMMY_JOB, field: value})
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["body", field]]


async def test_nan_and_infinity_are_refused(server: Server, tmp_path: Path) -> None:
    """Not JSON at all over HTTP; from Python (embedding), refused naming the field."""
    for raw in (b"NaN", b"Infinity", b"1e999"):
        body = b'{"tasks": "tiny_mc", "model": "dummy", "timeout_s": ' + raw + b"}"
        response = await server.client.post(
            "/job", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422 and "non-finite" in response.text
    supervisor = supervisor_of(server)
    from pydantic import ValidationError

    for value in (math.nan, math.inf):
        with pytest.raises(ValidationError, match="timeout_s"):
            await supervisor.submit({**DUMMY_JOB, "timeout_s": value})


async def test_the_fields_are_shown_in_the_request_and_the_schema(server: Server) -> None:
    job_id = await server.submit({**DUMMY_JOB, "timeout_s": 600, "max_attempts": 2})
    job = await server.wait_status(job_id)
    assert job["status"] == "Completed", job["reason"]
    assert job["request"]["timeout_s"] == 600 and job["request"]["max_attempts"] == 2
    assert "--timeout_s" not in job["argument"] and "max_attempts" not in job["argument"]
    [attempt] = job["attempt_history"]
    assert attempt["outcome"] == "Completed" and attempt["exit_code"] == 0
    assert attempt["retried"] is False and job["retry_at"] is None
    schema = (await server.client.get("/openapi.json")).json()
    fields = schema["paths"]["/job"]["post"]["requestBody"]["content"]["application/json"]
    assert {"timeout_s", "max_attempts"} <= set(fields["schema"]["properties"])


# -- real lm-eval against the stub model ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """This module's servers retry after half a second (the conftest ``server`` uses it).
    The endpoint pre-flight is off: it would hold a job whose endpoint is down before the job
    starts (tests/test_preflight.py covers that); these tests are about attempts that fail
    once started."""
    return make_settings(tmp_path, retry_base_delay_s=0.5, preflight="off")


async def test_an_endpoint_that_refuses_at_first_is_retried(server: Server) -> None:
    """The model endpoint is down when the job starts (connections refused): the attempt
    fails, the job waits Queued, the endpoint comes up, the next attempt completes."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1/completions"
    body = {**completions_job_for(url), "max_attempts": 3}
    job_id = await server.submit(body)
    supervisor = supervisor_of(server)
    await _until(supervisor, job_id, _waiting_to_retry)
    stub = start_stub(port=port)
    try:
        job = await server.wait_status(job_id)
    finally:
        stub.close()
    assert job["status"] == "Completed", job["reason"]
    assert job["attempts"] == 2 and job["reason"] is None and job["retry_at"] is None
    first, second = job["attempt_history"]
    assert first["retried"] and first["outcome"] == "Failed" and first["exit_code"] == 1
    assert "Connection refused" in first["reason"]
    assert second["outcome"] == "Completed" and second["exit_code"] == 0
    logs = await server.client.get(
        f"/job/{job_id}/logs", params={"stream": "stderr", "offset": second["stderr_offset"]}
    )
    assert logs.json()["lines"][0].startswith("[lmeval-trio] attempt 2 started at ")
    results = (await server.client.get(f"/job/{job_id}/results")).json()
    assert {m["task"]: m["value"] for m in results["metrics"]}["tiny_mc"] == 1.0


async def test_a_503_mid_run_is_retried_from_the_cache(server: Server, stub: StubHandle) -> None:
    """The endpoint answers 503 once, halfway: lm-eval gives up (max_retries=1), the next
    attempt takes the answers so far from the job's response cache and asks only the rest."""
    stub.set_delay(0.05)
    body = completions_job(stub, max_attempts=2)
    body["model_args"] = {**body["model_args"], "max_retries": 1}
    job_id = await server.submit(body)
    supervisor = supervisor_of(server)
    await _until(supervisor, job_id, lambda r: (supervisor.progress_dict(r).get("n") or 0) >= 5)
    stub.set_fail_first(1, 503)
    job = await server.wait_status(job_id)
    assert job["status"] == "Completed", job["reason"]
    first, second = job["attempt_history"]
    assert "503 Server Error" in first["reason"] and first["retried"]
    assert second["outcome"] == "Completed"
    assert stub.stats()["failures_injected"] == 1
    # Every answer was asked for once (plus the 503, and at most one in flight then).
    assert 38 + 1 <= stub.stats()["v1_requests"] <= 38 + 2
    values = (await server.client.get(f"/job/{job_id}/results")).json()["metrics"]
    assert {(m["task"], m["value"]) for m in values} >= {("tiny_mc", 1.0), ("tiny_gen", 1.0)}


async def test_no_retry_for_a_bad_task_or_a_bad_endpoint_path(
    server: Server, stub: StubHandle
) -> None:
    bad_task = await server.submit({**DUMMY_JOB, "tasks": "no_such_task", "max_attempts": 3})
    wrong_url = completions_job_for(stub.base_url + "/v2/nothing")
    bad_argument = await server.submit({**wrong_url, "max_attempts": 3})
    bad_value = completions_job_for(stub.completions_url)
    bad_value["model_args"] = {**bad_value["model_args"], "max_retries": "many"}
    bad_model_arg = await server.submit({**bad_value, "max_attempts": 3})
    for job_id, words in (
        (bad_task, "no_such_task"),
        (bad_argument, "404 Client Error"),
        (bad_model_arg, "invalid literal for int()"),
    ):
        job = await server.wait_status(job_id)
        assert job["status"] == "Failed" and words in job["reason"]
        assert job["attempts"] == 1 and len(job["attempt_history"]) == 1


@pytest.mark.parametrize("fork_servers", [0, 1])
async def test_a_real_job_on_a_hung_endpoint_times_out(tmp_path: Path, fork_servers: int) -> None:
    """The endpoint never answers: the job is stopped at its time limit, cold or forked."""
    settings = make_settings(tmp_path, fork_servers=fork_servers, kill_grace_s=1.0)
    with start_stub(delay_s=3600) as stub:
        async with Supervisor(settings) as supervisor:
            if fork_servers:
                await _fork_server_ready(supervisor)
            body = {**completions_job(stub), "timeout_s": 10, "max_attempts": 2}
            record = await supervisor.submit(body)
            final = await supervisor.wait(record.id)
            warm_starts = supervisor.statistics().warm_starts
    assert final.status is JobStatus.FAILED and final.reason == "timed out after 10 s"
    assert final.attempts == 1 and final.pid is not None and not pid_alive(final.pid)
    ran = retries.seconds_since(final.started_at) - retries.seconds_since(final.finished_at)
    assert ran >= 10  # not before its limit
    assert warm_starts == fork_servers


async def _fork_server_ready(supervisor: Supervisor) -> None:
    assert supervisor.forks is not None
    full = local_environment(supervisor.settings, supervisor.job_environment({}))
    with trio.fail_after(300):  # the first one of a test session may build the task index
        await supervisor.forks.wait_ready(full)


def completions_job_for(url: str) -> dict[str, Any]:
    return {
        "model": "local-completions",
        "model_args": {"model": "stub-model", "base_url": url, "tokenizer_backend": "remote"},
        "tasks": "tiny_mc",
        "include_path": str(Path(__file__).parent / "support" / "tasks"),
    }


# -- time limits per attempt, in milliseconds (fake runner, autojump clock) ----------------


@pytest.mark.parametrize(
    ("second_s", "status"), [(60, JobStatus.COMPLETED), (120, JobStatus.FAILED)]
)
async def test_each_attempt_has_its_own_time_limit(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    second_s: float,
    status: JobStatus,
) -> None:
    """``timeout_s`` is per attempt: a first attempt that failed transiently after 60 of its
    100 s leaves the second its own 100 s (60 more: Completed, 120 s in all); a second
    attempt that runs past its 100 s times out, and a timeout is final (the third never
    runs). The margins are wide: the deadline counts from the wall-clock ``started_at``,
    and the real seconds a loaded machine spends starting an attempt count too. The clock
    jumps only after 0.3 s of real idleness: the store's worker threads do not count as
    tasks, so a zero threshold would jump to the time limit while a thread is writing."""
    from tests.test_supervisor import rig, settings_for

    runner = FakeRunner()
    runner.script(1, stderr(REFUSED + "\n"), Sleep(60), Exit(1))
    runner.script(1, Sleep(second_s), Exit(0))
    runner.script(1, Exit(0))  # a third attempt: only if a timeout were retried
    settings = settings_for(tmp_path, retry_base_delay_s=1.0)
    async with rig(settings, autojump_clock, runner) as r:
        record = await r.submit(timeout_s=100, max_attempts=3)
        autojump_clock.autojump_threshold = 0.3  # (after submit: the rig sets it back to 0)
        final = await r.supervisor.wait(record.id)
    assert final.status is status and final.attempts == 2
    assert len(runner.runs_of(1)) == 2
    first, second = final.attempt_history
    assert first["retried"] and first["reason"] == f"lm-eval exited with code 1: {REFUSED}"
    assert second["retried"] is False and second["outcome"] == status.value
    if status is JobStatus.FAILED:
        assert final.reason == second["reason"] == "timed out after 100 s"
