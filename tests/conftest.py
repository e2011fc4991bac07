"""Shared fixtures: settings in a temp folder, a real hypercorn on port 0, the stub model."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from lmeval_trio.config import Settings
from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.http.app import create_app
from lmeval_trio.http.params import SUPERVISOR_KEY
from lmeval_trio.jobs.status import TERMINAL, JobStatus
from tests.browser.harness import (
    BROWSER_MISSING,
    CHROMIUM,
    CHROMIUM_ARGS,
    EXPECT_TIMEOUT_MS,
    PageOpener,
)
from tests.support.stub_openai import StubHandle, start_stub

if TYPE_CHECKING:
    from playwright.sync_api import Browser

SUPPORT = Path(__file__).parent / "support"
TASKS_DIR = SUPPORT / "tasks"
FAKE_LM_EVAL = SUPPORT / "fake_lm_eval.py"
DUMMY_JOB: dict[str, Any] = {
    "model": "dummy",
    "model_args": "pretrained=dummy",
    "tasks": ["tiny_mc", "tiny_gen"],
    "include_path": str(TASKS_DIR),
}


CACHE_DIR = Path(tempfile.gettempdir()) / "lmeval-trio-tests-cache"


def job_files(tmp_path: Path) -> Path:
    """A folder beside the data dir for files a test shares with its jobs (gates, markers):
    an allowed root, so confined jobs may use it (``tmp_path`` holds the data dir, and a root
    around the data dir is never opened to jobs)."""
    folder = tmp_path / "job-files"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Test settings: isolated data dir, the fake lm_eval allowed, short grace."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "install_signal_handlers": False,
        "kill_grace_s": 3.0,
        "allowed_lm_eval_paths": (str(FAKE_LM_EVAL),),
        "allowed_path_roots": (SUPPORT, tmp_path, job_files(tmp_path)),
        "progress_flush_s": 0.05,
        "cache_dir": CACHE_DIR,  # task index and bytecode: built once per machine
        "fork_servers": 0,  # pre-imported lm-eval processes only where a test asks for them
        # Submission-time task checks (test_task_checks.py) build the full task catalog: only
        # where a test asks for them, so tests of other concerns may name tasks freely.
        "check_tasks": False,
        "task_check_wait_s": 600.0,  # where they are on: however long the catalog takes
    }
    values.update(overrides)
    return Settings.from_env({}, **values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def fake_job(mode: str, **env: str) -> dict[str, Any]:
    """A request that runs the fake lm_eval in ``mode``."""
    return {
        "lm_eval_path": str(FAKE_LM_EVAL),
        "model": "dummy",
        "tasks": "fake",
        "env_vars": {"FAKE_MODE": mode, **env},
    }


@dataclass
class Server:
    url: str
    client: httpx.AsyncClient
    app: Any

    async def submit(self, body: dict[str, Any]) -> int:
        response = await self.client.post("/job", json=body)
        assert response.status_code == 200, response.text
        job_id: int = response.json()["job_id"]
        return job_id

    async def job(self, job_id: int) -> dict[str, Any]:
        response = await self.client.get(f"/job/{job_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def wait_status(self, job_id: int, *statuses: JobStatus) -> dict[str, Any]:
        """Wait (on the supervisor's change signal) until the job reaches a status."""
        wanted = set(statuses) or set(TERMINAL)
        supervisor = supervisor_of(self)
        with trio.move_on_after(120):
            while True:
                version = supervisor.changed.version
                if (await supervisor.get(job_id)).status in wanted:
                    return await self.job(job_id)
                await supervisor.changed.wait_past(version)
        raise AssertionError(await self.stuck_report(job_id, wanted))

    async def stuck_report(self, job_id: int, wanted: set[JobStatus]) -> str:
        """What a job that never reached ``wanted`` was doing: its record and its log's tail,
        so a timeout in CI says where the job stood rather than only that it was slow."""
        record = await self.job(job_id)
        logs = await self.client.get(f"/job/{job_id}/logs")
        tail = logs.text[-6000:]
        return (
            f"job {job_id} never reached {sorted(s.value for s in wanted)} in 120 s;"
            f" record: {record}\n--- log tail ---\n{tail}"
        )


def _json(text: str) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads(text)
    return data


async def start_server(
    nursery: trio.Nursery, settings: Settings, supervisor: Supervisor | None = None
) -> tuple[str, trio.Event, Any]:
    """Serve the app with a real hypercorn on 127.0.0.1:0; returns (url, shutdown, app)."""
    app = create_app(settings, supervisor=supervisor)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 2
    config.accesslog = None
    shutdown = trio.Event()
    urls: list[str] = await nursery.start(
        partial(serve, app, config, shutdown_trigger=shutdown.wait)
    )
    return urls[0], shutdown, app


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Server]:
    """The app for ``settings`` on a real hypercorn (127.0.0.1:0) and a client of it."""
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            yield Server(url, client, app)
        shutdown.set()


def supervisor_of(server: Server) -> Supervisor:
    """The supervisor behind ``server`` (its state and change signal, for waits)."""
    supervisor: Supervisor = server.app.extensions[SUPERVISOR_KEY]
    return supervisor


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    async with serving(settings) as served:
        yield served


@pytest.fixture
def stub() -> Iterator[StubHandle]:
    handle = start_stub()
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """The system's Chromium, headless, one per test module (pages get contexts of their own);
    where it is missing the test fails: only LMEVAL_TEST_REQUIRE_BROWSER=1 lets a browser test
    run without it (see ``tests.browser.harness.needs_browser``)."""
    if BROWSER_MISSING is not None:
        pytest.fail(f"LMEVAL_TEST_REQUIRE_BROWSER=1 but {BROWSER_MISSING}")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        expect.set_options(timeout=EXPECT_TIMEOUT_MS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(chromium: Browser) -> Iterator[PageOpener]:
    """``open_page(api_key=...)`` opens a page; the test fails on any uncaught page error."""
    opener = PageOpener(chromium)
    yield opener
    opener.close()
    assert not opener.errors, f"uncaught errors in the page: {opener.errors}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


#: Python source that loads the served app the way hypercorn does, per launch form: the
#: factory is called as hypercorn loads it; the lazy ``app`` builds at lifespan startup.
LOAD_SERVED_APP = {
    "create_app()": (
        "from hypercorn.utils import load_application\n"
        "load_application('lmeval_trio.asgi:create_app()', 0)\n"
    ),
    "app": (
        "import trio\n"
        "from hypercorn.config import Config\n"
        "from hypercorn.trio.run import worker_serve\n"
        "from hypercorn.utils import load_application\n"
        "config = Config()\n"
        "config.bind = ['127.0.0.1:0']\n"
        "trio.run(worker_serve, load_application('lmeval_trio.asgi:app', 0), config)\n"
    ),
}
