"""What a fork server (``_fork.py``, users' "warm runners") does before and after a job exists:
import lm_eval and load the task index ahead of every job (``preload``), notice when anything
it imported has changed since (``ImportSnapshot``), and turn a forked child into its job
(``become``: the job's wall, working directory and argv; ``Spec`` says which job).

Nothing job-specific happens before ``become``; after it the child is an ordinary fastrun run
of the job (same argv, logging, outputs, exit code).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmeval_trio.harness.fastrun._patch import Patcher

from lmeval_trio.harness.fastrun._watch import FolderWatch
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
#: Imported ahead of the job too by a fork server that preloads for hf jobs
#: (LMEVAL_FORK_PRELOAD_HF). Importing them starts no thread (no OpenMP or MKL pool: those
#: start at the first parallel operation, which only the job runs; tokenizers' pool at the
#: first batch encode, so a child never sees "process just got forked after parallelism"):
#: the fork server still counts its threads before every fork, and sends a job cold if any.
HF_PRELOAD = ("torch", "transformers", "lm_eval.models.huggingface")
#: The line a fork server prints once it has preloaded: it is ready.
READY = b"ready\n"

FileStamp = tuple[int, int, int]
#: A file's stamp, a directory's entries, or None if it is gone.
Stamp = FileStamp | frozenset[str] | None


@dataclass(frozen=True)
class Spec:
    """The job a forked child becomes."""

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
        paths = list(_watched_paths())
        folders = (path if os.path.isdir(path) else os.path.dirname(path) for path in paths)
        self._watch = FolderWatch(folders)  # before the stamps: it sees every later change
        self._stamps = dict(_stamps(iter(paths)))

    def changed(self) -> str | None:
        """The first path that changed; while the watch has seen no event in the folders,
        none did, and the ~2,000 stats (10-30 ms before every fork) are skipped."""
        if self._watch.unchanged():
            return None
        for path, stamp in self._stamps.items():
            if _stamp(path) != stamp:
                return path
        return None

    def close_in_child(self) -> None:
        """A forked child needs none of it."""
        self._watch.close_in_child()


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
    what any import finds, so a fork server primed before the compile stays good."""
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
    patcher = import_modules(log)
    if patcher is not None:
        patcher.preload()


def import_modules(log: logging.Logger, *, hf: str = "off") -> Patcher | None:
    """Import what every job needs, and what hf jobs need as ``hf`` (auto, on, off) says; the
    task index's patcher, once lm_eval's tasks are imported (None: fastrun is off, and the
    index is lm_eval's own)."""
    names = PRELOAD + HF_PRELOAD if preloads_hf(hf) else PRELOAD
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # the job meets the same error in the same place, if at all
            log.debug("fork server: not preloading %s (%s: %s)", name, type(err).__name__, err)
    from lmeval_trio.harness.fastrun import _patch

    return _patch.active()


def preloads_hf(mode: str) -> bool:
    """Whether to import ``HF_PRELOAD``: auto means where torch is importable (found, not
    imported: a job environment without torch must not pay for looking)."""
    if mode == "auto":
        return importlib.util.find_spec("torch") is not None
    return mode == "on"


def become(spec: Spec, log: logging.Logger) -> None:
    """Detach from any stdin, put up the job's wall (a forked child has a single thread, so the
    wall holds for all of it), take on its working directory and argv."""
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
