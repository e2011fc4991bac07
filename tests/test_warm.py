"""Warm runners: the pool's bookkeeping with a fake runner, then real lm_eval through a server.

The pool tests use ``tests/support/fake_warm.py``, which speaks the warm runner's protocol
without importing lm_eval. The server tests run real lm_eval jobs and check what matters to
users: a job without env_vars starts in a warm runner; env_vars read at import time still take
effect (a job never gets a runner started with another environment); stop still stops.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from lmeval_trio.config import Settings
from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.http.params import SUPERVISOR_KEY
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.runners import process
from lmeval_trio.runners.environment import local_environment
from lmeval_trio.runners.warm_pool import MAX_SPEC_BYTES, WarmPool, environment_key
from tests.conftest import SUPPORT, Server, fake_job, make_settings, start_server
from tests.support.stub_openai import StubHandle
from tests.test_real_lm_eval import completions_job

FAKE_WARM = SUPPORT / "fake_warm.py"
PREFIX = ("python", "-m", "lmeval_trio.harness.fastrun", "--index-cache", "/c")
GUARD_S = 60


class Output:
    def __init__(self) -> None:
        self.data = b""

    async def sink(self, chunk: bytes) -> None:
        self.data += chunk


def env(**extra: str) -> dict[str, str]:
    return local_environment(Settings.from_env({}), extra)


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[WarmPool]:
    warm = WarmPool(PREFIX, (sys.executable, str(FAKE_WARM)), cwd=tmp_path, max_idle=2, grace_s=2)
    warm.prime(env())
    async with trio.open_nursery() as nursery:
        await nursery.start(warm.run)
        yield warm
        nursery.cancel_scope.cancel()


async def adopt(warm: WarmPool, job_env: dict[str, str], cwd: Path) -> dict[str, Any] | None:
    """Take a runner for a job and run it to the end; its echo, or None if none matched."""
    handover = warm.take([*PREFIX, "run", "--tasks", "x"], job_env, cwd)
    if handover is None:
        return None
    out = Output()
    with trio.fail_after(GUARD_S):
        code = await process.adopt_process_group(
            handover.proc, handover.spec, on_stdout=out.sink, on_stderr=out.sink, grace_s=2
        )
    assert code == 0
    echo: dict[str, Any] = json.loads(out.data)
    return echo


async def test_a_job_takes_the_default_runner(pool: WarmPool, tmp_path: Path) -> None:
    with trio.fail_after(GUARD_S):
        await pool.wait_ready(env())
    echo = await adopt(pool, env(), tmp_path)
    assert echo is not None
    assert echo["spec"] == {"args": ["run", "--tasks", "x"], "cwd": str(tmp_path)}
    stats = pool.statistics()
    assert (stats.taken, stats.missed, stats.idle) == (1, 0, 1)  # replaced at once


async def test_other_environments_get_a_runner_once_they_recur(
    pool: WarmPool, tmp_path: Path
) -> None:
    a = env(WARM_MARKER="a")
    assert await adopt(pool, a, tmp_path) is None  # first sighting: no runner started for it
    assert pool.statistics().idle == 1
    assert await adopt(pool, a, tmp_path) is None  # it came back: one is started
    assert pool.statistics().idle == 2
    with trio.fail_after(GUARD_S):
        await pool.wait_ready(a)
    echo = await adopt(pool, a, tmp_path)
    assert echo is not None and echo["marker"] == "a"  # started with the job's environment
    assert (pool.statistics().taken, pool.statistics().missed) == (1, 2)


async def test_least_recently_used_environment_is_evicted_never_the_default(
    pool: WarmPool, tmp_path: Path
) -> None:
    a, b = env(WARM_MARKER="a"), env(WARM_MARKER="b")
    for job_env in (a, a, b, b):
        assert await adopt(pool, job_env, tmp_path) is None
    with trio.fail_after(GUARD_S):
        await pool.wait_ready(b)
        await pool.wait_ready(env())
    with pytest.raises(LookupError):
        await pool.wait_ready(a)
    assert pool.statistics().idle == 2


async def test_jobs_the_pool_cannot_serve(pool: WarmPool, tmp_path: Path) -> None:
    assert pool.take(["/usr/bin/lm_eval", "run"], env(), tmp_path) is None  # lm_eval_path
    assert pool.take(list(PREFIX), env(), tmp_path) is None  # no arguments at all
    huge = [*PREFIX, "run", "--metadata", "x" * MAX_SPEC_BYTES]
    assert pool.take(huge, env(), tmp_path) is None  # would not fit the pipe
    assert pool.statistics().missed == 0


async def test_a_runner_that_dies_while_idle_is_not_handed_out(tmp_path: Path) -> None:
    warm = WarmPool(PREFIX, (sys.executable, str(FAKE_WARM)), cwd=tmp_path, max_idle=1, grace_s=2)
    warm.prime(env(FAKE_WARM_MODE="die"))
    async with trio.open_nursery() as nursery:
        await nursery.start(warm.run)
        (spare,) = warm._idle.values()
        with trio.fail_after(GUARD_S):
            await spare.spawned.wait()
            assert spare.proc is not None
            await spare.proc.wait()
        await trio.testing.wait_all_tasks_blocked()  # the pool noticed
        assert warm.statistics().idle == 0
        assert await adopt(warm, env(FAKE_WARM_MODE="die"), tmp_path) is None
        assert warm.statistics().missed == 1
        nursery.cancel_scope.cancel()


async def test_stopping_the_pool_stops_its_idle_runners(tmp_path: Path) -> None:
    warm = WarmPool(PREFIX, (sys.executable, str(FAKE_WARM)), cwd=tmp_path, max_idle=2, grace_s=2)
    warm.prime(env())
    async with trio.open_nursery() as nursery:
        await nursery.start(warm.run)
        with trio.fail_after(GUARD_S):
            await warm.wait_ready(env())
        pids = [spare.proc.pid for spare in warm._idle.values() if spare.proc is not None]
        nursery.cancel_scope.cancel()
    assert len(pids) == 1
    assert not process.group_alive(pids[0])
    assert warm.statistics().idle == 0


async def test_cancelling_an_adopted_job_stops_its_group(pool: WarmPool, tmp_path: Path) -> None:
    blocking = env(FAKE_WARM_MODE="block")
    for _ in range(2):
        assert await adopt(pool, blocking, tmp_path) is None
    with trio.fail_after(GUARD_S):
        await pool.wait_ready(blocking)
    handover = pool.take([*PREFIX, "run"], blocking, tmp_path)
    assert handover is not None
    out = Output()
    with trio.fail_after(GUARD_S):
        with trio.move_on_after(1):  # the runner blocks forever once it has echoed its spec
            await process.adopt_process_group(
                handover.proc, handover.spec, on_stdout=out.sink, on_stderr=out.sink, grace_s=2
            )
    assert b'"spec"' in out.data
    assert handover.proc.returncode is not None
    assert not process.group_alive(handover.proc.pid)


async def test_a_runner_gone_before_its_job_raises_spare_lost(
    pool: WarmPool, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD_S):
        await pool.wait_ready(env())
    handover = pool.take([*PREFIX, "run"], env(), tmp_path)
    assert handover is not None
    handover.proc.kill()
    await handover.proc.wait()
    out = Output()
    with pytest.raises(process.SpareLost):
        await process.adopt_process_group(
            handover.proc, handover.spec, on_stdout=out.sink, on_stderr=out.sink, grace_s=2
        )


def test_environment_key_is_exact() -> None:
    assert environment_key({"A": "1", "B": "2"}) == environment_key({"B": "2", "A": "1"})
    assert environment_key({"A": "1"}) != environment_key({"A": "1 "})
    assert environment_key({"A": "1B\x002"}) != environment_key({"A": "1", "B": "2"})


# ------------------------------------------------------------------ real lm_eval


def probe_job(stub: StubHandle, **env_vars: str) -> dict[str, Any]:
    probe = {"tasks": "env_probe", "include_path": str(SUPPORT / "env_probe")}
    return completions_job(stub, **probe, **({"env_vars": env_vars} if env_vars else {}))


@pytest.fixture
async def warm_server(tmp_path: Path) -> AsyncIterator[Server]:
    import httpx

    settings = make_settings(tmp_path, warm_runners=2)
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            yield Server(url, client, app)
        shutdown.set()


def supervisor_of(server: Server) -> Supervisor:
    supervisor: Supervisor = server.app.extensions[SUPERVISOR_KEY]
    return supervisor


async def run_probe(server: Server, job: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Run a probe job to the end: what it saw at import time, and its stderr."""
    job_id = await server.submit(job)
    done = await server.wait_status(job_id)
    assert done["status"] == "Completed", done
    record = await supervisor_of(server).get(job_id)
    seen: dict[str, Any] = json.loads((record.job_dir / "import_env.json").read_text())
    return seen, record.stderr_path.read_text()


