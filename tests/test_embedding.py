"""Embedding: the supervisor without HTTP, the app in the caller's nursery, nothing left over."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import aclosing
from functools import partial
from pathlib import Path

import pytest
import trio

import lmeval_trio
from lmeval_trio.client import AsyncClient, ServerUnreachable
from lmeval_trio.embedding import serve_app
from lmeval_trio.engine.supervisor import StopOutcome, Supervisor
from lmeval_trio.errors import NotAccepting
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.runners import process
from tests.conftest import CACHE_DIR, fake_job, make_settings

EXAMPLE = Path(__file__).parents[1] / "examples" / "embed_in_trio.py"


class Boom(Exception):
    pass


async def test_supervisor_without_http(tmp_path: Path) -> None:
    async with Supervisor(make_settings(tmp_path)) as supervisor:
        done = await supervisor.submit(fake_job("env"))
        assert (await supervisor.wait(done.id)).status is JobStatus.COMPLETED
        blocked = await supervisor.submit(fake_job("block"))
        outcome, record = await supervisor.stop(blocked.id)
        assert outcome in (StopOutcome.STOPPED, StopOutcome.DEQUEUED)
        assert record.status is JobStatus.STOPPED


async def test_served_app_borrows_the_callers_supervisor(tmp_path: Path) -> None:
    async with Supervisor(make_settings(tmp_path)) as supervisor:
        stop_serving = trio.Event()
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(
                partial(serve_app, supervisor, shutdown_trigger=stop_serving.wait)
            )
            async with AsyncClient(url) as client:
                job_id = (await client.submit(fake_job("env"))).job_id
                assert (await client.wait(job_id)).status is JobStatus.COMPLETED
            stop_serving.set()
        # The server is gone; the supervisor it borrowed is not.
        assert supervisor.accepting and (await supervisor.get(job_id)).id == job_id
        async with AsyncClient(url, reconnects=0) as client:
            with pytest.raises(ServerUnreachable):
                await client.health()
        again = await supervisor.submit(fake_job("env"))
        assert (await supervisor.wait(again.id)).status is JobStatus.COMPLETED


async def test_serving_needs_a_running_supervisor(tmp_path: Path) -> None:
    with pytest.raises(NotAccepting):
        await serve_app(Supervisor(make_settings(tmp_path)))


async def _running_tree(client: AsyncClient) -> tuple[int, int]:
    """Submit a job whose grandchild ignores SIGTERM; return (job id, its process group)."""
    job_id = (await client.submit(fake_job("tree"))).job_id
    async with aclosing(client.follow_logs(job_id, ("stdout",))) as lines:
        async for line in lines:
            found = re.fullmatch(r"leader (\d+)\n", line.text)
            if found:  # the job's group is led by its first process (reaper.py)
                return job_id, os.getpgid(int(found.group(1)))
    raise AssertionError("the job ended before printing its pid")


@pytest.mark.parametrize("ending", ["shutdown trigger", "cancellation", "exception"])
async def test_leaving_the_block_leaves_no_task_and_no_process(tmp_path: Path, ending: str) -> None:
    settings = make_settings(tmp_path, kill_grace_s=0.5)
    tasks_before = trio.lowlevel.current_statistics().tasks_living
    stop_serving = trio.Event()
    raised = False
    try:
        async with Supervisor(settings) as supervisor, trio.open_nursery() as nursery:
            [url] = await nursery.start(
                partial(serve_app, supervisor, shutdown_trigger=stop_serving.wait)
            )
            async with AsyncClient(url) as client:
                job_id, group = await _running_tree(client)
            assert process.group_alive(group)
            if ending == "shutdown trigger":
                stop_serving.set()
            elif ending == "cancellation":
                nursery.cancel_scope.cancel()
            else:
                raise Boom
    except* Boom:
        raised = True
    assert raised == (ending == "exception")
    assert trio.lowlevel.current_statistics().tasks_living == tasks_before
    assert not process.group_alive(group)
    async with Supervisor(settings.model_copy(update={"max_concurrency": 0})) as later:
        record = await later.get(job_id)
    assert record.status is JobStatus.QUEUED and record.reason
    assert "interrupted" in record.reason


def test_public_api_is_lazy_and_documented() -> None:
    code = (
        "import sys, lmeval_trio\n"
        "assert not {'pydantic', 'trio', 'httpx'} & set(sys.modules), 'import is not cheap'\n"
        "assert lmeval_trio.serve_app.__doc__ and lmeval_trio.Supervisor.__doc__\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert set(lmeval_trio.__all__) <= set(dir(lmeval_trio))


async def test_the_example_program_runs(tmp_path: Path) -> None:
    """The example runs a real (dummy-model) evaluation end to end."""
    env = {**os.environ, "LMEVAL_CACHE_DIR": str(CACHE_DIR)}
    with trio.fail_after(300):
        result = await trio.run_process(
            [sys.executable, str(EXAMPLE), "--data-dir", str(tmp_path / "data")],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "job 1 submitted over HTTP" in out
    assert "job 2 submitted directly, then removed from the queue (Stopped)" in out
    assert "loglikelihood: 100%" in out
    assert re.search(r"^example_arith acc: [\d.]+$", out, re.MULTILINE)
    assert out.rstrip().endswith("job 1: Completed")
