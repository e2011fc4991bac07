"""Makes a job's first process the reaper of its whole tree: no descendant outlives the job.

Stopping a job signals its process group, but a program that double-forks with ``setsid`` (a
daemon) leaves that group, and once its parent exits the kernel hands it to init: it would
keep running after the job shows Completed. A *child subreaper* (``prctl`` 36, no privilege
needed) receives those orphans instead of init; so the job's first process becomes one, runs
the job, and when the job's main process ends kills every process left below it (killing one
hands its own children to us in turn) before it exits. Standard library only: the exec wrapper
(``confinement.py``, run as a script) loads this file by path.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Sequence

_PR_SET_CHILD_SUBREAPER = 36
#: Rounds of "kill every child, reap it" before giving up on a tree that keeps forking.
_MAX_ROUNDS = 1000
#: Signals the wrapper passes on to the job rather than dying of them itself.
_PASSED_ON = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process from now on; False if the kernel
    refused (then they go to init, as before)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def children() -> list[int]:
    """This process's live children (every thread's)."""
    found: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                found += [int(pid) for pid in f.read().split()]
        except OSError:
            continue
    return found


def kill_descendants() -> int:
    """SIGKILL and reap every process below this one, orphans handed to us included; the
    number killed. A process stopped mid-fork is caught by the next round."""
    killed = 0
    for _ in range(_MAX_ROUNDS):
        pids = children()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return killed


def reap_on_sigterm() -> None:
    """On SIGTERM (a stop), kill what is below this process, then die of SIGTERM as before:
    for a reaper that is itself the job's main program (fastrun). Processes it forks without
    exec (lm-eval's ``multiprocessing`` pools) get SIGTERM's default back, as in stock."""
    global _handler

    def handler(signum: int, _frame: object) -> None:
        kill_descendants()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    _handler = handler
    signal.signal(signal.SIGTERM, handler)
    _default_in_forked_children()


#: The SIGTERM handler ``reap_on_sigterm`` installed in this process, if any.
_handler: Callable[[int, object], None] | None = None
_fork_hook_registered = False


def _default_in_forked_children() -> None:
    """Register, once per process (children inherit it), the at-fork hook below.

    Why: a fork inherits Python-level handlers. lm-eval's bootstrap pool ends with
    ``Pool.terminate``, which SIGTERMs its workers and joins them. Workers that had our handler
    were seen to survive that SIGTERM now and then (behind the job's Landlock wall; about one
    job in 30 on a loaded machine), and the job hung in the join forever. Stock lm-eval's
    workers die of SIGTERM's default action, and so do ours now. They have nothing to reap:
    the subreaper is the job's main process, which orphans are handed to."""
    global _fork_hook_registered
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_forget_handler)
        _fork_hook_registered = True


def _forget_handler() -> None:
    """In a forked child: SIGTERM's default again, if the inherited handler is ours."""
    if _handler is not None and signal.getsignal(signal.SIGTERM) is _handler:
        with contextlib.suppress(ValueError):  # not the main thread: keep what it has
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_reaped(command: Sequence[str]) -> int:
    """Run ``command`` as a child, pass on the signals that ask it to stop, and when it ends
    kill what it left behind; exit as the command did (the same signal, if one killed it)."""
    become_subreaper()
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(command[0], list(command))
        except OSError as err:
            print(f"lmeval-trio: cannot start {command[0]}: {err.strerror}", file=sys.stderr)
        os._exit(127)
    for passed in _PASSED_ON:
        signal.signal(passed, lambda received, _frame: _pass_on(pid, received))
    status = _wait(pid)
    kill_descendants()
    if os.WIFSIGNALED(status):  # die of the same signal: the server sees what it would have
        signum = os.WTERMSIG(status)
        if signum not in (signal.SIGKILL, signal.SIGSTOP):  # those have no handler to reset
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return 128 + signum
    return os.WEXITSTATUS(status)


def _pass_on(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
