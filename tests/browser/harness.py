"""A real server on its own thread and Debian's Chromium, for sync Playwright tests.

Playwright's async API needs asyncio while the test suite runs trio, so browser tests are
plain sync tests: the server runs ``trio.run`` on a thread of its own and the test drives the
browser with Playwright's sync API. The browser is always the system's ``chromium`` package;
Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from lmeval_trio.config import Settings
from lmeval_trio.http.app import create_app

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


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (uv sync installs the dev group)"
    return None


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
