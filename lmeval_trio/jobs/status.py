"""Job statuses and the one table of legal transitions between them."""

from __future__ import annotations

from enum import StrEnum

from lmeval_trio.errors import InternalError


class JobStatus(StrEnum):
    """The statuses the original server reported, spelled as it spelled them."""

    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPED = "Stopped"

    @property
    def is_terminal(self) -> bool:
        return not TRANSITIONS[self]


# Terminal statuses have no way out: resuming a finished job creates a new job.
# Running -> Queued is the one way back: a job interrupted by shutdown or a crash, or one
# waiting to retry after a transient failure (engine/retries.py).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.STOPPED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.QUEUED}
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.STOPPED: frozenset(),
}

ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
TERMINAL = frozenset(s for s in JobStatus if s.is_terminal)


class InvalidTransition(InternalError, RuntimeError):
    """A status change the table forbids (a bug, or a race lost to another change)."""

    def __init__(self, job_id: int, old: JobStatus, new: JobStatus) -> None:
        super().__init__(f"job {job_id}: {old.value} -> {new.value} is not a legal transition")
        self.job_id = job_id
        self.old = old
        self.new = new


def check_transition(job_id: int, old: JobStatus, new: JobStatus) -> None:
    """Raise InvalidTransition unless ``old -> new`` is in the table."""
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(job_id, old, new)
