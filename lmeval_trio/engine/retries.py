"""Time limits and retries: how long an attempt may run, which failures earn another
attempt and after what wait, and the record each attempt leaves.

A job's attempts share its folder: the next one resumes from the response cache the last one
filled, and its output goes on in the same logs after a marker line (``execution.py``).
Each attempt is an entry of the record's ``attempt_history``, opened when it starts (with
where its output begins in each log) and closed when it ends (exit code, reason, outcome).
"""

from __future__ import annotations

import math
import os
import signal
from datetime import UTC, datetime
from typing import Any

import trio

from lmeval_trio.config import Settings
from lmeval_trio.harness.log_wording import transient_error
from lmeval_trio.jobs.record import JobRecord, utc_now
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.outputs.logs import open_regular_file

#: A job killed by SIGKILL that the server did not send: the kernel's OOM killer (directly,
#: or through a shell wrapper as ``lm_eval_path``, which exits 128 + 9).
OOM_EXIT_CODES = frozenset({-signal.SIGKILL, 128 + signal.SIGKILL})


def timeout_s(record: JobRecord, settings: Settings) -> float | None:
    """The job's time limit per attempt: its request's, else the server default (or none)."""
    limit = record.request.get("timeout_s")
    return float(limit) if limit is not None else settings.job_timeout_s


def deadline(record: JobRecord, settings: Settings) -> float:
    """The trio-clock deadline of the running attempt, counted from its ``started_at``: a job
    re-attached after a restart keeps the deadline it started with."""
    limit = timeout_s(record, settings)
    if limit is None:
        return math.inf
    return trio.current_time() + max(0.0, limit - seconds_since(record.started_at))


def timed_out_reason(record: JobRecord, settings: Settings) -> str:
    return f"timed out after {timeout_s(record, settings) or 0:g} s"


def max_attempts(record: JobRecord) -> int:
    return int(record.request.get("max_attempts") or 1)


def is_transient(returncode: int, cause: str | None) -> bool:
    """Whether a failed attempt may succeed if run again: the OOM killer ended it, or its
    final error says the model endpoint refused or dropped a connection, or answered 5xx
    or 429 (``harness/log_wording.py``). Everything else (a bad task, a bad argument, a bug)
    fails the same way again."""
    if returncode in OOM_EXIT_CODES:
        return True
    return cause is not None and transient_error(cause)


def failed_attempts(record: JobRecord) -> int:
    """Attempts that ended in a transient failure and were retried (interrupted ones, by a
    server shutdown or crash, do not count against ``max_attempts``)."""
    return sum(1 for entry in record.attempt_history if entry.get("retried"))


def backoff_s(settings: Settings, failures: int) -> float:
    """The wait after the ``failures``-th failed attempt: doubling, capped."""
    exponent = min(max(failures - 1, 0), 60)
    return float(min(settings.retry_base_delay_s * 2**exponent, settings.retry_max_delay_s))


def retry_reason(record: JobRecord, cause: str, retry_at: str) -> str:
    attempt = record.attempts
    return f"attempt {attempt} of {max_attempts(record)} failed ({cause}); retrying at {retry_at}"


def opened(record: JobRecord, started_at: str, offsets: dict[str, int]) -> list[dict[str, Any]]:
    """The history with an entry for the attempt that starts now."""
    entry = {
        "attempt": record.attempts + 1,
        "started_at": started_at,
        "finished_at": None,
        "exit_code": None,
        "reason": None,
        "outcome": None,
        "retried": False,
        "stdout_offset": offsets.get("stdout", 0),
        "stderr_offset": offsets.get("stderr", 0),
    }
    return [*record.attempt_history, entry]


def closed(
    record: JobRecord,
    outcome: JobStatus,
    *,
    exit_code: int | None,
    reason: str | None,
    retried: bool = False,
) -> list[dict[str, Any]]:
    """The history with the running attempt's entry closed (unchanged if none is open)."""
    history = [dict(entry) for entry in record.attempt_history]
    if history and history[-1].get("finished_at") is None:
        history[-1].update(
            finished_at=utc_now(),
            exit_code=exit_code,
            reason=reason,
            outcome=outcome.value,
            retried=retried,
        )
    return history


def log_boundary(record: JobRecord) -> dict[str, int]:
    """Where the next attempt's output will begin in each log: its end, past the newline the
    attempt marker adds when the last line is unfinished (a bar cut mid-redraw)."""
    offsets: dict[str, int] = {}
    for stream in ("stdout", "stderr"):
        try:  # never through a link the job planted in its folder (see logs.py)
            fd = open_regular_file(record.log_path(stream))
        except OSError:
            offsets[stream] = 0
            continue
        try:
            size = os.fstat(fd).st_size
            glued = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            offsets[stream] = size + (1 if glued else 0)
        finally:
            os.close(fd)
    return offsets


def seconds_since(stamp: str | None) -> float:
    """Wall-clock seconds since a UTC ISO-8601 ``stamp`` (0 without one, or in the future)."""
    if not stamp:
        return 0.0
    return max(0.0, (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds())


def seconds_until(stamp: str | None) -> float:
    """Wall-clock seconds until ``stamp`` (0 without one, or once it has passed)."""
    if not stamp:
        return 0.0
    return max(0.0, (datetime.fromisoformat(stamp) - datetime.now(UTC)).total_seconds())


def stamp_after(delay_s: float) -> str:
    """UTC ISO-8601, ``delay_s`` from now."""
    return datetime.fromtimestamp(datetime.now(UTC).timestamp() + delay_s, UTC).isoformat()
