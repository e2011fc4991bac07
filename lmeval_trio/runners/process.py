"""Runs one job's command as a child process in its own process group, pumps its output to async
sinks, and guarantees the whole group is gone when it returns.

Linux only: group members are found through /proc and waited for through pidfds, so waiting is
event-driven (no polling) and a member that exits is seen at once.
"""

from __future__ import annotations

import errno
import math
import os
import select
import signal
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from subprocess import DEVNULL, PIPE

import trio

from lmeval_trio.errors import JobStartFailed

__all__ = [
    "ProcessInfo",
    "Sink",
    "SpawnError",
    "group_alive",
    "kill_group",
    "process_start_ticks",
    "run_process_group",
]

Sink = Callable[[bytes], Awaitable[None]]

_CHUNK_BYTES = 64 * 1024
# Once the group is gone, what is left in a pipe is readable at once; a read still waiting this
# long means a process outside the group (one that called setsid) holds the pipe open.
_DRAIN_IDLE_S = 5.0
# Indexes into the fields that follow "(comm)" in /proc/<pid>/stat: field N is at N - 3.
_PGRP_INDEX = 5 - 3
_STARTTIME_INDEX = 22 - 3


@dataclass(frozen=True)
class ProcessInfo:
    """Identifies a started job so a later server run can find (and kill) its group safely."""

    pid: int  # == pgid, because the child is started with start_new_session=True
    start_ticks: int  # starttime of the leader; 0 if it was already reaped when read


class SpawnError(JobStartFailed):
    """The command could not be started; str(err) is a reason fit to show a user."""


async def run_process_group(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    on_stdout: Sink,
    on_stderr: Sink,
    grace_s: float,
    task_status: trio.TaskStatus[ProcessInfo] = trio.TASK_STATUS_IGNORED,
    pass_fds: tuple[int, ...] = (),
    also_reap: Callable[[], Awaitable[Sequence[int]]] | None = None,
) -> int:
    """Runs argv to completion and returns its returncode (negative = killed by that signal).

    Cancelling the caller's scope stops the job: SIGTERM to the group, SIGKILL grace_s later.
    Whatever ends the run, no member of the group is alive when this returns or raises.
    Raises SpawnError (never wrapped in a group) if the command cannot be started.

    ``pass_fds`` are inherited by the child and closed here once it has them (or failed to
    start). ``also_reap``, asked once the child has exited, names further process groups that
    belong to the job (a forked job's, ``fork_launcher.py``): each is gone too on return, within
    the same grace period.
    """
    if not argv:
        _close_all(pass_fds)
        raise SpawnError("empty command")
    extra = _Extra(pass_fds, also_reap)
    try:
        return await _run(argv, env, cwd, on_stdout, on_stderr, grace_s, task_status, extra)
    except BaseExceptionGroup as group:
        spawn_error = _sole_spawn_error(group)
        if spawn_error is None:
            raise
        raise spawn_error from spawn_error.__cause__


async def _run(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    on_stdout: Sink,
    on_stderr: Sink,
    grace_s: float,
    task_status: trio.TaskStatus[ProcessInfo],
    extra: _Extra,
) -> int:
    """The clean-up follows the leader's exit, not the pumps' EOF: a leftover member still
    holds the pipes, so EOF would never come while it lives."""
    terminator = _Terminator(grace_s)
    drain = _Drain()
    async with trio.open_nursery() as nursery:
        try:
            proc = await _spawn(nursery, argv, env, cwd, terminator, extra.pass_fds)
        finally:
            _close_all(extra.pass_fds)
        try:
            _follow(nursery, proc, on_stdout, on_stderr, drain, task_status)
            await proc.wait()
        except BaseException:
            nursery.cancel_scope.cancel()  # so run_process stops the leader via deliver_cancel
            raise
        finally:
            with trio.CancelScope(shield=True):
                await _reap_group(proc, terminator)
                await extra.reap(terminator)
            drain.start(_DRAIN_IDLE_S)
    assert proc.returncode is not None
    return proc.returncode


