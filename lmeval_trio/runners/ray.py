"""Runs jobs on a Ray cluster through the Ray Jobs REST API, the way LocalRunner runs children.

The server only speaks HTTP and a websocket to the cluster's dashboard (httpx and
trio-websocket, under Trio): it never imports ``ray``, so it needs neither Ray's package nor
its version to match the cluster's. A job's life on Ray:

- submit: ``POST /api/jobs/`` with the job's argv as the entrypoint, its own variables as
  ``runtime_env.env_vars``, the GPUs/CPUs Ray must reserve, and a submission id that names
  this server, the job and the attempt (so a retried submission cannot start a job twice);
- follow: the websocket ``/api/jobs/{id}/logs/tail`` streams the log into the stderr sink
  (Ray merges the driver's stdout and stderr into one log, so everything goes to stderr, where
  the progress parser reads) and closes when the job ends: that close is the push that says
  "ended", and one ``GET /api/jobs/{id}`` then says how. Only when no stream can be had does
  the runner fall back to asking for the status every ``ray_status_poll_s``;
- stop: ``POST /api/jobs/{id}/stop`` (Ray sends SIGTERM to the driver and its descendants,
  SIGKILL a kill grace later), then follow the job to its end, bounded by that grace.

Results come back through storage the cluster shares with the server: lm-eval writes to its
``--output_path`` under the server's data dir, which must be mounted at the same path on every
Ray node (see the README's Ray section).
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import shlex
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import SplitResult, urlsplit

import httpx
import trio
from trio_websocket import ConnectionClosed, HandshakeError, wrap_client_stream

from lmeval_trio.config import Settings
from lmeval_trio.errors import Unavailable
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.runners import process
from lmeval_trio.runners.base import Started
from lmeval_trio.runners.process import Sink

log = logging.getLogger("lmeval_trio.ray_runner")

T = TypeVar("T")

TERMINAL_STATUSES = frozenset({"STOPPED", "SUCCEEDED", "FAILED"})
_HTTP_TIMEOUT_S = 30.0  # Ray's dashboard itself waits up to 10 s for an agent on submit
_RECOVER_TIMEOUT_S = 10.0  # at start-up, per job: recovery must not hold the server up
_STOP_SLACK_S = 5.0  # beyond the kill grace: Ray notices exits once a second, then reports
_RETRY_FIRST_S = 0.5
_WS_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # Ray sends up to 10 lines, but a line can be long
_WS_NORMAL_CLOSURE = 1000
_STREAM_ERRORS = (HandshakeError, OSError, trio.TooSlowError, trio.BrokenResourceError)
_INSTANCE_FILE = "ray-instance-id"
_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception)): .+$", re.MULTILINE)


class RayUnavailable(Unavailable):
    """The cluster did not answer, or said it cannot take work yet: worth asking again."""


class RayUnreachable(process.SpawnError):
    """The cluster did not answer a submission for ``ray_unreachable_timeout_s``."""


class RayRejected(process.SpawnError):
    """The cluster refused the submission (a bad request, a resource it never has, ...)."""


class RayJobLost(process.SpawnError):
    """The cluster no longer knows the job (it was restarted without its job table)."""


@dataclass(frozen=True)
class RayJobInfo:
    """What ``GET /api/jobs/{id}`` says about a job, reduced to what the supervisor needs."""

    status: str  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    message: str = ""
    driver_exit_code: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RayJobInfo:
        code = data.get("driver_exit_code")
        return cls(
            status=str(data.get("status", "")),
            message=str(data.get("message") or ""),
            driver_exit_code=code if isinstance(code, int) else None,
        )

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def returncode(self) -> int:
        """The exit code as a local run would report it (negative: killed by that signal)."""
        if self.status == "SUCCEEDED":
            return 0
        if self.status == "STOPPED":
            return -signal.SIGTERM
        return self.driver_exit_code or 1


class RayJobsApi:
    """The few Ray Jobs REST calls a job needs, on one HTTP connection pool."""

    def __init__(self, client: httpx.AsyncClient, address: str) -> None:
        self._client = client
        self.address = address

    async def submit(self, payload: Mapping[str, Any]) -> None:
        """Submit; an "already exists" answer means an earlier try of ours landed."""
        response = await self._request("POST", "/api/jobs/", json=payload)
        if response.status_code == 200 or "already exists" in response.text:
            return
        raise RayRejected(
            f"the Ray cluster at {self.address} refused the job "
            f"(HTTP {response.status_code}): {_gist(response.text)}"
        )

    async def info(self, submission_id: str) -> RayJobInfo | None:
        """The job's status, or None if the cluster does not know it."""
        response = await self._request("GET", f"/api/jobs/{submission_id}")
        if response.status_code == 404:
            return None
        _raise_unexpected(response)
        return RayJobInfo.from_json(response.json())

    async def stop(self, submission_id: str) -> bool:
        """Ask Ray to stop the job; False if the cluster does not know it."""
        response = await self._request("POST", f"/api/jobs/{submission_id}/stop")
        if response.status_code == 404:
            return False
        _raise_unexpected(response)
        return True

    async def logs(self, submission_id: str) -> str:
        """The whole log at once: only for catching up when no stream can be had."""
        response = await self._request("GET", f"/api/jobs/{submission_id}/logs")
        _raise_unexpected(response)
        return str(response.json().get("logs", ""))

    async def tail(self, submission_id: str, on_text: Callable[[str], Awaitable[None]]) -> bool:
        """Stream the log from its start until Ray closes the stream, which it does when the
        job has ended and its log is read to the end. False if the stream could not be had
        or broke (the caller then asks for the status and catches up)."""
        url = urlsplit(_websocket_base(self.address) + f"/api/jobs/{submission_id}/logs/tail")
        try:
            return await _follow_websocket(url, on_text)
        except _STREAM_ERRORS as error:
            log.debug("ray job %s: no log stream: %r", submission_id, error)
        except BaseExceptionGroup as group:  # the handshake fails in trio-websocket's task
            failed, rest = group.split(_STREAM_ERRORS)
            if rest is not None:
                raise
            log.debug("ray job %s: no log stream: %r", submission_id, failed)
        return False

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise RayUnavailable(f"{type(error).__name__}: {error}") from error
        if response.status_code in (502, 503, 504) or "No available agent" in response.text:
            raise RayUnavailable(f"HTTP {response.status_code}: {_gist(response.text)}")
        return response


