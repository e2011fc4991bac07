"""The server under test, and what to read off it.

:func:`hypercorn_server` (what the benchmarks use) runs the README's launch command as a
subprocess, ``hypercorn --config hypercorn.toml --bind 127.0.0.1:0 lmeval_trio.asgi:app``, with
settings in the environment; the hypercorn parent binds the port, its one worker (the trio
app) logs ``[PID] [INFO] Running on http://127.0.0.1:PORT`` once the app's start-up is done.
:func:`inprocess_server` serves the same app with the same settings inside this process (as
the tests do): cheap to start, for the smoke test; its figures mix client and server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from subprocess import DEVNULL, PIPE
from typing import Protocol

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = ROOT / "tests" / "support"
HYPERCORN = Path(sys.executable).parent / "hypercorn"
_RUNNING = re.compile(rb"\[(\d+)\] \[INFO\] Running on (http://\S+)")
START_TIMEOUT_S = 120.0


class LogWatch:
    """Counts the server's "fork server ... ready" log lines as its stderr is drained, and
    notes its "ready for jobs" line (caches prepared, task catalog loaded)."""

    _READY = re.compile(rb"fork server \d+ ready in ")
    _JOBS_READY = b"ready for jobs: "

    def __init__(self) -> None:
        self.warm_ready = 0
        self.jobs_ready = trio.Event()
        self._tail = b""
        self._changed = trio.Event()

    def feed(self, chunk: bytes | bytearray) -> None:
        lines = (self._tail + chunk).split(b"\n")
        self._tail = lines.pop()
        found = sum(1 for line in lines if self._READY.search(line))
        if any(self._JOBS_READY in line for line in lines):
            self.jobs_ready.set()
        if found:
            self.warm_ready += found
            self._changed.set()
            self._changed = trio.Event()

    async def wait_warm_ready(self, count: int) -> None:
        """Return once ``count`` fork servers have reported ready since the server started."""
        while self.warm_ready < count:
            await self._changed.wait()


@dataclass(frozen=True)
class Server:
    """A running server: its url, pids and when it was spawned / started serving."""

    url: str
    worker_pid: int  # the process that runs the app
    parent_pid: int  # the hypercorn parent
    spawned_at: float  # time.monotonic() just before the spawn
    running_at: float  # time.monotonic() when "Running on" was read
    log: LogWatch | None = None  # the server's stderr, when it is a subprocess


class ServerFactory(Protocol):
    """How a benchmark gets its server: ``async with factory(data_dir, **env) as server``."""

    def __call__(self, data_dir: Path, **settings: str) -> AbstractAsyncContextManager[Server]: ...


def server_environment(data_dir: Path, **settings: str) -> dict[str, str]:
    """This environment without LMEVAL_* settings, plus the benchmark's ``settings``.

    Fork servers are off unless a benchmark turns them on: they are separate processes that
    spend ~3 CPU-seconds importing lm_eval when the server starts, which would only disturb
    benchmarks 1-5 (which measure the server itself); benchmark 6 measures them.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMEVAL_")}
    env.update(
        LMEVAL_DATA_DIR=str(data_dir),
        # The benchmark's own folder holds the FIFOs its jobs name in env_vars (the data dir
        # inside it stays off limits: the server never lets a request name its own files).
        LMEVAL_ALLOWED_PATH_ROOTS=f"{SUPPORT},{data_dir.parent}",
        LMEVAL_KILL_GRACE_S="2",
        LMEVAL_FORK_SERVERS="0",
    )
    env.update(settings)
    return env