@dataclass(frozen=True)
class _Extra:
    """What a launched job adds to a plain one (see ``run_process_group``)."""

    pass_fds: tuple[int, ...] = ()
    also_reap: Callable[[], Awaitable[Sequence[int]]] | None = None

    async def reap(self, terminator: _Terminator) -> None:
        if self.also_reap is None:
            return
        for pgid in await self.also_reap():
            if pgid > 1 and pgid != os.getpgrp() and group_alive(pgid):
                await terminator.stop_group(pgid)


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with suppress(OSError):
            os.close(fd)


async def _spawn(
    nursery: trio.Nursery,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    terminator: _Terminator,
    pass_fds: tuple[int, ...] = (),
) -> trio.Process:
    """Starts the leader; anything nursery.start raises happened before the child ran."""
    run = partial(
        trio.run_process,
        list(argv),
        stdin=DEVNULL,
        stdout=PIPE,
        stderr=PIPE,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        check=False,
        deliver_cancel=terminator.deliver_cancel,
        pass_fds=pass_fds,
    )
    try:
        proc: trio.Process = await nursery.start(run)
    except (OSError, ValueError) as err:  # ValueError: e.g. an embedded null byte
        raise SpawnError(_spawn_reason(err, argv[0], cwd)) from err
    return proc


async def _reap_group(proc: trio.Process, terminator: _Terminator, *, stop: bool = False) -> None:
    """Waits for the leader (stopping it first if ``stop``), then kills what is left of its
    group.

    Needed because trio cancels deliver_cancel as soon as the leader exits, so a grandchild that
    ignores SIGTERM would otherwise survive. Sends nothing if the group is already gone.
    """
    if stop and proc.poll() is None:
        await terminator.stop_group(proc.pid)
    await proc.wait()
    if group_alive(proc.pid):
        await terminator.stop_group(proc.pid)


def _spawn_reason(err: OSError | ValueError, argv0: str, cwd: Path) -> str:
    """A human reason; subprocess names the failing path (executable or cwd) in err.filename."""
    if not isinstance(err, OSError):
        return f"invalid command: {err}"
    path = str(err.filename) if err.filename is not None else argv0
    what = "working directory" if path == str(cwd) else "executable"
    if err.errno == errno.ENOENT:
        return f"{what} not found: {path}"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {path}"
    if err.errno == errno.ENOTDIR:
        return f"not a directory: {path}"
    return f"cannot start {argv0}: {err.strerror or err}"


def _follow(
    nursery: trio.Nursery,
    proc: trio.Process,
    on_stdout: Sink,
    on_stderr: Sink,
    drain: _Drain,
    task_status: trio.TaskStatus[ProcessInfo],
) -> None:
    """Report the started process and pump its output to the sinks."""
    # start_ticks is 0 only if the leader exited within microseconds and was already reaped.
    task_status.started(ProcessInfo(proc.pid, process_start_ticks(proc.pid) or 0))
    assert proc.stdout is not None and proc.stderr is not None
    nursery.start_soon(_pump, proc.stdout, on_stdout, drain)
    nursery.start_soon(_pump, proc.stderr, on_stderr, drain)


