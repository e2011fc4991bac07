"""The Ray backend against a real, private Ray head on loopback (started once per session).

Jobs go through the Ray Jobs REST API and come back into the same store, logs, progress and
results as local jobs. Skipped when the ``ray`` package is missing (it is a dev dependency),
unless LMEVAL_TEST_REQUIRE_RAY=1, as in CI, makes that a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lmeval_trio.config import Settings
from lmeval_trio.engine.slots import Slots
from lmeval_trio.engine.supervisor import Supervisor, default_runner
from lmeval_trio.http.params import SUPERVISOR_KEY
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.runners.ray import RayRunner, _gist
from tests.conftest import CACHE_DIR, DUMMY_JOB, Server, fake_job, make_settings, start_server
from tests.support.ray_head import RayHead

REQUIRE_RAY = os.environ.get("LMEVAL_TEST_REQUIRE_RAY") == "1"
WAIT_S = 90  # a job on a loaded 2-core machine: Ray adds seconds to every step


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """The dashboard URL of a Ray head that lives as long as the test session."""
    if importlib.util.find_spec("ray") is None:
        message = "the ray package is not installed (it comes with the dev dependencies)"
        if REQUIRE_RAY:
            pytest.fail(message + " and LMEVAL_TEST_REQUIRE_RAY=1")
        pytest.skip(message + ": Ray backend tests skipped")
    head = RayHead.start(CACHE_DIR / "pycache")
    try:
        yield head.address
    finally:
        head.stop()


def ray_settings(tmp_path: Path, address: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"backend": "ray", "ray_address": address, "ray_status_poll_s": 0.5}
    return make_settings(tmp_path, **{**values, **overrides})


async def ray_job(address: str, submission_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=address) as client:
        response = await client.get(f"/api/jobs/{submission_id}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def wait_for_log(supervisor: Supervisor, job_id: int, pattern: str) -> re.Match[str]:
    """Wait (on the job's change signal) until its stderr log matches ``pattern``."""
    with trio.fail_after(WAIT_S):
        while True:
            pulse = supervisor.live_changes(job_id)
            assert pulse is not None, "the job ended"
            version = pulse.version
            record = await supervisor.get(job_id)
            found = re.search(pattern, _read(record.stderr_path))
            if found:
                return found
            await pulse.wait_past(version)


async def wait_for_percent(supervisor: Supervisor, job_id: int, percent: int) -> None:
    with trio.fail_after(WAIT_S):
        while True:
            pulse = supervisor.live_changes(job_id)
            assert pulse is not None, "the job ended"
            version = pulse.version
            if supervisor.progress(await supervisor.get(job_id)).percent >= percent:
                return
            await pulse.wait_past(version)


async def finish(supervisor: Supervisor, job_id: int) -> JobRecord:
    with trio.fail_after(WAIT_S):
        return await supervisor.wait(job_id)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


class Gate:
    """A FIFO the fake's ``bars`` mode reads one line per step from: holds a job mid-run."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self._fd = os.open(path, os.O_RDWR)  # opening does not wait for the reader

    def step(self, count: int = 1) -> None:
        os.write(self._fd, b"go\n" * count)

    def close(self) -> None:
        os.close(self._fd)


def bars_job(gate: Gate, total: int = 4) -> dict[str, Any]:
    return fake_job("bars", FAKE_TOTAL=str(total), FAKE_GATE=str(gate.path))


@asynccontextmanager
async def ray_supervisor(settings: Settings) -> AsyncIterator[Supervisor]:
    async with Supervisor(settings) as supervisor:
        assert isinstance(supervisor.runner, RayRunner)
        yield supervisor


# -- with a Ray head ----------------------------------------------------------------------


async def test_jobs_run_on_ray_with_their_env_logs_and_exit_codes(
    ray_address: str, tmp_path: Path
) -> None:
    async with ray_supervisor(ray_settings(tmp_path, ray_address)) as supervisor:
        ok = await supervisor.submit({**fake_job("env"), "num_cpus": 0.5})
        failing = await supervisor.submit(fake_job("exit", FAKE_CODE="3"))
        ok, failing = await finish(supervisor, ok.id), await finish(supervisor, failing.id)

    assert ok.status is JobStatus.COMPLETED and ok.exit_code == 0, ok.reason
    assert ok.backend == "ray" and ok.external_id is not None
    assert re.fullmatch(r"lmeval-trio-[0-9a-f]{8}-1-1", ok.external_id)
    assert '"FAKE_MODE": "env"' in _read(ok.stderr_path)  # Ray merges stdout into the log
    assert "Ray job " + ok.external_id in _read(ok.stdout_path)
    submitted = await ray_job(ray_address, ok.external_id)
    assert submitted["status"] == "SUCCEEDED"
    assert submitted["entrypoint"] == shlex.join(ok.argv)
    assert submitted["metadata"]["lmeval_trio_job_id"] == str(ok.id)
    env_vars = submitted["runtime_env"]["env_vars"]
    assert env_vars["FAKE_MODE"] == "env" and env_vars["HF_HUB_OFFLINE"] == "1"
    assert not any(name.startswith("LMEVAL_") for name in env_vars)  # the job's own only

    assert failing.status is JobStatus.FAILED and failing.exit_code == 3
    assert failing.reason == "lm-eval exited with code 3: ValueError: fake failure for the test"


async def test_progress_logs_and_results_through_the_http_api(
    ray_address: str, tmp_path: Path
) -> None:
    settings = ray_settings(tmp_path, ray_address)
    gate = Gate(tmp_path / "gate")
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url) as client:
            server = Server(url, client, app)
            real = await server.submit(DUMMY_JOB)
            held = await server.submit(bars_job(gate))
            supervisor: Supervisor = app.extensions[SUPERVISOR_KEY]
            gate.step(2)
            await wait_for_percent(supervisor, held, 50)
            assert (await server.job(held))["status"] == "Running"
            gate.step(2)
            done = await server.wait_status(held, JobStatus.COMPLETED, JobStatus.FAILED)
            assert done["status"] == "Completed" and done["inference_progress_pct"] == 100
            logs = (await client.get(f"/job/{held}/logs", params={"stream": "stderr"})).json()
            assert "Requesting API: 100%" in logs["text"]

            job = await server.wait_status(real, JobStatus.COMPLETED, JobStatus.FAILED)
            assert job["status"] == "Completed", job["reason"]
            assert job["inference_progress_pct"] == 100
            results = (await client.get(f"/job/{real}/results")).json()
            metrics = {(m["task"], m["metric"]) for m in results["metrics"]}
            assert ("tiny_mc", "acc") in metrics and ("tiny_gen", "exact_match") in metrics
        shutdown.set()
    gate.close()


async def test_stop_ends_the_whole_tree_on_ray(ray_address: str, tmp_path: Path) -> None:
    async with ray_supervisor(ray_settings(tmp_path, ray_address)) as supervisor:
        record = await supervisor.submit(fake_job("tree"))
        leader = int((await wait_for_log(supervisor, record.id, r"leader (\d+)\n")).group(1))
        grandchild = int(
            (await wait_for_log(supervisor, record.id, r"grandchild (\d+)\n")).group(1)
        )
        assert _alive(leader) and _alive(grandchild)
        with trio.fail_after(WAIT_S):
            _, stopped = await supervisor.stop(record.id)
    assert stopped.status is JobStatus.STOPPED and stopped.reason == "stopped by request"
    assert not _alive(leader) and not _alive(grandchild)  # it ignored SIGTERM: Ray killed it
    assert stopped.external_id is not None
    assert (await ray_job(ray_address, stopped.external_id))["status"] == "STOPPED"


async def test_shutdown_detaches_and_the_next_start_reattaches(
    ray_address: str, tmp_path: Path
) -> None:
    """One job is still running at the restart, the other ended while no server ran."""
    settings = ray_settings(tmp_path, ray_address)
    running, ended = Gate(tmp_path / "running"), Gate(tmp_path / "ended")
    async with ray_supervisor(settings) as supervisor:
        first = await supervisor.submit(bars_job(running))
        second = await supervisor.submit(bars_job(ended))
        running.step()
        ended.step()
        await wait_for_percent(supervisor, first.id, 25)
        await wait_for_percent(supervisor, second.id, 25)
    # Detached: both still Running in the store and on the cluster.
    for record in (first, second):
        assert (await _stored(settings, record.id)).status is JobStatus.RUNNING
    ended.step(3)
    second_id = (await _stored(settings, second.id)).external_id
    assert second_id is not None
    await _wait_ray_status(ray_address, second_id, "SUCCEEDED")

    async with ray_supervisor(settings) as supervisor:
        finished = await finish(supervisor, second.id)
        assert finished.status is JobStatus.COMPLETED, finished.reason
        assert finished.progress_pct == 100 and finished.attempts == 1
        assert (await supervisor.get(first.id)).status is JobStatus.RUNNING
        running.step(3)
        resumed = await finish(supervisor, first.id)
    assert resumed.status is JobStatus.COMPLETED and resumed.attempts == 1, resumed.reason
    for record in (finished, resumed):
        log = _read(record.stderr_path)
        assert log.count("Running loglikelihood requests") == 1, log  # nothing twice
        assert log.count("Requesting API:  25%") == 1, log
        assert "Requesting API: 100%" in log
        assert "re-attached after a server restart" in _read(record.stdout_path)
    running.close()
    ended.close()


async def test_recover_requeues_a_job_the_cluster_never_got(
    ray_address: str, tmp_path: Path
) -> None:
    runner = RayRunner(ray_settings(tmp_path, ray_address))
    record = _record(tmp_path, external_id="lmeval-trio-00000000-1-1")
    assert await runner.recover(record) is False


# -- without a Ray head -------------------------------------------------------------------


async def test_an_unreachable_cluster_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    address = "http://127.0.0.1:9"  # discard port: nothing listens
    settings = make_settings(
        tmp_path, backend="ray", ray_address=address, ray_unreachable_timeout_s=1.0
    )
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit(fake_job("env"))
        with trio.fail_after(30):
            failed = await supervisor.wait(record.id)
    assert failed.status is JobStatus.FAILED
    assert failed.reason is not None
    assert failed.reason.startswith(f"could not start: the Ray cluster at {address} did not answer")
    assert "ConnectError" in failed.reason


async def test_recover_reattaches_while_the_cluster_is_unreachable(tmp_path: Path) -> None:
    """Requeueing could run the job twice; re-attaching waits for the cluster instead."""
    runner = RayRunner(make_settings(tmp_path, backend="ray", ray_address="http://127.0.0.1:9"))
    assert await runner.recover(_record(tmp_path, external_id="lmeval-trio-x-1-1")) is True


def test_the_ray_backend_leaves_gpus_to_ray(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, backend="ray", gpus=("0",))
    assert isinstance(default_runner(settings), RayRunner)
    assert Slots(settings).gpus_for(4) == 0  # no local pool: Ray schedules GPUs
    assert Slots(make_settings(tmp_path, gpus=("0",))).gpus_for(4) == 4


def test_the_submission_carries_the_job_its_resources_and_the_grace(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, backend="ray", ray_num_gpus_default=1, kill_grace_s=2.5)
    record = replace(
        _record(tmp_path, external_id=None),
        id=7,
        attempts=2,
        request={"num_cpus": 0.5},
        argv=["lm-eval", "run", "--tasks=a b"],
    )
    payload = RayRunner(settings)._payload(record, {"A": "1"}, "lmeval-trio-x-7-2")
    assert payload == {
        "entrypoint": "lm-eval run '--tasks=a b'",
        "submission_id": "lmeval-trio-x-7-2",
        "metadata": {"lmeval_trio_job_id": "7", "lmeval_trio_attempt": "2"},
        "runtime_env": {"env_vars": {"A": "1", "RAY_JOB_STOP_WAIT_TIME_S": "3"}},
        "entrypoint_num_gpus": 1.0,
        "entrypoint_num_cpus": 0.5,
    }


def test_ray_settings_are_validated() -> None:
    settings = Settings.from_env(
        {"LMEVAL_BACKEND": "ray", "LMEVAL_RAY_ADDRESS": "http://head:8265/"}
    )
    assert settings.backend == "ray" and settings.ray_address == "http://head:8265"
    with pytest.raises(ValueError, match="LMEVAL_RAY_ADDRESS"):
        Settings.from_env({"LMEVAL_RAY_ADDRESS": "head:8265"})


def test_the_gist_of_a_ray_traceback_is_its_error_line() -> None:
    text = (
        'Traceback (most recent call last):\n  File "x.py", line 1\n'
        "ValueError: Job with submission_id t1 already exists.\n.\n"
    )
    assert _gist(text) == "ValueError: Job with submission_id t1 already exists."
    assert _gist("\nNo available agent to submit job\n") == "No available agent to submit job"


# -- helpers ------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _stored(settings: Settings, job_id: int) -> JobRecord:
    from lmeval_trio.store.sqlite import JobStore

    store = JobStore(settings.data_dir / "jobs.db")
    await store.open()
    try:
        record = await store.get(job_id)
    finally:
        await store.close()
    assert record is not None
    return record


async def _wait_ray_status(address: str, submission_id: str, status: str) -> None:
    with trio.fail_after(WAIT_S):
        while True:  # the cluster's own state: nothing to wait on but its answers
            if (await ray_job(address, submission_id))["status"] == status:
                return
            await trio.sleep(0.5)


def _record(tmp_path: Path, external_id: str | None) -> JobRecord:
    return JobRecord(
        id=1,
        status=JobStatus.RUNNING,
        request={},
        argv=["true"],
        env={},
        job_dir=tmp_path / "jobs" / "1",
        output_dir=tmp_path / "jobs" / "1" / "output",
        created_at="2026-01-01T00:00:00+00:00",
        queued_at="2026-01-01T00:00:00+00:00",
        attempts=1,
        backend="ray",
        external_id=external_id,
    )