async def wait_for_pid(supervisor: Supervisor, job_id: int) -> JobRecord:
    """The job's record once it names its process (recorded just after the start)."""
    with trio.fail_after(GUARD_S):
        while True:
            version = supervisor.changed.version
            record = await supervisor.get(job_id)
            if record.pid is not None:
                return record
            await supervisor.changed.wait_past(version)


async def wait_warm(server: Server, env_vars: dict[str, str]) -> None:
    supervisor = supervisor_of(server)
    assert supervisor.warm is not None
    full = local_environment(supervisor.settings, supervisor.job_environment(env_vars))
    with trio.fail_after(300):  # the first runner of a test session may build the task index
        await supervisor.warm.wait_ready(full)


async def test_import_time_environment_is_each_jobs_own(
    warm_server: Server, stub: StubHandle
) -> None:
    await wait_warm(warm_server, {})
    seen, stderr = await run_probe(warm_server, probe_job(stub))
    assert "[fastrun] warm start" in stderr
    assert seen["etag_timeout_at_import"] == 10 and seen["etag_timeout_now"] is None

    for _ in range(2):  # new environment: started afresh, and a runner is kept once it recurs
        seen, stderr = await run_probe(warm_server, probe_job(stub, HF_HUB_ETAG_TIMEOUT="77"))
        assert "[fastrun] warm start" not in stderr
        assert seen["etag_timeout_at_import"] == 77 and seen["etag_timeout_now"] == "77"

    await wait_warm(warm_server, {"HF_HUB_ETAG_TIMEOUT": "77"})
    seen, stderr = await run_probe(warm_server, probe_job(stub, HF_HUB_ETAG_TIMEOUT="77"))
    assert "[fastrun] warm start" in stderr
    assert seen["etag_timeout_at_import"] == 77 and seen["etag_timeout_now"] == "77"

    health = (await warm_server.client.get("/healthz")).json()
    assert (health["warm_starts"], health["warm_misses"]) == (2, 2)
    assert health["warm_runners_idle"] == 2
    metrics = (await warm_server.client.get("/metrics")).text
    assert "lmeval_warm_starts 2.0" in metrics and "lmeval_warm_runners_idle 2.0" in metrics


async def test_stopping_a_warm_job_stops_its_process_group(
    warm_server: Server, stub: StubHandle
) -> None:
    stub.set_delay(30)  # every model request hangs: the job is surely mid-run when stopped
    await wait_warm(warm_server, {})
    job_id = await warm_server.submit(probe_job(stub))
    await warm_server.wait_status(job_id, JobStatus.RUNNING)
    record = await wait_for_pid(supervisor_of(warm_server), job_id)
    assert record.pid is not None
    response = await warm_server.client.post(f"/job/{job_id}/stop")
    assert response.status_code == 200, response.text
    done = await warm_server.wait_status(job_id)
    assert done["status"] == "Stopped"
    assert not process.group_alive(record.pid)
    assert supervisor_of(warm_server).statistics().warm_starts == 1


async def test_lm_eval_path_jobs_never_use_a_warm_runner(warm_server: Server) -> None:
    await wait_warm(warm_server, {})
    job_id = await warm_server.submit(fake_job("env"))
    done = await warm_server.wait_status(job_id)
    assert done["status"] == "Completed", done
    stats = supervisor_of(warm_server).statistics()
    assert (stats.warm_starts, stats.warm_misses) == (0, 0)
