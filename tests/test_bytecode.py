"""The server's caches are the server's: it compiles the environment's bytecode and builds the
task index at start; jobs write no bytecode and import the environment's own."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import lm_eval
import pytest
import trio

from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.runners import bytecode
from tests.conftest import fake_job, make_settings

PREPARE_GUARD_S = 900  # the first start in a fresh venv compiles all of site-packages


def check_prepared(cache: Path) -> None:
    assert bytecode.stamp_file(cache).read_text() == bytecode.stamp(bytecode.folders())
    compiled = importlib.util.cache_from_source(lm_eval.__file__ or "")
    assert Path(compiled).is_file()  # in the environment's own __pycache__
    assert list((cache / "task-index").glob("task-index-*.pickle"))  # built by the server


async def test_the_server_prepares_the_caches_jobs_only_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "server-cache"
    settings = make_settings(tmp_path, cache_dir=cache)
    caplog.set_level(logging.INFO, logger="lmeval_trio.bytecode")
    async with Supervisor(settings) as supervisor:
        with trio.fail_after(PREPARE_GUARD_S):
            await supervisor.caches_prepared.wait()
        record = await supervisor.submit(fake_job("env"))
        final = await supervisor.wait(record.id)
        seen = json.loads(final.stdout_path.read_text())
    assert seen["env"]["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "PYTHONPYCACHEPREFIX" not in seen["env"]
    check_prepared(cache)
    assert "compiling the environment's bytecode" in caplog.text

    caplog.clear()
    async with Supervisor(settings) as again:
        with trio.fail_after(PREPARE_GUARD_S):
            await again.caches_prepared.wait()
    assert "compiling the environment's bytecode" not in caplog.text  # nothing changed


async def test_ready_for_jobs_once_the_fork_server_preloaded_the_index_it_built(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On a fresh cache the default fork server builds and caches the task index as it
    preloads: the server reuses it rather than building it again beside it, and says it is
    ready for jobs only once that fork server is ready and the task catalog is loaded."""
    cache = tmp_path / "server-cache"
    settings = make_settings(tmp_path, cache_dir=cache, fork_servers=1, check_tasks=True)
    caplog.set_level(logging.INFO, logger="lmeval_trio")
    async with Supervisor(settings) as supervisor:
        with trio.fail_after(PREPARE_GUARD_S):
            await supervisor.ready_for_jobs.wait()
        stats = supervisor.statistics()
        assert stats.caches_ready
        assert [server.ready for server in stats.fork_servers] == [True]
        catalog = await supervisor.catalogs.builtin()
        assert catalog.get("arc_easy") is not None
    check_prepared(cache)
    assert "compiling the environment's bytecode" in caplog.text  # a fresh cache: changed
    assert "building the task index for jobs" not in caplog.text
    assert "ready for jobs: bytecode compiled, fork server preloaded" in caplog.text