def _sole_spawn_error(exc: BaseException) -> SpawnError | None:
    """The SpawnError if that is all exc holds; trio wraps it in one group per nursery."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, SpawnError) else None


async def _pump(stream: trio.abc.ReceiveStream, sink: Sink, drain: _Drain) -> None:
    """Forwards chunks until EOF, awaiting the sink for each one so that a slow sink stalls the
    child on a full pipe instead of buffering its output in our memory."""
    async with stream:
        while chunk := await drain.receive(stream):
            await sink(chunk)


class _Drain:
    """Stops the pumps from waiting forever on a pipe held open by a process outside the group.

    Bounds only the waits for data, never the sinks, so a slow sink still gets every last byte.
    """

    def __init__(self) -> None:
        self._idle_s = math.inf
        self._waiting: set[trio.CancelScope] = set()

    def start(self, idle_s: float) -> None:
        """Called once the group is gone: from now on a read may wait at most idle_s."""
        self._idle_s = idle_s
        for scope in self._waiting:
            scope.deadline = trio.current_time() + idle_s

    async def receive(self, stream: trio.abc.ReceiveStream) -> bytes:
        """The next chunk, or b"" at EOF or when the wait outlasts the idle bound."""
        with trio.move_on_after(self._idle_s) as scope:
            self._waiting.add(scope)
            try:
                return bytes(await stream.receive_some(_CHUNK_BYTES))  # no copy if already bytes
            finally:
                self._waiting.discard(scope)
        return b""


class _Terminator:
    """SIGTERM once, SIGKILL grace_s after that first SIGTERM.

    Shared by deliver_cancel and the clean-up after the leader exits, so a stop sends one SIGTERM
    (a second one can break a job's own graceful shutdown) and lasts at most one grace period.
    """

    def __init__(self, grace_s: float) -> None:
        self._grace_s = grace_s
        self._kill_at: float | None = None

    async def deliver_cancel(self, proc: trio.Process) -> None:
        await self.stop_group(proc.pid)

    async def stop_group(self, pgid: int) -> None:
        if self._kill_at is None:
            self._kill_at = trio.current_time() + self._grace_s
            _signal_group(pgid, signal.SIGTERM)
        with trio.move_on_at(self._kill_at) as grace:
            await _wait_group_exit(pgid)
        if grace.cancelled_caught:
            _signal_group(pgid, signal.SIGKILL)
            await _wait_group_exit(pgid)


def process_start_ticks(pid: int) -> int | None:
    """Start time of pid in clock ticks since boot (None if no such process).

    (pid, start ticks) names one process for good: a reused pid gets a new start time.
    """
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[_STARTTIME_INDEX])


def group_alive(pgid: int) -> bool:
    """True if any member of the group has not exited; zombies count as gone."""
    _check_pgid(pgid)
    with _live_member_pidfds(pgid) as pidfds:
        return bool(pidfds)


async def kill_group(pgid: int, *, grace_s: float) -> None:
    """SIGTERM the group, wait up to grace_s for every member to exit, SIGKILL the survivors and
    wait for them too. Used for groups this process did not start (crash recovery)."""
    _check_pgid(pgid)
    await _Terminator(grace_s).stop_group(pgid)


def _check_pgid(pgid: int) -> None:
    """Refuses pgids whose signalling would hit the wrong processes, e.g. from a corrupt record:
    killpg(0) is our own group, and kernel threads report pgid 0."""
    if pgid <= 1 or pgid == os.getpgrp():
        raise ValueError(f"refusing to touch process group {pgid}")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    _check_pgid(pgid)
    with suppress(ProcessLookupError):  # the last member exited (and was reaped) since we looked
        os.killpg(pgid, sig)


async def _wait_group_exit(pgid: int) -> None:
    """Returns once no member of the group is alive.

    Rescans after each round because members may have forked while we waited.
    """
    while True:
        with _live_member_pidfds(pgid) as pidfds:
            if not pidfds:
                return
            for pidfd in pidfds:
                await trio.lowlevel.wait_readable(pidfd)


@contextmanager
def _live_member_pidfds(pgid: int) -> Iterator[list[int]]:
    """pidfds of the members of the group that have not exited, closed on exit."""
    pidfds: list[int] = []
    try:
        for pid in _member_pids(pgid):
            pidfd = _pidfd_open(pid)
            if pidfd is not None:
                pidfds.append(pidfd)
        yield [pidfd for pidfd in pidfds if not _has_exited(pidfd)]
    finally:
        for pidfd in pidfds:
            os.close(pidfd)


def _member_pids(pgid: int) -> list[int]:
    """Pids in the group (field 5 of /proc/<pid>/stat), zombies included."""
    with os.scandir("/proc") as entries:
        pids = [int(entry.name) for entry in entries if entry.name.isdigit()]
    return [pid for pid in pids if _pgid_of(pid) == pgid]


def _pgid_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[_PGRP_INDEX])


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3.. of /proc/<pid>/stat, None if the process is gone.

    comm (field 2) may hold spaces and parentheses, hence the split after the last ')'.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(b")") + 2 :].split()


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None  # exited and reaped since the scan


def _has_exited(pidfd: int) -> bool:
    """A pidfd polls readable once the whole process has exited, even if it is not reaped yet:
    more exact than the 'Z' state, which a leader thread also shows while other threads run."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))
