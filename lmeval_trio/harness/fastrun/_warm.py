"""A spare (users' "warm runner"; never a *runner*, which is where jobs run): a fastrun
process that imports lm_eval and loads the task index before its job exists, then becomes
that job.

The server starts it with exactly the environment its job will have, so everything lm_eval
and its dependencies read from the environment at import time is the job's own. It then
waits for one JSON line on stdin, ``{"args": [...], "cwd": "..."}``: the job's lm_eval
arguments and working directory. Nothing job-specific happens before that line; after it the
process is an ordinary fastrun run of the job (same argv, logging, outputs, exit code).

If a file it imported has changed since (an upgrade while it waited), it re-executes itself as
a fresh fastrun in place (same pid, process group and pipes), so a job never runs stale code.
EOF on stdin (the server stopped or dropped it) ends it quietly.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lmeval_trio.runners.confinement import EXIT_NO_WALL, ConfinementError, Walls, enter

#: Modules imported ahead of the job: lm_eval's CLI and evaluator, the task machinery, and the
#: API-model classes a server mostly runs. A module whose import fails is skipped: the job
#: imports it itself when it needs it, and fails exactly as stock lm_eval would.
PRELOAD = (
    "lm_eval.__main__",
    "lm_eval.evaluator",
    "lm_eval.tasks",
    "lm_eval.tasks._index",
    "lm_eval.api.registry",
    "lm_eval.models",
    "lm_eval.models.dummy",
    "lm_eval.models.api_models",
    "lm_eval.models.openai_completions",
)
#: A job spec is a few KB; anything longer is not one.
MAX_SPEC_BYTES = 1 << 20
#: The line on the ready pipe that ends the preload's output: the spare is ready.
READY = b"ready\n"
#: Exit code for a malformed spec (the server's bug, never a job's).
EXIT_BAD_SPEC = 2

FileStamp = tuple[int, int, int]
#: A file's stamp, a directory's entries, or None if it is gone.
Stamp = FileStamp | frozenset[str] | None


@dataclass(frozen=True)
class Spec:
    """The job a spare becomes."""

    args: list[str]
    cwd: str
    walls: Walls | None = None  # the job's confinement, put up before anything else

    @classmethod
    def parse(cls, line: bytes) -> Spec:
        data = json.loads(line)
        args, cwd, walls = data.get("args"), data.get("cwd"), data.get("walls")
        if not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
            raise ValueError("'args' must be a list of strings")
        if not isinstance(cwd, str) or not cwd:
            raise ValueError("'cwd' must be a non-empty string")
        if walls is not None and not isinstance(walls, str):
            raise ValueError("'walls' must be a string")
        return cls(args=args, cwd=cwd, walls=None if walls is None else Walls.decode(walls))

    def encode(self) -> bytes:
        data: dict[str, object] = {"args": self.args, "cwd": self.cwd}
        if self.walls is not None:
            data["walls"] = self.walls.encode()
        return json.dumps(data).encode() + b"\n"


class ImportSnapshot:
    """Stat stamps of every imported source file and every sys.path directory.

    An import that ran from a file which has since changed, or a sys.path directory whose
    entries changed (a package installed, removed or upgraded, a new ``.pth``), makes the
    process differ from a fresh one; ``changed`` names the first such path.
    """

    def __init__(self) -> None:
        self._stamps = dict(_stamps(_watched_paths()))

    def changed(self) -> str | None:
        for path, stamp in self._stamps.items():
            if _stamp(path) != stamp:
                return path
        return None


def _watched_paths() -> Iterator[str]:
    for entry in list(sys.path):
        if entry and os.path.isdir(entry):
            yield entry
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            yield path


def _stamp(path: str) -> Stamp:
    """A file's (mtime, size, inode); a directory's entries, but for ``__pycache__``: the
    server's bytecode compile adds those (and so changes the folder's mtime) without changing
    what any import finds, so a spare primed before the compile stays good."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return frozenset(name for name in os.listdir(path) if name != "__pycache__")
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _stamps(paths: Iterator[str]) -> Iterator[tuple[str, Stamp]]:
    for path in paths:
        yield path, _stamp(path)


