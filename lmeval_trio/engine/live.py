"""The engine's in-memory state, shared by its parts: the active jobs, and what the store
refused to record.

The store is the source of truth for records; live state (progress, change signals, the
cancel scope a stop cancels) exists only while a job is queued or running.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any

import trio

from lmeval_trio.engine.change_signal import Pulse
from lmeval_trio.jobs.progress import ProgressTracker
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import JobStatus

#: Every engine module logs as the supervisor did: operators filter on this name.
log = logging.getLogger("lmeval_trio.supervisor")


class StopReason(enum.Enum):
    STOP = "stopped by request"
    DELETE = "deleted"
    SHUTDOWN = "interrupted: the server shut down while this job ran"


@dataclass(frozen=True)
class NaturalEnd:
    """An attempt's process that exited on its own, before any stop or shutdown asked it to:
    its exit code and when, one record so that the two cannot disagree. The time decides
    whether a time limit reached meanwhile (while its logs closed) was a timeout: it was not
    if the process had already ended."""

    exit_code: int
    clock: float  # trio time the process ended

    def before(self, deadline: float) -> bool:
        """Whether the process had ended before ``deadline`` (trio time)."""
        return self.clock < deadline


@dataclass(eq=False)
class LiveJob:
    """In-memory state of a queued or running job."""

    record: JobRecord
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    changed: Pulse = field(default_factory=Pulse)
    progress: ProgressTracker = field(default_factory=ProgressTracker)
    stop_reason: StopReason | None = None
    reattach: bool = False  # still running elsewhere from before a restart: follow it
    slot_granted_at: float = 0.0  # trio clock, for the dispatch latency metric
    natural_end: NaturalEnd | None = None  # this attempt's process exited on its own
    timed_out: bool = False  # this attempt ran past its time limit (and was stopped)
    transient: bool = False  # this attempt failed in a way another attempt may not
    _dispatched: bool = field(default=False, init=False, repr=False)
    _count: _Dispatched | None = field(default=None, init=False, repr=False)  # its registry's

    @property
    def id(self) -> int:
        return self.record.id

    @property
    def dispatched(self) -> bool:
        """Handed to a slot: from now on only its own task settles it."""
        return self._dispatched

    @dispatched.setter
    def dispatched(self, value: bool) -> None:
        if self._count is not None and value != self._dispatched:
            self._count.n += 1 if value else -1
        self._dispatched = value


@dataclass(eq=False)
class _Dispatched:
    """How many of a registry's jobs are dispatched (kept by LiveJob.dispatched), so that
    the queue bound's count costs nothing with thousands of jobs queued."""

    n: int = 0


class LiveJobs:
    """The active jobs by id, and one change signal for listings that follow everything."""

    def __init__(self) -> None:
        self.jobs: dict[int, LiveJob] = {}
        self.changed = Pulse()
        self._dispatched = _Dispatched()

    def add(self, record: JobRecord, *, reattach: bool = False) -> LiveJob:
        self._detach(self.jobs.get(record.id))
        live = self.jobs[record.id] = LiveJob(record, reattach=reattach)
        live._count = self._dispatched
        self.changed.fire()
        return live

    def forget(self, live: LiveJob) -> None:
        """The job is no longer active: drop it and wake everyone waiting on it."""
        self._detach(self.jobs.pop(live.id, None))
        live.changed.fire()
        live.done.set()
        self.changed.fire()

    def fire(self, live: LiveJob) -> None:
        """The job's record changed: tell its followers and the listings."""
        live.changed.fire()
        self.changed.fire()

    def _detach(self, live: LiveJob | None) -> None:
        """``live`` leaves the registry: its dispatched flag no longer counts."""
        if live is not None and live._count is not None:
            live._count.n -= live.dispatched
            live._count = None

    def waiting(self) -> int:
        """Jobs not handed to a slot yet (what the queue bound counts)."""
        return len(self.jobs) - self._dispatched.n

    def running(self) -> int:
        return sum(1 for live in self.jobs.values() if live.record.status is JobStatus.RUNNING)


@dataclass(eq=False)
class StoreFaults:
    """What the store refused, for the reconciler to finish once it takes writes again."""

    #: Ends to record: the job stays live (and its waiters wait) until its end is stored.
    unrecorded: dict[int, tuple[LiveJob, JobStatus, dict[str, Any]]] = field(default_factory=dict)
    held: list[LiveJob] = field(default_factory=list)  # jobs whose start it refused
    to_discard: list[JobRecord] = field(default_factory=list)  # submissions to undo
    fault: trio.Event = field(default_factory=trio.Event)  # set: something above waits
