"""Keeps fork servers (users' "warm runners"): one per import-time environment, each a process
that has imported lm-eval and loaded the task index once and forks every job of that
environment (``harness/fastrun/_fork.py``), behind a thin launcher (``fork_launcher.py``).

Because lm-eval and its dependencies read some environment variables at import time, a fork
server serves only jobs whose environment equals the one it was started with, byte for byte
(both come from ``environment.py``; the fork server checks the digest again). So there is one
per environment: always the default one (a job without ``env_vars``), and the others for
environments that came back (seen twice recently), least recently used retired first, at most
``LMEVAL_FORK_SERVERS`` in all. A job nobody can fork runs cold, as it always could.

Each fork server is a process in its own session owned by this module's nursery; its listening
socket (abstract, named at random) is created here and inherited, so a job sent while lm-eval
is still importing simply waits for it. Its output (its own log, never a job's) goes to the
server's log. Retiring one (``drain``) lets its running jobs finish; the server's shutdown
drains too, and kills what is left after the grace period.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import PIPE, STDOUT

import trio

from lmeval_trio.harness.fastrun._warm import READY, Spec
from lmeval_trio.runners import fork_launcher, process
from lmeval_trio.runners.confinement import Walls
from lmeval_trio.runners.fork_launcher import environment_key

log = logging.getLogger("lmeval_trio.fork_server")

#: A spec must fit one command-line word (the kernel's limit is 128 KiB) with room to spare.
MAX_SPEC_BYTES = 100 * 1024
#: The launcher: standard library only, no site, nothing from the job's folder.
LAUNCHER = (sys.executable, "-I", "-S", os.path.abspath(fork_launcher.__file__))
#: A fork server's log lines are read in chunks of this size and logged up to the next.
_CHUNK_BYTES = 16 * 1024
_LINE_BYTES = 4096
#: Environments remembered to notice one coming back.
_SEEN_ENVIRONMENTS = 64
#: Fork servers of one environment that may die before becoming ready before it gets no more.
_MAX_FAILED_STARTS = 3
#: At shutdown, how long past the grace period a fork server may take to drain.
_DRAIN_MARGIN_S = 5.0


@dataclass(frozen=True)
class ForkServerInfo:
    """One fork server, for /healthz and /metrics."""

    pid: int | None
    environment: str  # the first 16 hex digits of its environment's digest
    ready: bool  # lm-eval imported, the task index loaded
    jobs_forked: int
    jobs_running: int
    age_s: float


@dataclass(frozen=True)
class ForkStatistics:
    servers: tuple[ForkServerInfo, ...]
    forked: int  # jobs started from a fork server since start
    cold: int  # fast-start jobs that ran cold: no fork server for them, or it could not serve


@dataclass(eq=False)
class ForkServer:
    """One fork server; ``proc`` is None until its process has been started."""

    key: str
    env: dict[str, str]
    name: str  # its abstract socket's name
    listener: socket.socket | None
    started_at: float = field(default_factory=time.monotonic)
    proc: trio.Process | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    retire: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)  # its process is gone (or never was)
    forked: int = 0
    running: set[int] = field(default_factory=set)  # pids of its jobs whose launcher runs

    def info(self) -> ForkServerInfo:
        return ForkServerInfo(
            pid=None if self.proc is None else self.proc.pid,
            environment=self.key[:16],
            ready=self.ready.is_set(),
            jobs_forked=self.forked,
            jobs_running=len(self.running),
            age_s=round(time.monotonic() - self.started_at, 3),
        )


@dataclass(frozen=True)
class Route:
    """A job that a fork server will fork: ``argv(info_fd)`` is its launcher's command."""

    server: ForkServer
    spec: str
    cold_argv: tuple[str, ...]

    def argv(self, info_fd: int) -> list[str]:
        options = [f"--socket={self.server.name}", f"--info-fd={info_fd}", f"--spec={self.spec}"]
        return [*LAUNCHER, *options, "--", *self.cold_argv]