def preload(log: logging.Logger) -> None:
    """Import what every job needs and load the built-in task index."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as err:  # the job meets the same error in the same place, if at all
            log.debug("warm runner: not preloading %s (%s: %s)", name, type(err).__name__, err)
    from lmeval_trio.harness.fastrun import _patch

    patcher = _patch.active()
    if patcher is not None:
        patcher.preload()


@contextmanager
def output_to(fd: int | None) -> Iterator[None]:
    """Send stdout and stderr to ``fd`` (the ready pipe: the server logs it as the operator's)
    while preloading, so the job's own logs start at handover and hold none of it."""
    if fd is None:
        yield
        return
    saved = (os.dup(1), os.dup(2))
    _flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        _flush()
        for target, original in enumerate(saved, start=1):
            os.dup2(original, target)
            os.close(original)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


def signal_ready(fd: int | None) -> None:
    """Tell the server this spare has finished preloading (it may be gone: ignore). READY
    starts a line of its own, whatever the preload's last output line ended with."""
    if fd is None:
        return
    try:
        os.write(fd, b"\n" + READY)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_spec(log: logging.Logger) -> Spec | None:
    """The job, or None on EOF (not needed after all)."""
    line = sys.stdin.buffer.readline(MAX_SPEC_BYTES)
    if not line:
        return None
    try:
        return Spec.parse(line)
    except ValueError as err:  # JSONDecodeError is a ValueError
        log.error("warm runner: invalid job spec: %s", err)
        raise SystemExit(EXIT_BAD_SPEC) from None


def become(spec: Spec, log: logging.Logger) -> None:
    """Detach from the server's stdin, put up the job's wall, take on its working directory."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if spec.walls is not None:
        try:
            enter(spec.walls)
        except ConfinementError as err:
            log.error("lmeval-trio: cannot confine the job: %s", err)
            raise SystemExit(EXIT_NO_WALL) from None
    os.chdir(spec.cwd)
    sys.argv = [sys.argv[0], *spec.args]


def other_threads() -> str | None:
    """Landlock confines the thread that puts the wall up, never threads already running
    (a library's pool started while preloading): name them, so the job restarts afresh
    (``execve`` ends them and keeps the wall)."""
    count = len(os.listdir("/proc/self/task"))
    return f"{count - 1} thread(s) started before the wall" if count > 1 else None


def restart_fresh(spec: Spec, cache_dir: Path, why: str, log: logging.Logger) -> None:
    """Replace this process with a fresh fastrun of the same job (never returns)."""
    log.warning("warm runner: %s; starting lm_eval afresh", why)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    import lmeval_trio

    # -P: the job's folder (now the working directory) stays off sys.path; _BOOT: see there.
    argv = [sys.executable, "-P", "-c", _BOOT, lmeval_trio.__file__ or ""]
    argv += ["--index-cache", os.fspath(cache_dir), "--", *spec.args]
    os.execv(sys.executable, argv)


#: Runs fastrun with lmeval_trio loaded from its own folder: behind the job's wall the folder
#: around it (an editable install's project folder, which may hold the data directory) cannot
#: be listed, so ``python -m lmeval_trio.harness.fastrun`` would not find the package.
_BOOT = """\
import importlib.util, os, sys
init = sys.argv.pop(1)
spec = importlib.util.spec_from_file_location(
    "lmeval_trio", init, submodule_search_locations=[os.path.dirname(init)]
)
package = importlib.util.module_from_spec(spec)
sys.modules["lmeval_trio"] = package
spec.loader.exec_module(package)
from lmeval_trio.harness.fastrun._main import main
main()
"""


def run(cache_dir: Path, ready_fd: int | None, log: logging.Logger) -> None:
    """Preload, wait for the job, then run it with lm_eval's own CLI."""
    started = time.monotonic()
    with output_to(ready_fd):
        preload(log)
        snapshot = ImportSnapshot()
    signal_ready(ready_fd)
    spec = read_spec(log)
    if spec is None:
        return
    become(spec, log)
    changed = snapshot.changed()
    stale = f"{changed} changed since it was imported" if changed is not None else None
    if stale is None and spec.walls is not None:
        stale = other_threads()
    if stale is not None:
        restart_fresh(spec, cache_dir, stale, log)
    log.info("warm start: this runner started %.1f s before its job", time.monotonic() - started)
    from lmeval_trio.harness.fastrun._main import run_lm_eval

    run_lm_eval(log)