@asynccontextmanager
async def hypercorn_server(
    data_dir: Path, app: str = "lmeval_trio.asgi:app", **settings: str
) -> AsyncIterator[Server]:
    """Start the server, wait until it serves, stop it gracefully (SIGTERM) at the end.
    ``app``: another ASGI app served the same way (benchmark 14's bare stack)."""
    argv = [str(HYPERCORN), "--config", "hypercorn.toml", "--bind", "127.0.0.1:0", app]
    env = server_environment(data_dir, **settings)
    async with trio.open_nursery() as nursery:
        spawned_at = time.monotonic()
        proc: trio.Process = await nursery.start(_run, argv, env)
        try:
            assert proc.stderr is not None
            watch = LogWatch()
            worker_pid, url = await _wait_until_serving(proc.stderr, watch)
            running_at = time.monotonic()
            nursery.start_soon(_drain, proc.stderr, watch)
            yield Server(url, worker_pid, proc.pid, spawned_at, running_at, watch)
        finally:
            with trio.CancelScope(shield=True):
                await _stop(proc)


@asynccontextmanager
async def inprocess_server(data_dir: Path, **settings: str) -> AsyncIterator[Server]:
    """The app on a real hypercorn in this trio run (like tests/conftest.py's server)."""
    # Imported here: the app pulls in lm-eval, which a benchmark's client does not need.
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from lmeval_trio.config import Settings
    from lmeval_trio.http.app import create_app

    spawned_at = time.monotonic()
    env = server_environment(data_dir, **settings)
    app = create_app(Settings.from_env(env, install_signal_handlers=False))
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 2
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(serve, app, config, shutdown_trigger=shutdown.wait))
        try:
            yield Server(urls[0], os.getpid(), os.getpid(), spawned_at, time.monotonic())
        finally:
            shutdown.set()


async def _run(
    argv: list[str], env: dict[str, str], task_status: trio.TaskStatus[trio.Process]
) -> None:
    await trio.run_process(
        argv,
        cwd=ROOT,
        env=env,
        stdin=DEVNULL,
        stdout=DEVNULL,  # the access log
        stderr=PIPE,
        check=False,
        start_new_session=True,
        task_status=task_status,
    )


async def _wait_until_serving(stderr: trio.abc.ReceiveStream, watch: LogWatch) -> tuple[int, str]:
    buffer = b""
    with trio.fail_after(START_TIMEOUT_S):
        while (found := _RUNNING.search(buffer)) is None:
            chunk = await stderr.receive_some()
            if not chunk:
                raise RuntimeError("server exited:\n" + buffer.decode(errors="replace")[-4000:])
            buffer += chunk
            watch.feed(chunk)
    return int(found.group(1)), found.group(2).decode()


async def _drain(stream: trio.abc.ReceiveStream, watch: LogWatch) -> None:
    while chunk := await stream.receive_some():
        watch.feed(chunk)


async def _stop(proc: trio.Process) -> None:
    """SIGTERM (graceful: jobs are stopped), SIGKILL to the group if that takes too long."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(30):
        await proc.wait()
    if proc.returncode is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


# ------------------------------------------------------------------------------ memory


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (or VmHWM, the peak since start or since reset_peak_rss) of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"{field} not in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (``/proc/PID/stat``, 10 ms ticks).

    Unlike wall time, it hardly changes when other processes compete for the CPUs.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0, ``/proc/PID/clear_refs``)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


MB = 1_000_000


# ------------------------------------------------------------------------------ jobs


async def submit(client: httpx.AsyncClient, body: dict[str, object]) -> int:
    response = await client.post("/job", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"POST /job: {response.status_code} {response.text}")
    job_id: int = response.json()["job_id"]
    return job_id


async def wait_idle(client: httpx.AsyncClient, timeout_s: float = 600) -> dict[str, int]:
    """Wait until no job is queued or running, on the server's ``/events`` stream.

    The stream sends the job counts at once and then on every change (coalesced, so this
    may return up to ~0.25 s after the last change); call it after a measurement, never
    during one. Returns the counts.
    """
    with trio.fail_after(timeout_s):
        async with client.stream("GET", "/events") as stream:
            async for line in stream.aiter_lines():
                if not line.startswith("data: "):
                    continue
                counts: dict[str, int] = json.loads(line[6:])["counts"]
                if counts.get("Queued", 0) == 0 and counts.get("Running", 0) == 0:
                    return counts
    raise RuntimeError("/events ended early")
