"""Keeps spares (lm_eval pre-imported, task index loaded) ready for the next job.

Names: a *spare* is one such idle process (``python -m lmeval_trio.harness.fastrun --warm``; users
know spares as "warm runners", the setting's and the metrics' word); a *runner* is always
where a job runs (``runners/local.py``: the local backend, Ray), never a spare.

Importing lm_eval costs ~3 s per job on a small machine. A spare pays that before its job
exists and then becomes the job when it receives its arguments on stdin. Because lm_eval and
its dependencies read some environment variables at import time, a spare serves only jobs
whose environment equals the one it was started with, byte for byte (both come from
``runners/environment.py``); so the pool keeps at most one spare per environment: always the
default one (a job without ``env_vars``), and the others for environments that came back
(seen twice recently), least recently used first out.

Each spare is a process in its own session, owned by this pool's nursery until a job takes
it; from then on the local runner owns it (see ``process.adopt_process_group``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import PIPE

import trio

from lmeval_trio.harness.fastrun._warm import READY, Spec
from lmeval_trio.runners import process
from lmeval_trio.runners.confinement import Walls

log = logging.getLogger("lmeval_trio.warm")

#: A spec up to this size fits an empty pipe, so handing it over never waits on the spare.
MAX_SPEC_BYTES = 60 * 1024
#: Preload output is read in chunks of this size, and logged in lines of at most the next.
_PRELOAD_CHUNK_BYTES = 16 * 1024
_PRELOAD_LINE_BYTES = 4096
#: Environments remembered to notice one coming back.
_SEEN_ENVIRONMENTS = 64


@dataclass
class WarmStatistics:
    """A snapshot for metrics and tests."""

    idle: int  # spares waiting for a job
    ready: int  # … of which have finished preloading
    taken: int  # jobs that started in a spare
    missed: int  # jobs that could have, but no spare matched their environment


@dataclass(eq=False)
class Spare:
    """One spare (an idle pre-imported process); ``proc`` is None until it has been started."""

    key: str
    env: dict[str, str]
    proc: trio.Process | None = None
    spawned: trio.Event = field(default_factory=trio.Event)  # proc set, or the start failed
    ready: trio.Event = field(default_factory=trio.Event)
    watcher: trio.CancelScope = field(default_factory=trio.CancelScope)
    taken: bool = False


@dataclass(frozen=True)
class Handover:
    """A spare a job has taken, and the bytes that tell it which job it is."""

    proc: trio.Process
    spec: bytes


def environment_key(env: Mapping[str, str]) -> str:
    """Identifies an environment exactly (values included), without keeping its secrets."""
    digest = hashlib.sha256()
    for name, value in sorted(env.items()):
        digest.update(os.fsencode(name) + b"\0" + os.fsencode(value) + b"\0")
    return digest.hexdigest()


class WarmPool:
    """Spares by environment; ``take`` hands one to a job, ``run`` owns the rest."""

    def __init__(
        self,
        prefix: Sequence[str],
        spare_argv: Sequence[str],
        *,
        cwd: Path,
        max_idle: int,
        grace_s: float,
    ) -> None:
        """``prefix`` is the server's fastrun command up to lm_eval's arguments, and
        ``spare_argv`` the same command in warm mode."""
        self.prefix = tuple(prefix)
        self.spare_argv = tuple(spare_argv)
        self.cwd = cwd
        self.max_idle = max_idle
        self.grace_s = grace_s
        self._idle: OrderedDict[str, Spare] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._pinned: tuple[str, dict[str, str]] | None = None
        self._nursery: trio.Nursery | None = None
        self._taken = 0
        self._missed = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the spares until cancelled, then stop them."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._pinned is not None:
                    self._spawn(*self._pinned)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def prime(self, env: Mapping[str, str]) -> None:
        """Keep a spare for ``env`` (a job without env_vars) at all times."""
        self._pinned = (environment_key(env), dict(env))
        if self._nursery is not None:
            self._spawn(*self._pinned)

    def take(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        walls: Walls | None = None,
    ) -> Handover | None:
        """A ready-or-preloading spare for this job, or None to start it the usual way.
        The spare puts up ``walls`` the moment it receives the job.

        The caller owns the spare from now on: it must hand it its job at once
        (``process.adopt_process_group`` does, and stops it if that fails).
        """
        if not self._eligible(argv):
            return None
        spec = Spec(args=list(argv[len(self.prefix) :]), cwd=os.fspath(cwd), walls=walls).encode()
        if len(spec) > MAX_SPEC_BYTES:
            return None
        key = environment_key(env)
        spare = self._idle.get(key)
        proc = spare.proc if spare is not None else None
        if spare is None or proc is None or proc.poll() is not None:
            self._missed += 1  # none, still being spawned (milliseconds), or dead
            self._replace(key, env)
            return None
        del self._idle[key]
        spare.taken = True
        spare.watcher.cancel()
        self._taken += 1
        self._replace(key, env)
        return Handover(proc, spec)

    def statistics(self) -> WarmStatistics:
        return WarmStatistics(
            idle=len(self._idle),
            ready=sum(1 for spare in self._idle.values() if spare.ready.is_set()),
            taken=self._taken,
            missed=self._missed,
        )

    async def wait_ready(self, env: Mapping[str, str]) -> None:
        """Return once the spare for ``env`` has finished preloading (tests wait on this)."""
        spare = self._idle.get(environment_key(env))
        if spare is None:
            raise LookupError("no spare for this environment")
        await spare.ready.wait()

    # -- internals ----------------------------------------------------------------------

    def _eligible(self, argv: Sequence[str]) -> bool:
        return (
            self.max_idle > 0
            and self._nursery is not None
            and len(argv) > len(self.prefix)
            and tuple(argv[: len(self.prefix)]) == self.prefix
        )

    def _replace(self, key: str, env: Mapping[str, str]) -> None:
        """Start the next spare for this environment if it is worth keeping one: it is the
        default environment, or it came back."""
        pinned = self._pinned is not None and key == self._pinned[0]
        recurring = pinned or key in self._seen
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > _SEEN_ENVIRONMENTS:
            self._seen.popitem(last=False)
        if recurring and key not in self._idle:
            self._spawn(key, dict(env))

    def _spawn(self, key: str, env: dict[str, str]) -> None:
        """Register a spare for ``key`` at once (so a second job sees it) and start it."""
        assert self._nursery is not None
        self._evict(keep=key)
        if len(self._idle) >= self.max_idle:
            return
        spare = Spare(key, env)
        self._idle[key] = spare
        self._nursery.start_soon(self._keep, spare)

    def _evict(self, keep: str) -> None:
        """Make room for one more spare, never by stopping the default one or ``keep``'s."""
        pinned = self._pinned[0] if self._pinned is not None else None
        for key in list(self._idle):
            if len(self._idle) < self.max_idle:
                return
            if key not in (pinned, keep):
                self._idle.pop(key).watcher.cancel()

    async def _keep(self, spare: Spare) -> None:
        """Start one spare and watch it until a job takes it, it dies, or the pool stops."""
        try:
            ready_fd = await self._start(spare)
        finally:
            spare.spawned.set()
        if ready_fd is None:
            return
        assert spare.proc is not None
        try:
            with spare.watcher:
                await self._watch(spare, ready_fd)
        finally:
            if self._idle.get(spare.key) is spare:
                del self._idle[spare.key]
            if not spare.taken:
                with trio.CancelScope(shield=True):
                    await self._stop(spare.proc)

    async def _start(self, spare: Spare) -> int | None:
        """Start the process; return the read end of its ready pipe (None if it failed)."""
        ready_r, ready_w = os.pipe()
        try:
            spare.proc = await trio.lowlevel.open_process(
                [*self.spare_argv, f"--ready-fd={ready_w}"],
                stdin=PIPE,
                stdout=PIPE,
                stderr=PIPE,
                env=spare.env,
                cwd=self.cwd,
                start_new_session=True,
                pass_fds=(ready_w,),
            )
        except BaseException as err:
            os.close(ready_r)
            if self._idle.get(spare.key) is spare:
                del self._idle[spare.key]
            if isinstance(err, OSError):
                log.warning("cannot start a warm runner: %s", err)
                return None
            raise
        finally:
            os.close(ready_w)
        return ready_r

    async def _watch(self, spare: Spare, ready_fd: int) -> None:
        """Mark the spare ready when it says so; return if it exits while idle."""
        assert spare.proc is not None
        started_at = trio.current_time()
        async with trio.lowlevel.FdStream(ready_fd) as ready:
            if await _read_preload_output(ready, spare.proc.pid):
                spare.ready.set()
                log.info(
                    "warm runner %s ready in %.1f s",
                    spare.proc.pid,
                    trio.current_time() - started_at,
                )
        await spare.proc.wait()
        log.warning(
            "warm runner %s exited while idle (code %s)", spare.proc.pid, spare.proc.returncode
        )

    async def _stop(self, proc: trio.Process) -> None:
        """A spare holds no work: its group is terminated at once."""
        if proc.stdin is not None:
            await proc.stdin.aclose()
        if proc.poll() is None or process.group_alive(proc.pid):
            await process.kill_group(proc.pid, grace_s=self.grace_s)
        await proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                await stream.aclose()


async def _read_preload_output(ready: trio.lowlevel.FdStream, pid: int) -> bool:
    """Log what the spare printed while preloading (the operator's, not its job's: see
    ``fastrun._warm.output_to``) until its READY line; False if it ended without one."""
    pending = b""
    while chunk := await ready.receive_some(_PRELOAD_CHUNK_BYTES):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line + b"\n" == READY:
                return True
            if line.strip():
                log.info(
                    "warm runner %s: %s", pid, line[:_PRELOAD_LINE_BYTES].decode(errors="replace")
                )
        if len(pending) > _PRELOAD_LINE_BYTES:  # an endless line: keep memory bounded
            log.info(
                "warm runner %s: %s", pid, pending[:_PRELOAD_LINE_BYTES].decode(errors="replace")
            )
            pending = b""
    return False