class ForkServers:
    """Fork servers by environment; ``route`` sends a job to one, ``run`` owns them."""

    def __init__(
        self,
        prefix: Sequence[str],
        server_argv: Sequence[str],
        *,
        cwd: Path,
        max_servers: int,
        grace_s: float,
        preload_hf: str = "auto",
    ) -> None:
        """``prefix`` is the server's fastrun command up to lm_eval's arguments, and
        ``server_argv`` the same command as a fork server (``--fork-server``); ``preload_hf``
        is LMEVAL_FORK_PRELOAD_HF (auto, on, off)."""
        self.prefix = tuple(prefix)
        self.server_argv = tuple(server_argv)
        self.cwd = cwd
        self.max_servers = max_servers
        self.grace_s = grace_s
        self.preload_hf = preload_hf
        self._servers: OrderedDict[str, ForkServer] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._failed: dict[str, int] = {}
        self._pinned: tuple[str, dict[str, str]] | None = None
        self._nursery: trio.Nursery | None = None
        self._forked = 0
        self._cold = 0
        self._change = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the fork servers until cancelled, then drain them."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._pinned is not None:
                    self._spawn(*self._pinned)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def use_safe_path(self) -> None:
        """Confined jobs start with ``-P`` (``job_walls.command``): so do their fork servers,
        for the same ``sys.path``."""
        if "-P" not in self.server_argv[1:2]:
            self.server_argv = (self.server_argv[0], "-P", *self.server_argv[1:])

    def prime(self, env: Mapping[str, str]) -> None:
        """Keep a fork server for ``env`` (a job without env_vars) at all times."""
        self._pinned = (environment_key(env), dict(env))
        if self._nursery is not None:
            self._spawn(*self._pinned)

    def route(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        walls: Walls | None,
        cold_argv: Sequence[str],
    ) -> Route | None:
        """The fork server for this job, or None to start it cold (``cold_argv``). The
        launcher starts it cold as well if the fork server cannot serve it after all."""
        if not self._eligible(argv):
            return None
        spec = Spec(args=list(argv[len(self.prefix) :]), cwd=os.fspath(cwd), walls=walls)
        text = spec.encode().decode().strip()
        if len(text.encode()) > MAX_SPEC_BYTES:
            return None
        key = environment_key(env)
        server = self._servers.get(key)
        if server is None or (server.proc is not None and server.proc.poll() is not None):
            self._cold += 1
            self._keep_one(key, env)
            return None
        self._servers.move_to_end(key)
        self._keep_one(key, env)
        return Route(server, text, tuple(cold_argv))

    def forked(self, route: Route, pid: int) -> None:
        """The launcher says the job was forked as ``pid``."""
        route.server.forked += 1
        route.server.running.add(pid)
        self._forked += 1
        self._changed()

    def ended(self, route: Route, pid: int) -> None:
        """The launcher of the job forked as ``pid`` has exited: so has the job."""
        route.server.running.discard(pid)
        self._changed()

    def next_change(self) -> trio.Event:
        """Set at the next job forked or ended (tests wait on it): take it, look, then wait."""
        return self._change

    def _changed(self) -> None:
        self._change.set()
        self._change = trio.Event()

    def ran_cold(self, route: Route, job_id: int, reason: str) -> None:
        """The launcher started the job cold after all: say why."""
        self._cold += 1
        log.warning("job %s: started cold: %s", job_id, reason)

    def statistics(self) -> ForkStatistics:
        servers = tuple(server.info() for server in self._servers.values())
        return ForkStatistics(servers=servers, forked=self._forked, cold=self._cold)

    def server_for(self, env: Mapping[str, str]) -> ForkServer | None:
        return self._servers.get(environment_key(env))

    async def wait_ready(self, env: Mapping[str, str]) -> None:
        """Return once the fork server for ``env`` has finished preloading (tests wait on this)."""
        server = self.server_for(env)
        if server is None:
            raise LookupError("no fork server for this environment")
        await server.ready.wait()

    async def default_ready(self) -> bool:
        """Wait until the default environment's fork server has preloaded (True: lm-eval
        imported, the task index built and cached), or ended first (False)."""
        server = self._servers.get(self._pinned[0]) if self._pinned is not None else None
        if server is None:
            return False
        async with trio.open_nursery() as nursery:
            for event in (server.ready, server.ended):
                nursery.start_soon(_first_of, event, nursery.cancel_scope)
        return server.ready.is_set()

    # -- internals ----------------------------------------------------------------------

    def _eligible(self, argv: Sequence[str]) -> bool:
        return (
            self.max_servers > 0
            and self._nursery is not None
            and len(argv) > len(self.prefix)
            and tuple(argv[: len(self.prefix)]) == self.prefix
        )

    def _keep_one(self, key: str, env: Mapping[str, str]) -> None:
        """Start a fork server for this environment if it is worth one: it is the default
        environment, or it came back."""
        pinned = self._pinned is not None and key == self._pinned[0]
        recurring = pinned or key in self._seen
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > _SEEN_ENVIRONMENTS:
            self._seen.popitem(last=False)
        failed = self._failed.get(key, 0) >= _MAX_FAILED_STARTS
        if recurring and key not in self._servers and not failed:
            self._spawn(key, dict(env))

    def _spawn(self, key: str, env: dict[str, str]) -> None:
        """Register a fork server for ``key`` at once, its socket already listening (so the
        next job can be sent to it), and start its process."""
        if self._nursery is None or not self._evict(keep=key):
            return
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        name = f"lmeval-trio-fork-{os.getpid()}-{secrets.token_hex(12)}"
        try:
            listener.bind("\0" + name)
            listener.listen(128)
        except OSError as err:
            listener.close()
            log.warning("cannot open a fork server's socket: %s", err)
            return
        server = ForkServer(key, env, name, listener)
        self._servers[key] = server
        self._nursery.start_soon(self._keep, server)

    def _evict(self, keep: str) -> bool:
        """Make room for one more, never by retiring the default one or ``keep``'s: the least
        recently used first. False if there is no room."""
        pinned = self._pinned[0] if self._pinned is not None else None
        for key in list(self._servers):
            if len(self._servers) < self.max_servers:
                break
            if key not in (pinned, keep):
                self._servers.pop(key).retire.set()
        return len(self._servers) < self.max_servers

    def _forget(self, server: ForkServer) -> None:
        """A fork server ended: drop it, and replace the default one if it had been serving."""
        if self._servers.get(server.key) is server:
            del self._servers[server.key]
        if not server.ready.is_set():
            self._failed[server.key] = self._failed.get(server.key, 0) + 1
        pinned = self._pinned is not None and self._pinned[0] == server.key
        stopping = trio.current_effective_deadline() == -math.inf  # the pool is being stopped
        if pinned and server.ready.is_set() and not server.retire.is_set() and not stopping:
            assert self._pinned is not None
            self._spawn(*self._pinned)

    async def _keep(self, server: ForkServer) -> None:
        """Start one fork server, follow it until it exits or the pool stops, then drain it."""
        try:
            await self._start(server)
            if server.proc is not None:
                await self._follow(server, server.proc)
        finally:
            self._forget(server)
            try:
                if server.proc is not None:
                    with trio.CancelScope(shield=True):
                        await self._stop(server.proc)
            finally:
                server.ended.set()

    async def _start(self, server: ForkServer) -> None:
        assert server.listener is not None
        fd = server.listener.fileno()
        argv = [
            *self.server_argv,
            f"--listen-fd={fd}",
            f"--grace-s={self.grace_s}",
            f"--preload-hf={self.preload_hf}",
        ]
        try:
            server.proc = await trio.lowlevel.open_process(
                argv,
                stdin=PIPE,
                stdout=PIPE,
                stderr=STDOUT,
                env=server.env,
                cwd=self.cwd,
                start_new_session=True,
                pass_fds=(fd,),
            )
        except OSError as err:
            log.warning("cannot start a fork server: %s", err)
        finally:  # from now on only the fork server holds it: its death refuses new jobs
            server.listener.close()
            server.listener = None

    async def _follow(self, server: ForkServer, proc: trio.Process) -> None:
        """Log its output, mark it ready, drain it once retired; return when it has exited."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain_when_retired, server, proc)
            assert proc.stdout is not None
            await _read_output(proc.stdout, proc.pid, server)
            await proc.wait()
            nursery.cancel_scope.cancel()
        how = "exited" if proc.returncode == 0 else f"ended (code {proc.returncode})"
        log.log(
            logging.INFO if server.retire.is_set() else logging.WARNING,
            "fork server %s %s after forking %d job(s)",
            proc.pid,
            how,
            server.forked,
        )

    async def _drain_when_retired(self, server: ForkServer, proc: trio.Process) -> None:
        await server.retire.wait()
        log.info("fork server %s retires (least recently used)", proc.pid)
        await _drain(proc)

    async def _stop(self, proc: trio.Process) -> None:
        """Drain it; its jobs have the grace period (the server stops them meanwhile) to end."""
        await _drain(proc)
        with trio.move_on_after(self.grace_s + _DRAIN_MARGIN_S):
            await proc.wait()
        if proc.poll() is None or process.group_alive(proc.pid):
            log.warning("fork server %s did not drain in time: killing it and its jobs", proc.pid)
            await process.kill_group(proc.pid, grace_s=self.grace_s)
        await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()


async def _first_of(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _drain(proc: trio.Process) -> None:
    """No new jobs; exit once the running ones end (EOF alone would mean: the server died)."""
    if proc.stdin is None:
        return
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await proc.stdin.send_all(b"drain\n")
    await proc.stdin.aclose()


async def _read_output(stream: trio.abc.ReceiveStream, pid: int, server: ForkServer) -> None:
    """Log what the fork server prints (its own log) until EOF; its READY line marks it ready."""
    pending = b""
    async with stream:
        while chunk := await stream.receive_some(_CHUNK_BYTES):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line + b"\n" == READY:
                    server.ready.set()
                    log.info(
                        "fork server %s ready in %.1f s",
                        pid,
                        time.monotonic() - server.started_at,
                    )
                elif line.strip():
                    text = line[:_LINE_BYTES].decode(errors="replace")
                    log.info("fork server %s: %s", pid, text)
            if len(pending) > _LINE_BYTES:  # an endless line: keep memory bounded
                log.info("fork server %s: %s", pid, pending[:_LINE_BYTES].decode(errors="replace"))
                pending = b""