class _LogFeed:
    """Hands the Ray log to the stderr sink exactly once.

    Every pass of the tail starts at the log's beginning (Ray offers no offset), so bytes
    already delivered, by this run or by the server before a restart, are skipped.
    """

    def __init__(self, sink: Sink, delivered: int) -> None:
        self._sink = sink
        self.delivered = delivered
        self._position = 0

    def restart(self) -> None:
        """A new pass over the log begins at its start."""
        self._position = 0

    async def __call__(self, text: str) -> None:
        data = text.encode()
        start, self._position = self._position, self._position + len(data)
        if self._position > self.delivered:
            fresh = data[max(0, self.delivered - start) :]
            self.delivered = self._position
            await self._sink(fresh)

    async def note(self, line: str) -> None:
        """A line of our own, written once the job has ended (it never shifts the skip)."""
        await self._sink(line.encode())


class RayRunner:
    """Runs each job as a Ray job; see the module docstring."""

    name = "ray"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._detached = False
        self._instance: str | None = None

    async def run(
        self,
        record: JobRecord,
        env: Mapping[str, str],
        on_stdout: Sink,
        on_stderr: Sink,
        *,
        task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED,
    ) -> int:
        submission_id = await self.submission_id(record)
        payload = self._payload(record, env, submission_id)
        feed = _LogFeed(on_stderr, delivered=0)
        async with self._api() as api, self._stopped_if_interrupted(api, submission_id, feed):
            await self._retrying(
                partial(api.submit, payload), give_up_after=self.settings.ray_unreachable_timeout_s
            )
            task_status.started(Started(external_id=submission_id))
            log.info("job %s: submitted to Ray as %s", record.id, submission_id)
            await on_stdout(
                _notice(f"submitted to the Ray cluster at {api.address}", submission_id)
            )
            info = await self._follow(api, submission_id, feed)
        return await self._returncode(info, feed)

    async def reattach(
        self,
        record: JobRecord,
        on_stdout: Sink,
        on_stderr: Sink,
        *,
        task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED,
    ) -> int:
        """Follow a job the previous server submitted, skipping the log it already saved."""
        submission_id = await self._current_submission(record)
        delivered = await trio.to_thread.run_sync(_size, record.stderr_path)
        feed = _LogFeed(on_stderr, delivered)
        async with self._api() as api, self._stopped_if_interrupted(api, submission_id, feed):
            task_status.started(Started(external_id=submission_id))
            await on_stdout(_notice("re-attached after a server restart", submission_id))
            info = await self._follow(api, submission_id, feed)
        return await self._returncode(info, feed)

    async def recover(self, record: JobRecord) -> bool:
        """Re-attach whenever the cluster still knows the job, even if it ended meanwhile
        (re-attaching then reports how it ended, with the rest of its log). Only a job the
        cluster never got, or forgot, is requeued. An unreachable cluster also means
        re-attach: following waits for it, where a requeue could run the job twice."""
        submission_id = await self._current_submission(record)
        async with self._api() as api:
            with trio.move_on_after(_RECOVER_TIMEOUT_S):
                try:
                    return await api.info(submission_id) is not None
                except RayUnavailable as error:
                    log.warning(
                        "job %s: cannot ask Ray about %s: %s", record.id, submission_id, error
                    )
        return True

    def detach(self) -> bool:
        """At shutdown, leave the jobs running on the cluster (unless configured not to)."""
        self._detached = self.settings.ray_detach_on_shutdown
        return self._detached

    async def submission_id(self, record: JobRecord) -> str:
        """``lmeval-trio-<server instance>-<job id>-<attempt>``: unique on a cluster that
        several servers (or data dirs) share, and derivable again after a crash."""
        if self._instance is None:
            self._instance = await trio.to_thread.run_sync(_instance_id, self.settings.data_dir)
        return f"lmeval-trio-{self._instance}-{record.id}-{record.attempts}"

    # -- internals ------------------------------------------------------------------------

    async def _current_submission(self, record: JobRecord) -> str:
        """The submission of the record's current attempt: the stored id when it is that
        attempt's (it outlives a lost instance file), else derived again (a crash can come
        between submitting and storing the id, and a requeued job keeps its old id)."""
        stored = record.external_id
        if stored is not None and stored.endswith(f"-{record.id}-{record.attempts}"):
            return stored
        return await self.submission_id(record)

    def _payload(
        self, record: JobRecord, env: Mapping[str, str], submission_id: str
    ) -> dict[str, Any]:
        """The submission: the job's own variables only (Ray's node provides PATH, HOME...),
        plus Ray's SIGTERM → SIGKILL wait set to our kill grace."""
        request = record.request
        grace = str(max(1, math.ceil(self.settings.kill_grace_s)))
        return {
            "entrypoint": shlex.join(record.argv),
            "submission_id": submission_id,
            "metadata": {
                "lmeval_trio_job_id": str(record.id),
                "lmeval_trio_attempt": str(record.attempts),
            },
            "runtime_env": {"env_vars": {**env, "RAY_JOB_STOP_WAIT_TIME_S": grace}},
            "entrypoint_num_gpus": _first(
                request.get("num_gpus"), self.settings.ray_num_gpus_default
            ),
            "entrypoint_num_cpus": _first(
                request.get("num_cpus"), self.settings.ray_num_cpus_default
            ),
        }

    @asynccontextmanager
    async def _api(self) -> AsyncIterator[RayJobsApi]:
        address = self.settings.ray_address
        async with httpx.AsyncClient(base_url=address, timeout=_HTTP_TIMEOUT_S) as client:
            yield RayJobsApi(client, address)

    @asynccontextmanager
    async def _stopped_if_interrupted(
        self, api: RayJobsApi, submission_id: str, feed: _LogFeed
    ) -> AsyncIterator[None]:
        """Whatever ends the following early (stop, delete, shutdown) stops the Ray job
        first, unless the server detached; a job that never started needs no stop."""
        try:
            yield
        except process.SpawnError:
            raise
        except BaseException:
            if not self._detached:
                with trio.CancelScope(shield=True):
                    await self._stop(api, submission_id, feed)
            raise

    async def _follow(self, api: RayJobsApi, submission_id: str, feed: _LogFeed) -> RayJobInfo:
        """Stream the log until the job ends, then say how it ended."""
        while True:
            feed.restart()
            streamed = await api.tail(submission_id, feed)
            info = await self._status(api, submission_id)
            if info.terminal:
                if not streamed:
                    await self._catch_up(api, submission_id, feed)
                return info
            # No stream, or it closed early: the documented fallback is a bounded poll.
            log.debug("ray job %s is %s without a log stream", submission_id, info.status)
            await trio.sleep(self.settings.ray_status_poll_s)

    async def _status(self, api: RayJobsApi, submission_id: str) -> RayJobInfo:
        """The job's status; waits out an unreachable cluster (the job may well go on)."""
        info = await self._retrying(partial(api.info, submission_id), give_up_after=None)
        if info is None:
            raise RayJobLost(
                f"the Ray cluster at {api.address} no longer knows job {submission_id} "
                "(was the cluster restarted?)"
            )
        return info

    async def _catch_up(self, api: RayJobsApi, submission_id: str, feed: _LogFeed) -> None:
        """The job ended while no stream ran: read the rest of its log, streamed if we can."""
        feed.restart()
        if await api.tail(submission_id, feed):
            return
        feed.restart()
        try:
            await feed(await api.logs(submission_id))
        except (RayUnavailable, ValueError) as error:
            log.warning("ray job %s: the end of its log is lost: %s", submission_id, error)

    async def _stop(self, api: RayJobsApi, submission_id: str, feed: _LogFeed) -> None:
        """Stop the Ray job and follow it to its end; give up after the kill grace (+ slack)."""
        with trio.move_on_after(self.settings.kill_grace_s + _STOP_SLACK_S) as scope:
            with suppress(RayJobLost):
                if await self._retrying(partial(api.stop, submission_id), give_up_after=None):
                    await self._follow(api, submission_id, feed)
        if scope.cancelled_caught:
            log.warning(
                "ray job %s did not stop within %g s; giving up on it (it may still run)",
                submission_id,
                self.settings.kill_grace_s + _STOP_SLACK_S,
            )

    async def _returncode(self, info: RayJobInfo, feed: _LogFeed) -> int:
        """The exit code; a failure Ray saw outside the entrypoint (runtime env, a dead
        supervisor actor) is in its message only, so it goes into the log for the reason."""
        if info.status == "FAILED" and info.driver_exit_code is None and info.message:
            await feed.note(f"RayJobError: {_gist(info.message)}\n")
        return info.returncode

    async def _retrying(
        self, call: Callable[[], Awaitable[T]], *, give_up_after: float | None
    ) -> T:
        """``call()`` until the cluster answers: backing off from 0.5 s to the poll interval,
        for at most ``give_up_after`` seconds (None: as long as it takes)."""
        deadline = math.inf if give_up_after is None else trio.current_time() + give_up_after
        delay = _RETRY_FIRST_S
        while True:
            try:
                return await call()
            except RayUnavailable as error:
                if trio.current_time() + delay > deadline:
                    raise RayUnreachable(
                        f"the Ray cluster at {self.settings.ray_address} did not answer "
                        f"for {give_up_after:g} s: {error}"
                    ) from error
                log.warning("Ray cluster at %s: %s; retrying", self.settings.ray_address, error)
                await trio.sleep(delay)
                delay = min(delay * 2, max(self.settings.ray_status_poll_s, _RETRY_FIRST_S))


