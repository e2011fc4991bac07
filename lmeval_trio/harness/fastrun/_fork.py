"""A fork server: a fastrun process that imports lm_eval and loads the task index once, then
forks one child per job; the child becomes the job (``python -m lmeval_trio.harness.fastrun
--fork-server --listen-fd FD``, started by ``runners/fork_server.py``).

The server starts it with exactly the environment its jobs get, so everything lm_eval and its
dependencies read from the environment at import time is each job's own; a job whose
environment differs is refused (its launcher, ``runners/fork_launcher.py``, then starts it
cold). It is a plain single-threaded process: one ``selectors`` loop over the listening socket
(inherited, already listening, so a job that arrives while lm_eval is still importing waits for
it), its control pipe (stdin), each running job's launcher connection, and SIGCHLD.

- A request is accepted only from a process whose parent is the server (``SO_PEERCRED``), with
  the environment digest this process started under, and only while nothing it imported has
  changed (``_warm.ImportSnapshot``); a change retires it (it refuses, drains, exits) so no job
  runs stale code.
- The child leaves the loop at once: its own session, ``PR_SET_PDEATHSIG`` (a fork server
  killed outright takes its jobs along), the launcher's fds as its stdin, stdout and stderr;
  then it is an ordinary fastrun run of the job (``_main``).
- Every exit is ours to see: the jobs are our children, and as a child subreaper we also
  receive what a dead job left behind, which is killed. A job's wait status goes to its
  launcher (``exit STATUS``); a launcher that disappears takes its job's group along (SIGKILL).
- ``drain`` on stdin (eviction, the server's shutdown): no new jobs, exit once the running ones
  end. EOF without it (the server died): SIGTERM every job's group, SIGKILL after the grace.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from lmeval_trio.harness.fastrun._warm import READY, ImportSnapshot, Spec, import_modules
from lmeval_trio.harness.fastrun._watch import TreeWatch
from lmeval_trio.runners import reaper

#: A job's request: its lm_eval arguments (a few KB); the socket's buffer bounds it anyway.
MAX_REQUEST_BYTES = 1 << 20
#: A launcher sends its request right after connecting; one that does not is dropped.
REQUEST_TIMEOUT_S = 5.0
_PR_SET_PDEATHSIG = 1
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Job:
    """What a forked child runs: the job, and when this fork server started (for the log)."""

    spec: Spec
    server_started: float
    vouched: bool  # the task files are unchanged since the index was loaded (``_watch.py``)


class ForkServer:
    """The loop; ``serve`` returns in a forked child (its job) and in the server at the end."""

    def __init__(
        self,
        listen: socket.socket,
        digest: str,
        grace_s: float,
        log: logging.Logger,
        watch: TreeWatch | None,
    ) -> None:
        self.listen = listen
        self.watch = watch
        self.watching = watch is not None and watch.unchanged()
        self.digest = digest
        self.grace_s = grace_s
        self.log = log
        self.started = time.monotonic()
        self.parent = os.getppid()
        self.snapshot = ImportSnapshot()
        self.jobs: dict[int, socket.socket | None] = {}  # pid -> its launcher's connection
        self.draining = False
        self.drain_asked = False
        self.kill_at: float | None = None
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        for end in (self.wake_r, self.wake_w):
            end.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        self.selector.register(listen, selectors.EVENT_READ, "listen")
        self.selector.register(0, selectors.EVENT_READ, "control")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")

    def serve(self) -> Job | None:
        """Serve until drained; in a forked child, return its job."""
        while not (self.draining and not self.jobs):
            for key, _ in self.selector.select(self._timeout()):
                job = self._handle(key)
                if job is not None:
                    return job
            self._reap()
            self._escalate()
        return None

    # -- events -------------------------------------------------------------------------

    def _handle(self, key: selectors.SelectorKey) -> Job | None:
        what = key.data
        if what == "listen":
            return self._accept()
        if what == "control":
            self._control()
        elif what == "wake":
            while _recv_nowait(self.wake_r):
                pass
        else:
            self._launcher_gone(what)
        return None

    def _control(self) -> None:
        """``drain``: finish the running jobs, take no more. EOF without it first: the server
        died, and nobody else will stop the jobs. EOF after it: the server closed the pipe
        it had said all on."""
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if data:
            if b"drain" in data:
                self.drain_asked = True
                self._drain("asked to drain")
            return
        self.selector.unregister(0)
        if self.drain_asked:
            return
        self._drain("the server is gone")
        for pid in self.jobs:
            _signal_group(pid, signal.SIGTERM)
        self.kill_at = time.monotonic() + self.grace_s

    def _drain(self, why: str) -> None:
        if self.draining:
            return
        self.draining = True
        self.selector.unregister(self.listen)
        self.listen.close()  # launchers still queued get EOF and start their jobs cold
        self.log.info(
            "fork server %s: %s; exiting once %d job(s) end", os.getpid(), why, len(self.jobs)
        )

    def _launcher_gone(self, pid: int) -> None:
        """A launcher that dies (killed after the grace, or by hand) takes its job along."""
        conn = self.jobs.get(pid)
        if conn is not None:
            self.selector.unregister(conn)
            conn.close()
            self.jobs[pid] = None
        _signal_group(pid, signal.SIGKILL)

    def _accept(self) -> Job | None:
        try:
            conn, _ = self.listen.accept()
        except OSError:
            return None
        fds: list[int] = []
        try:
            conn.settimeout(REQUEST_TIMEOUT_S)
            refusal = self._peer_refusal(conn)
            message, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST_BYTES, 3)
            spec, refusal = self._judge(message, fds, refusal)
            if refusal is not None or spec is None:
                _send(conn, b"refuse " + (refusal or "invalid request").encode())
                conn.close()
                return None
            return self._fork(conn, spec, fds)
        except OSError as err:
            self.log.warning("fork server: a request failed: %s", err)
            conn.close()
            return None
        finally:
            for fd in fds:
                _close(fd)

    def _peer_refusal(self, conn: socket.socket) -> str | None:
        """Only the server's own children (launchers) may ask: a job cannot be one."""
        pid, uid, _gid = _CREDENTIALS.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
        )
        if uid != os.getuid() or _parent_of(pid) != self.parent:
            return f"process {pid} was not started by the server"
        return None

    def _judge(
        self, message: bytes, fds: list[int], refusal: str | None
    ) -> tuple[Spec | None, str | None]:
        if refusal is not None:
            return None, refusal
        if len(fds) != 3:
            return None, "a request carries exactly three file descriptors"
        digest, _, text = message.decode(errors="replace").partition("\n")
        if digest != self.digest:
            return None, "the job's environment differs from the fork server's"
        if self.draining:
            return None, "the fork server is retiring"
        changed = self.snapshot.changed()
        if changed is not None:
            self._drain(f"{changed} changed since it was imported")
            return None, f"{changed} changed since the fork server imported it"
        threads = len(os.listdir("/proc/self/task"))
        if threads > 1:
            return None, f"{threads - 1} other thread(s) run in the fork server"
        try:
            return Spec.parse(text.encode()), None
        except ValueError as err:
            return None, f"invalid job spec: {err}"

    def _fork(self, conn: socket.socket, spec: Spec, fds: list[int]) -> Job | None:
        vouched = self.watch is not None and self.watch.unchanged()
        _flush()
        pid = os.fork()
        if pid == 0:
            self._become_child(conn, fds)
            return Job(spec, self.started, vouched)
        if self.watching and not vouched:  # this job checks the files itself; the next server
            self.watching = False  # loads them afresh
            self._drain("the built-in task files changed since the task index was loaded")
        self.jobs[pid] = conn
        if not _send(conn, b"ok %d" % pid):
            self._launcher_gone(pid)
            return None
        conn.settimeout(None)
        self.selector.register(conn, selectors.EVENT_READ, pid)
        return None

    def _become_child(self, conn: socket.socket, fds: list[int]) -> None:
        """Leave the loop behind: a session of our own, dying with the fork server, the
        launcher's stdio; nothing of the server's sockets or signal handling."""
        server = os.getppid()
        os.setsid()
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != server:  # the fork server died before PDEATHSIG was armed
            os._exit(1)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.selector.close()
        if self.watch is not None:
            self.watch.close_in_child()
        self.snapshot.close_in_child()
        sockets = (conn, self.listen, self.wake_r, self.wake_w, *self.jobs.values())
        for sock in filter(None, sockets):
            sock.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                _close(fd)
        fds.clear()

    # -- exits ----------------------------------------------------------------------------

    def _reap(self) -> None:
        """Collect every exit (our jobs', and orphans handed to us); tell each launcher."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid not in self.jobs:
                continue
            conn = self.jobs.pop(pid)
            if conn is not None:
                self.selector.unregister(conn)
                _send(conn, b"exit %d" % status)
                conn.close()
        for pid in reaper.children():
            if pid not in self.jobs:  # left behind by a job that is gone
                _signal(pid, signal.SIGKILL)

    def _timeout(self) -> float | None:
        return None if self.kill_at is None else max(0.0, self.kill_at - time.monotonic())

    def _escalate(self) -> None:
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            for pid in self.jobs:
                _signal_group(pid, signal.SIGKILL)
            self.kill_at = None


def serve(
    listen_fd: int, digest: str, grace_s: float, log: logging.Logger, *, preload_hf: str = "off"
) -> Job | None:
    """Preload (for hf jobs too, as ``preload_hf`` says: ``_warm.HF_PRELOAD``), say so on
    stdout, then serve jobs; returns a job in each forked child.

    What it imported is frozen out of the garbage collector: a child's collections never
    walk (and so never copy) the pages it shares with the fork server."""
    listen = socket.socket(fileno=listen_fd)
    patcher = import_modules(log, hf=preload_hf)
    watch = None if patcher is None else TreeWatch(str(patcher.default_root))  # before loading
    if patcher is not None:
        patcher.preload()
    gc.collect()
    gc.freeze()
    server = ForkServer(listen, digest, grace_s, log, watch)
    sys.stdout.write(READY.decode())
    _flush()
    return server.serve()


def run_and_exit(job: Callable[[], None], last: Callable[[], object]) -> NoReturn:
    """Run a forked child's job, then exit as Python would (atexit handlers, flushed streams,
    ``SystemExit``'s code or message, a traceback and 1 for an uncaught exception, death by
    SIGINT for an uncaught KeyboardInterrupt), but without tearing the interpreter down: its
    heap is the fork server's, shared page by page, and freeing every object would copy
    (and so cost) all of it. ``last`` runs just before the exit (the reaper's clean-up)."""
    code = 0
    interrupted = False
    try:
        job()
    except SystemExit as done:
        code = _exit_code(done.code)
    except KeyboardInterrupt:
        interrupted = True
        sys.excepthook(*sys.exc_info())
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        last()
        try:
            _flush()
        except OSError:  # as Python's own exit: the output is lost, the code says so
            code = 120
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def _exit_code(code: object) -> int:
    """What the interpreter exits with for ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2 :].split()[1])


def _send(conn: socket.socket, data: bytes) -> bool:
    try:
        conn.send(data)
    except OSError:
        return False
    return True


def _recv_nowait(sock: socket.socket) -> bytes:
    try:
        return sock.recv(4096)
    except BlockingIOError:
        return b""


def _signal_group(pgid: int, signum: int) -> None:
    if pgid > 1:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
