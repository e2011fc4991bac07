"""Fork servers (warm runners): real lm_eval forked behind real launchers, through a real server.

What matters to users: a job is forked when a fork server matches its import-time
environment and runs cold otherwise, never failing for it; nothing a forked job started
survives a stop, a delete, a shutdown or a kill -9 of the job, its fork server or the server;
and each leaves the job's record right. The launcher's own fallbacks are tested directly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.runners import process
from lmeval_trio.runners.environment import local_environment
from lmeval_trio.runners.fork_launcher import environment_key
from lmeval_trio.runners.fork_server import LAUNCHER
from tests.conftest import (
    DUMMY_JOB,
    SUPPORT,
    TASKS_DIR,
    Server,
    fake_job,
    job_files,
    make_settings,
    serving,
    supervisor_of,
)
from tests.support.stub_openai import StubHandle
from tests.test_real_lm_eval import completions_job
from tests.test_server_process import hypercorn_server

GUARD_S = 120
#: Waits on processes this server did not start have no event to wait on: they look again.
LOOK_AGAIN_S = 0.05


@pytest.fixture
async def forking(tmp_path: Path) -> AsyncIterator[Server]:
    async with serving(make_settings(tmp_path, fork_servers=2)) as server:
        yield server


async def fork_server_ready(supervisor: Supervisor, env_vars: dict[str, str] | None = None) -> int:
    """The pid of the fork server for jobs with ``env_vars``, once it has preloaded."""
    forks = supervisor.forks
    assert forks is not None
    env = local_environment(supervisor.settings, supervisor.job_environment(env_vars or {}))
    with trio.fail_after(300):  # the first one of a test session may build the task index
        await forks.wait_ready(env)
    server = forks.server_for(env)
    assert server is not None and server.proc is not None
    return server.proc.pid


def children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def alive(pid: int) -> bool:
    """Not exited (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def wait_exit(pid: int) -> None:
    """Return once ``pid`` has exited (its pidfd turns readable), reaped or not."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with trio.fail_after(GUARD_S):
            await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


async def forked_pid(supervisor: Supervisor, fork_pid: int) -> int:
    """The pid of the one job the fork server ``fork_pid`` runs, once it runs one."""
    forks = supervisor.forks
    assert forks is not None
    with trio.fail_after(GUARD_S):
        while True:
            change = forks.next_change()
            running = [s for s in forks.statistics().servers if s.pid == fork_pid]
            if running and running[0].jobs_running:
                break
            await change.wait()
    (server,) = [s for s in forks._servers.values() if s.proc and s.proc.pid == fork_pid]
    (pid,) = server.running
    return pid


async def wait_for_pid(supervisor: Supervisor, job_id: int) -> JobRecord:
    with trio.fail_after(GUARD_S):
        while True:
            version = supervisor.changed.version
            record = await supervisor.get(job_id)
            if record.pid is not None:
                return record
            await supervisor.changed.wait_past(version)


async def running_forked(server: Server, stub: StubHandle) -> tuple[int, int, int]:
    """A forked job hanging on its first model request: (job id, its pid, its fork server's)."""
    stub.set_delay(30)
    supervisor = supervisor_of(server)
    fork_pid = await fork_server_ready(supervisor)
    job_id = await server.submit(completions_job(stub))
    return job_id, await forked_pid(supervisor, fork_pid), fork_pid


async def assert_gone(forked: int) -> None:
    """The forked job and its whole group are gone (the fork server reaps it at once)."""
    await wait_exit(forked)
    assert not process.group_alive(forked)


# ------------------------------------------------------------------ which jobs are forked


def probe_job(stub: StubHandle, **env_vars: str) -> dict[str, Any]:
    probe = {"tasks": "env_probe", "include_path": str(SUPPORT / "env_probe")}
    return completions_job(stub, **probe, **({"env_vars": env_vars} if env_vars else {}))


async def run_probe(server: Server, job: dict[str, Any]) -> tuple[dict[str, Any], str]:
    job_id = await server.submit(job)
    done = await server.wait_status(job_id)
    assert done["status"] == "Completed", done
    record = await supervisor_of(server).get(job_id)
    seen: dict[str, Any] = json.loads((record.job_dir / "import_env.json").read_text())
    return seen, record.stderr_path.read_text()


async def test_import_time_environment_is_each_jobs_own(forking: Server, stub: StubHandle) -> None:
    supervisor = supervisor_of(forking)
    default_pid = await fork_server_ready(supervisor)
    seen, stderr = await run_probe(forking, probe_job(stub))
    assert "[fastrun] warm start: forked" in stderr
    assert seen["etag_timeout_at_import"] == 10 and seen["etag_timeout_now"] is None

    for _ in range(2):  # a new environment runs cold; a fork server is started once it recurs
        seen, stderr = await run_probe(forking, probe_job(stub, HF_HUB_ETAG_TIMEOUT="77"))
        assert "[fastrun] warm start" not in stderr
        assert seen["etag_timeout_at_import"] == 77 and seen["etag_timeout_now"] == "77"

    other_pid = await fork_server_ready(supervisor, {"HF_HUB_ETAG_TIMEOUT": "77"})
    seen, stderr = await run_probe(forking, probe_job(stub, HF_HUB_ETAG_TIMEOUT="77"))
    assert "[fastrun] warm start: forked" in stderr
    assert seen["etag_timeout_at_import"] == 77 and seen["etag_timeout_now"] == "77"

    health = (await forking.client.get("/healthz")).json()
    assert (health["warm_starts"], health["warm_misses"]) == (2, 2)
    servers = {s["pid"]: s for s in health["fork_servers"]}
    assert set(servers) == {default_pid, other_pid}
    assert servers[default_pid]["jobs_forked"] == servers[other_pid]["jobs_forked"] == 1
    assert all(s["ready"] and s["age_s"] > 0 for s in servers.values())
    env = local_environment(supervisor.settings, supervisor.job_environment({}))
    assert servers[default_pid]["environment"] == environment_key(env)[:16]
    metrics = (await forking.client.get("/metrics")).text
    assert "lmeval_warm_starts 2.0" in metrics and "lmeval_fork_servers 2.0" in metrics
    digest = environment_key(env)[:16]
    assert f'lmeval_fork_server_jobs_forked{{environment="{digest}",pid="{default_pid}"}} 1.0' in (
        metrics
    )


async def test_lm_eval_path_jobs_are_never_forked(forking: Server) -> None:
    await fork_server_ready(supervisor_of(forking))
    job_id = await forking.submit(fake_job("env"))
    done = await forking.wait_status(job_id)
    assert done["status"] == "Completed", done
    stats = supervisor_of(forking).statistics()
    assert (stats.warm_starts, stats.warm_misses) == (0, 0)


async def test_a_task_yaml_edited_between_two_jobs_is_seen_by_the_second(
    forking: Server, tmp_path: Path
) -> None:
    tasks = job_files(tmp_path) / "tasks"
    shutil.copytree(TASKS_DIR, tasks, ignore=shutil.ignore_patterns("__pycache__"))
    body = {**DUMMY_JOB, "tasks": ["tiny_gen"], "include_path": str(tasks)}
    supervisor = supervisor_of(forking)
    await fork_server_ready(supervisor)
    versions = []
    for version in ("1.0", "7.0"):
        yaml = tasks / "tiny_gen.yaml"
        yaml.write_text(yaml.read_text().replace("version: 1.0", f"version: {version}"))
        job_id = await forking.submit(body)
        done = await forking.wait_status(job_id)
        assert done["status"] == "Completed", done
        record = await supervisor.get(job_id)
        assert "[fastrun] warm start: forked" in record.stderr_path.read_text()
        (results,) = record.job_dir.glob("output/**/results_*.json")
        versions.append(json.loads(results.read_text())["versions"]["tiny_gen"])
    assert versions == [1.0, 7.0]
    assert supervisor.statistics().warm_starts == 2


# ------------------------------------------------------------------ process hygiene


async def test_stop_ends_the_forked_job(forking: Server, stub: StubHandle) -> None:
    job_id, forked, fork_pid = await running_forked(forking, stub)
    response = await forking.client.post(f"/job/{job_id}/stop")
    assert response.status_code == 200, response.text
    done = await forking.wait_status(job_id)
    assert done["status"] == "Stopped"
    await assert_gone(forked)
    assert children(fork_pid) == [] and alive(fork_pid)  # the fork server serves on


async def test_delete_ends_the_forked_job(forking: Server, stub: StubHandle) -> None:
    job_id, forked, _ = await running_forked(forking, stub)
    response = await forking.client.delete(f"/job/{job_id}")
    assert response.status_code == 200, response.text
    await assert_gone(forked)
    assert (await forking.client.get(f"/job/{job_id}")).status_code == 404


async def test_kill_9_of_the_forked_job_fails_it(forking: Server, stub: StubHandle) -> None:
    job_id, forked, fork_pid = await running_forked(forking, stub)
    os.kill(forked, signal.SIGKILL)
    done = await forking.wait_status(job_id)
    assert done["status"] == "Failed"
    assert done["reason"] == "lm-eval was killed by signal SIGKILL (-9)"
    await assert_gone(forked)
    assert alive(fork_pid)


async def test_kill_9_of_the_fork_server_fails_its_job_and_replaces_it(
    forking: Server, stub: StubHandle
) -> None:
    job_id, forked, fork_pid = await running_forked(forking, stub)
    os.kill(fork_pid, signal.SIGKILL)
    done = await forking.wait_status(job_id)
    assert done["status"] == "Failed"
    assert "ForkServerError: the fork server died while the job ran" in done["reason"]
    await assert_gone(forked)
    stub.set_delay(0)
    supervisor = supervisor_of(forking)
    new_pid = await fork_server_ready(supervisor)  # the default one is replaced at once
    assert new_pid != fork_pid
    job_id = await forking.submit(completions_job(stub))
    done = await forking.wait_status(job_id)
    assert done["status"] == "Completed", done
    assert "warm start: forked" in (await supervisor.get(job_id)).stderr_path.read_text()


async def test_shutdown_requeues_the_forked_job(tmp_path: Path, stub: StubHandle) -> None:
    stub.set_delay(30)
    settings = make_settings(tmp_path, fork_servers=1)
    async with Supervisor(settings) as supervisor:
        fork_pid = await fork_server_ready(supervisor)
        record = await supervisor.submit(completions_job(stub))
        forked = await forked_pid(supervisor, fork_pid)
    await assert_gone(forked)  # gone by the time the supervisor has closed
    assert not alive(fork_pid)
    with closing(sqlite3.connect(settings.data_dir / "jobs.db")) as db:
        row = db.execute("SELECT status, reason FROM jobs WHERE id = ?", (record.id,)).fetchone()
    assert row == ("Queued", "interrupted: the server shut down while this job ran; requeued")


async def test_kill_9_of_the_server_ends_the_forked_job(tmp_path: Path, stub: StubHandle) -> None:
    """The fork server sees the server go (EOF on its control pipe) and ends its jobs; the
    restarted server requeues the job, which then completes."""
    stub.set_delay(30)
    data = tmp_path / "data"
    env = {"LMEVAL_FORK_SERVERS": "1", "LMEVAL_ALLOWED_PATH_ROOTS": f"{SUPPORT},{TASKS_DIR}"}
    async with hypercorn_server(data, **env) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            response = await client.post("/job", json=completions_job(stub))
            assert response.status_code == 200, response.text
            job_id = response.json()["job_id"]
            fork_pid, forked = await _forked_in(client)
        os.killpg(server.proc.pid, signal.SIGKILL)  # the server, not its fork server's session
        await server.proc.wait()
        await assert_gone(forked)
        await wait_exit(fork_pid)  # the fork server ended with the server
    stub.set_delay(0)
    async with hypercorn_server(data, **env) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            with trio.fail_after(GUARD_S):
                async with client.stream("GET", f"/job/{job_id}/events") as stream:
                    await stream.aread()
            job = (await client.get(f"/job/{job_id}")).json()
        assert job["status"] == "Completed", job
        assert job["attempts"] == 2


async def _forked_in(client: httpx.AsyncClient) -> tuple[int, int]:
    """(fork server pid, forked job pid) of a server in another process, once it runs its job:
    there is no event to wait on from here, so it asks again."""
    with trio.fail_after(300):  # the fork server may be importing lm-eval still
        while True:
            (server,) = (await client.get("/healthz")).json()["fork_servers"]
            if server["jobs_running"] and children(server["pid"]):
                (forked,) = children(server["pid"])
                return server["pid"], forked
            await trio.sleep(LOOK_AGAIN_S)


# ------------------------------------------------------------------ the launcher alone


async def test_a_launcher_that_cannot_reach_its_fork_server_starts_the_job_cold(
    tmp_path: Path,
) -> None:
    info_r, info_w = os.pipe()
    cold = [sys.executable, "-c", "import sys; print('cold start'); sys.exit(3)"]
    argv = [*LAUNCHER, "--socket=no-such-fork-server", f"--info-fd={info_w}", "--spec={}"]
    with trio.fail_after(GUARD_S):
        done = await trio.run_process(
            [*argv, "--", *cold], capture_stdout=True, pass_fds=(info_w,), check=False
        )
    os.close(info_w)
    with os.fdopen(info_r, "rb") as info:
        said = info.read().decode()
    assert (done.returncode, done.stdout) == (3, b"cold start\n")
    assert said.startswith("cold fork server unreachable: ")
