"""Bounds on the work of judging one request: a deadline, an entry budget, one walk per
folder, and cancellation together with the request.

The path policy walks folders (symlinks in task folders, glob matches) in a worker thread.
Unbounded, one request naming the same large folder a thousand times walked it a thousand
times, went on after its client left, and held shutdown. Here the walk runs under a
:class:`Budget` that the policy charges as it goes: a folder already walked is not walked
again, the entries of all walks together are capped, the whole check has a deadline, and
when the request is cancelled (client gone, server stopping) the thread is abandoned and
stops at its next charge.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from lmeval_trio.errors import Forbidden

T = TypeVar("T")

#: Entries (files and folders) one request's checks may visit, all walks together.
MAX_ADMISSION_ENTRIES = 100_000


class AdmissionExceeded(Forbidden):
    """The checks of one request went past a bound; ``field`` is what was being checked."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Budget:
    """What one request's checks may still spend; charged from the worker thread."""

    def __init__(self, timeout_s: float, max_entries: int = MAX_ADMISSION_ENTRIES) -> None:
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.max_entries = max_entries
        self.entries = 0
        self._walked: set[Path] = set()
        #: Set by the event loop, read by the worker thread: a plain flag (one attribute
        #: store or load is atomic), not a threading.Event, whose Condition and locks were
        #: ~3% of the worker's profile per POST /job (benchmark 10); nothing waits on it.
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def charge(self, field: str, entries: int = 1) -> None:
        """Count ``entries`` visited; raise once a bound is passed or the request is gone."""
        self.entries += entries
        if self._cancelled:
            raise AdmissionExceeded(field, "the request was cancelled")
        if self.entries > self.max_entries:
            raise AdmissionExceeded(
                field, f"the paths name over {self.max_entries} files and folders to check"
            )
        if time.monotonic() > self.deadline:
            raise AdmissionExceeded(
                field,
                f"checking the paths took over {self.timeout_s:g} s (LMEVAL_ADMISSION_TIMEOUT_S)",
            )

    def first_walk(self, folder: Path) -> bool:
        """True the first time ``folder`` (resolved) is to be walked for this request."""
        if folder in self._walked:
            return False
        self._walked.add(folder)
        return True


_current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "lmeval_admission_budget", default=None
)


def charge(field: str, entries: int = 1) -> None:
    """Charge the current request's budget (nothing outside a bounded check)."""
    budget = _current.get()
    if budget is not None:
        budget.charge(field, entries)


def first_walk(folder: Path) -> bool:
    """Whether ``folder`` still needs walking in the current check (always, outside one)."""
    budget = _current.get()
    return budget is None or budget.first_walk(folder)


async def run_bounded(fn: Callable[[], T], timeout_s: float) -> T:
    """Run ``fn`` in a worker thread under a fresh budget of ``timeout_s``.

    Cancelling the caller abandons the thread at once and makes it stop at its next charge;
    a thread stuck in one system call past the deadline is abandoned the same way.
    """
    budget = Budget(timeout_s)
    context = contextvars.copy_context()
    context.run(_current.set, budget)
    try:
        with trio.move_on_after(timeout_s + 1.0):
            return await trio.to_thread.run_sync(context.run, fn, abandon_on_cancel=True)
        raise AdmissionExceeded(
            "body", f"checking the request took over {timeout_s:g} s (LMEVAL_ADMISSION_TIMEOUT_S)"
        )
    finally:
        budget.cancel()
