"""A real server on its own thread and Debian's Chromium, for sync Playwright tests.

Playwright's async API needs asyncio while the test suite runs trio, so browser tests are
plain sync tests: the server runs ``trio.run`` on a thread of its own and the test drives the
browser with Playwright's sync API. The browser is always the system's ``chromium`` package;
Playwright's own browser downloads are never used.

Every browser test module uses the same pieces, so that a change to how the browser starts
or how page errors are caught is made once: ``pytestmark = needs_browser``, the
``chromium`` and ``open_page`` fixtures of tests/conftest.py (built on ``PageOpener``), and
``served_app`` for the server and an API client.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from lmeval_trio.config import Settings
from lmeval_trio.http.app import create_app

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 60.0
EXPECT_TIMEOUT_MS = 30_000  # a loaded CI machine: real lm-eval runs share its two cores
LAPTOP: ViewportSize = {"width": 1366, "height": 900}
API_KEY_STORAGE = "lmeval-trio.api-key"  # where the dashboard keeps the key for the tab


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (uv sync installs the dev group)"
    return None


#: Why the browser tests cannot run here, or None when they can.
BROWSER_MISSING = chromium_missing()
#: CI sets this so that a missing browser fails the browser tests instead of skipping them.
BROWSER_REQUIRED = os.environ.get("LMEVAL_TEST_REQUIRE_BROWSER") == "1"
#: The mark of every browser test (``pytestmark = needs_browser``).
needs_browser = pytest.mark.skipif(
    BROWSER_MISSING is not None and not BROWSER_REQUIRED, reason=BROWSER_MISSING or ""
)


class PageOpener:
    """Opens pages on one browser, each in a context of its own, and keeps every uncaught
    error of their scripts, so that a test fails on a page error it did not look for."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.errors: list[str] = []
        self._contexts: list[BrowserContext] = []

    def __call__(self, *, api_key: str | None = None) -> Page:
        """A laptop-sized page that accepts downloads; with ``api_key``, as if the key was
        typed into the key dialog earlier in this tab."""
        context = self.browser.new_context(viewport=LAPTOP, accept_downloads=True)
        self._contexts.append(context)
        if api_key is not None:
            context.add_init_script(f"sessionStorage.setItem({API_KEY_STORAGE!r}, {api_key!r})")
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        return page

    def close(self) -> None:
        """Close every page opened; their errors stay in ``errors``."""
        for context in self._contexts:
            context.close()
        self._contexts.clear()


@contextmanager
def served_app(
    settings: Settings, *, api_key: str | None = None
) -> Iterator[tuple[str, httpx.Client]]:
    """The app on a thread and a client of it (with ``api_key``, sent as a bearer token);
    jobs still running at the end are stopped, so that the server shuts down at once."""
    headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
    with (
        ServerThread(settings) as server,
        httpx.Client(base_url=server.url, headers=headers, timeout=60) as client,
    ):
        yield server.url, client
        client.post("/jobs/stop")


class ServerThread:
    """``with ServerThread(settings) as server:`` serves the app at ``server.url``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = ""
        self._ready: queue.Queue[tuple[str, trio.lowlevel.TrioToken, trio.Event] | BaseException]
        self._ready = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="lmeval-trio-server", daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None
        self._shutdown: trio.Event | None = None

    def __enter__(self) -> ServerThread:
        self._thread.start()
        ready = self._ready.get(timeout=START_TIMEOUT_S)
        if isinstance(ready, BaseException):
            raise RuntimeError("the server did not start") from ready
        self.url, self._token, self._shutdown = ready
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None and self._shutdown is not None:
            trio.from_thread.run_sync(self._shutdown.set, trio_token=self._token)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as error:  # reported to __enter__ if start-up failed
            self._ready.put(error)

    async def _serve(self) -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.graceful_timeout = 2
        config.accesslog = None
        shutdown = trio.Event()
        app = create_app(self.settings)
        async with trio.open_nursery() as nursery:
            urls: list[str] = await nursery.start(
                partial(serve, app, config, shutdown_trigger=shutdown.wait)
            )
            self._ready.put((urls[0], trio.lowlevel.current_trio_token(), shutdown))


def events(client: httpx.Client, path: str) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs from a Server-Sent Events endpoint, as they arrive."""
    with client.stream("GET", path, timeout=httpx.Timeout(10, read=180)) as response:
        response.raise_for_status()
        kind = "message"
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                yield kind, json.loads(line[len("data: ") :])


def wait_finished(client: httpx.Client, job_id: int) -> dict[str, Any]:
    """Follow the job's event stream until it ends (no polling), then return the job."""
    for kind, _data in events(client, f"/job/{job_id}/events"):
        if kind == "end":
            break
    job: dict[str, Any] = client.get(f"/job/{job_id}").raise_for_status().json()
    return job


def wait_idle(client: httpx.Client) -> None:
    """Follow /events until no job is queued or running."""
    for kind, data in events(client, "/events"):
        if kind == "jobs" and data["counts"]["Queued"] + data["counts"]["Running"] == 0:
            return
