"""The server compiles the Python environment's bytecode into its normal ``__pycache__``
folders, so that jobs, which write none, import compiled code.

Jobs run with ``PYTHONDONTWRITEBYTECODE=1`` (and, confined, could not write the environment
anyway): bytecode a job wrote where other jobs import it would be code run in every later job.
Without compiled files each job would compile what it imports in memory (the first hf job:
113 MB of bytecode, a torch import of 16.6 s instead of 5.7 s). So at start the server runs
``compileall`` over site-packages once per change of the installed packages (a stamp in the
cache folder records the last run); Python checks each compiled file against its source, so a
stale one is never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import trio

from lmeval_trio.config import Settings
from lmeval_trio.runners.environment import inherited

log = logging.getLogger("lmeval_trio.bytecode")


def folders() -> list[str]:
    """Where the environment's packages live (our own package's folder included)."""
    import lmeval_trio

    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    paths |= set(site.getsitepackages())
    paths.add(os.path.dirname(os.path.abspath(lmeval_trio.__file__ or "")))
    return sorted(p for p in paths if os.path.isdir(p))


def stamp(paths: list[str]) -> str:
    """Changes whenever a package is installed, removed or upgraded, and with the interpreter:
    the folders' entries, the times of their files and of each package's ``RECORD``. Not the
    times of folders, which compiling itself changes (it adds ``__pycache__``)."""
    digest = hashlib.sha256(sys.version.encode() + sys.prefix.encode())
    for path in paths:
        with os.scandir(path) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name == "__pycache__":  # what compiling adds
                    continue
                digest.update(f"{path}\0{entry.name}\0{_version_time(entry)}\n".encode())
    return digest.hexdigest()


def _version_time(entry: os.DirEntry[str]) -> int:
    try:
        if entry.name.endswith(".dist-info"):
            return os.stat(os.path.join(entry.path, "RECORD")).st_mtime_ns
        if entry.is_dir(follow_symlinks=False):
            return 0
        return entry.stat(follow_symlinks=False).st_mtime_ns
    except OSError:
        return -1


def stamp_file(cache_dir: Path) -> Path:
    """One per environment: several servers with different venvs may share a cache folder."""
    return cache_dir / f"bytecode-{hashlib.sha256(sys.prefix.encode()).hexdigest()[:16]}.stamp"


def _due(cache_dir: Path) -> tuple[list[str], str] | None:
    """(folders, stamp) if the environment changed since the last compile, else None."""
    paths = folders()
    current = stamp(paths)
    try:
        if stamp_file(cache_dir).read_text() == current:
            return None
    except OSError:
        pass
    return paths, current


def _record(cache_dir: Path, current: str) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    stamp_file(cache_dir).write_text(current)


async def compile_environment(settings: Settings) -> bool:
    """Compile site-packages in a child process unless nothing changed since the last time;
    True if it did. Cancellation stops the child (the next start compiles what is left).
    The compiler gets what jobs inherit: it runs the same interpreter with the same paths."""
    cache_dir = settings.effective_cache_dir
    due = await trio.to_thread.run_sync(_due, cache_dir)
    if due is None:
        return False
    paths, current = due
    workers = max(1, (os.cpu_count() or 2) // 2)  # leave room for the jobs
    # Lowest CPU priority: the first jobs, which may start meanwhile, come first.
    argv = ["nice", "-n", "19", sys.executable, "-m", "compileall", "-q", "-j", str(workers)]
    argv += paths
    log.info("compiling the environment's bytecode for jobs (%s)", ", ".join(paths))
    started = trio.current_time()
    done = await trio.run_process(
        argv,
        env=inherited(settings),
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if done.returncode < 0:  # killed (a SIGTERM to the server's group): not compiled
        log.info(
            "bytecode compile interrupted (signal %d); the next start resumes", -done.returncode
        )
        return False
    failures = done.stdout.count(b"***") + done.stderr.count(b"***")
    if failures:  # packages ship some files that are not Python 3 (test data, templates)
        log.info("bytecode: %d files could not be compiled (not Python 3, or read-only)", failures)
    log.info("bytecode compiled in %.1f s", trio.current_time() - started)
    await trio.to_thread.run_sync(_record, cache_dir, current)
    return True
