"""A fake lm-eval for the server benchmarks: a ``/bin/sh`` script that reports to FIFOs.

Its first action is ``echo "start $BENCH_TAG" >> $BENCH_FIFO``; with ``BENCH_GATE`` it then
waits for one line on that FIFO; with ``BENCH_FLOOD`` it ``cat``s that file to stderr (fast,
so the server is what is measured) and reports ``end $BENCH_TAG``. The benchmark holds every
FIFO open read-write: the child never blocks opening one, our reads never see EOF, and
waiting is trio waiting on the fd (epoll), never a sleep.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

SCRIPT = """#!/bin/sh
echo "start $BENCH_TAG" >> "$BENCH_FIFO"
if [ -n "$BENCH_GATE" ]; then read -r _ < "$BENCH_GATE"; fi
if [ -n "$BENCH_FLOOD" ]; then cat "$BENCH_FLOOD" >&2; echo "end $BENCH_TAG" >> "$BENCH_FIFO"; fi
"""


def io_folder(tmp: Path) -> Path:
    """Where the child, its FIFOs and files live: beside the data dir, never around it, so a
    confined job may use them (the folder is passed as LMEVAL_ALLOWED_PATH_ROOTS)."""
    folder = tmp / "io"
    folder.mkdir()
    return folder


def write_child(folder: Path) -> Path:
    """The script, executable, in ``folder`` (allow it with LMEVAL_ALLOWED_LM_EVAL_PATHS)."""
    path = folder / "bench_child.sh"
    path.write_text(SCRIPT)
    path.chmod(0o755)
    return path


def child_job(child: Path, tag: str, **env: str) -> dict[str, Any]:
    """A POST /job body that runs the child; ``env`` holds BENCH_FIFO, BENCH_GATE, ..."""
    return {
        "lm_eval_path": str(child),
        "model": "dummy",
        "tasks": "bench",
        "env_vars": {"BENCH_TAG": tag, **env},
    }


class Fifo:
    """A named pipe held open read-write; lines are timestamped (time.monotonic) on arrival."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stream = trio.lowlevel.FdStream(os.open(path, os.O_RDWR | os.O_NONBLOCK))
        self._partial = b""
        self._lines: deque[tuple[str, float]] = deque()

    async def receive_line(self) -> tuple[str, float]:
        """The next line and the time its bytes were read."""
        while not self._lines:
            chunk = await self._stream.receive_some()
            at = time.monotonic()
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            self._lines.extend((line.decode(), at) for line in complete)
        return self._lines.popleft()

    async def expect(self, line: str, timeout_s: float = 60) -> float:
        """Wait for exactly ``line``; returns its arrival time."""
        with trio.fail_after(timeout_s):
            got, at = await self.receive_line()
        if got != line:
            raise RuntimeError(f"{self.path.name}: expected {line!r}, got {got!r}")
        return at

    async def send_line(self, line: str) -> float:
        """Write one line; returns the time just before the write."""
        at = time.monotonic()
        await self._stream.send_all(line.encode() + b"\n")
        return at

    async def aclose(self) -> None:
        await self._stream.aclose()


@asynccontextmanager
async def open_fifo(path: Path) -> AsyncIterator[Fifo]:
    os.mkfifo(path)
    fifo = Fifo(path)
    try:
        yield fifo
    finally:
        await fifo.aclose()
