"""What the server knows about one job: the record the store keeps and the API reports."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmeval_trio.jobs.status import JobStatus


def utc_now() -> str:
    """UTC ISO-8601 with offset, the timestamp format the original server used."""
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class JobRecord:
    """One job as stored; immutable so a reader never sees a half-applied change."""

    id: int
    status: JobStatus
    request: dict[str, Any]
    argv: list[str]
    env: dict[str, str]
    job_dir: Path
    output_dir: Path
    created_at: str
    queued_at: str
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    pid: int | None = None
    pid_start_ticks: int | None = None
    progress: dict[str, Any] | None = None
    progress_pct: int = 0
    resumed_from: int | None = None
    attempts: int = 0
    gpus: list[str] = field(default_factory=list)
    backend: str = "local"  # the runner that ran it ("local", "ray")
    external_id: str | None = None  # the runner's own id for it (e.g. a Ray submission id)
    #: One entry per attempt started (``engine/retries.py`` writes them): its times, exit,
    #: reason and where its output begins in each log.
    attempt_history: list[dict[str, Any]] = field(default_factory=list)
    retry_at: str | None = None  # Queued after a transient failure: not started before this
    sweep_id: int | None = None  # the sweep this job is a cell of (engine/sweeps.py)
    sweep_cell: str | None = None  # and that cell's key

    @property
    def argument(self) -> str:
        """The command line as one shell-quoted string (the original's ``argument``)."""
        return shlex.join(self.argv)

    @property
    def stdout_path(self) -> Path:
        return self.job_dir / "stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.job_dir / "stderr.log"

    def log_path(self, stream: str) -> Path:
        return self.stdout_path if stream == "stdout" else self.stderr_path


@dataclass(frozen=True)
class SweepCell:
    """One cell of a sweep: its key and the full request its jobs run."""

    key: str
    request: dict[str, Any]


@dataclass(frozen=True)
class SweepRecord:
    """A sweep as stored: its cells, each run as ordinary jobs (``JobRecord.sweep_id``)."""

    id: int
    name: str
    cells: tuple[SweepCell, ...]
    created_at: str
    baseline: str | None = None  # the key of the cell others are compared with
    max_parallel: int | None = None  # at most this many of its jobs run at once
    #: Webhooks told of the sweep's end (and of its cells' events): jobs/notify.py entries.
    notify: tuple[dict[str, Any], ...] = ()