async def _follow_websocket(url: SplitResult, on_text: Callable[[str], Awaitable[None]]) -> bool:
    """Hand each message to ``on_text`` until the server closes; True if it closed normally.

    The TCP stream is ours, not trio-websocket's: when the server closes first, that library
    leaves the socket open, so the stream is closed here whatever happens.
    """
    host, port = url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "wss" else 80)
    with trio.fail_after(_HTTP_TIMEOUT_S):
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = (
            await trio.open_ssl_over_tcp_stream(host, port, https_compatible=True)
            if url.scheme == "wss"
            else await trio.open_tcp_stream(host, port)
        )
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(_HTTP_TIMEOUT_S):
                websocket = await wrap_client_stream(
                    nursery, stream, url.netloc, url.path, max_message_size=_WS_MAX_MESSAGE_BYTES
                )
            while True:
                try:
                    message = await websocket.get_message()
                except ConnectionClosed as closed:
                    reason = closed.reason
                    return reason is not None and reason.code == _WS_NORMAL_CLOSURE
                await on_text(
                    message if isinstance(message, str) else message.decode(errors="replace")
                )
        finally:
            await trio.aclose_forcefully(stream)  # also ends trio-websocket's reader task


def _notice(what: str, submission_id: str) -> bytes:
    return (
        f"lmeval-trio: {what} as Ray job {submission_id}. Ray merges stdout and stderr into "
        "one log: the job's output is in the stderr log.\n"
    ).encode()


def _first(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _raise_unexpected(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RayUnavailable(f"HTTP {response.status_code}: {_gist(response.text)}")


def _gist(text: str) -> str:
    """The telling line of Ray's answer: the last ``SomeError: ...`` line of a traceback,
    else the first non-empty line."""
    errors = [match.group(0).strip() for match in _ERROR_LINE.finditer(text)]
    if errors:
        return errors[-1][:500]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "(no message)")[:500]


def _websocket_base(address: str) -> str:
    """http://host → ws://host, https://host → wss://host (the setting is validated)."""
    return "ws" + address.removeprefix("http")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _instance_id(data_dir: Path) -> str:
    """A random id for this data dir, created once: job ids restart with a new data dir, and
    Ray keeps finished jobs' submission ids, so the ids alone could collide."""
    path = data_dir / _INSTANCE_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        draft = data_dir / f".{_INSTANCE_FILE}.{secrets.token_hex(4)}"
        draft.write_text(secrets.token_hex(4) + "\n")
        with suppress(FileExistsError):
            os.link(draft, path)  # atomic: a concurrent first use keeps one id
        draft.unlink()
    return path.read_text().strip()
