"""The Runner interface: where a job's command runs, and what identifies it once started.

The supervisor decides *when* a job runs and records what happens; a runner decides *where*:
as a local child process (``local.py``, the default) or elsewhere (a Ray cluster, ``ray.py``;
``fake.py`` for tests). A runner pumps the job's output to the supervisor's sinks, returns
its exit code, and makes cancellation stop everything it started before returning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import trio

from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.runners.process import Sink


@dataclass(frozen=True)
class Started:
    """What identifies a started job, recorded so a restarted server can find it again."""

    pid: int | None = None
    start_ticks: int | None = None
    external_id: str | None = None


class Runner(Protocol):
    """Runs one job's argv somewhere and reports its output and exit code."""

    name: str

    async def run(
        self,
        record: JobRecord,
        env: Mapping[str, str],
        on_stdout: Sink,
        on_stderr: Sink,
        *,
        task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED,
    ) -> int:
        """Run to the end and return the exit code (negative: killed by that signal).

        ``env`` holds the variables the server sets for the job (``environment.job_environment``:
        the request's and the server's); what the job inherits comes from where it runs.
        Cancellation must stop the job completely before this returns or raises; a job that
        cannot start raises ``process.SpawnError`` with the reason.
        """
        ...

    async def reattach(
        self,
        record: JobRecord,
        on_stdout: Sink,
        on_stderr: Sink,
        *,
        task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED,
    ) -> int:
        """Follow a job a previous server started (after ``recover`` returned True)."""
        ...

    async def recover(self, record: JobRecord) -> bool:
        """A job was running when the server stopped: clean up what is left of it and
        return True only if it is still running and can be re-attached."""
        ...

    def detach(self) -> bool:
        """The server is shutting down: return True if, from now on, cancelling a job leaves
        it running where it is (to be re-attached at the next start) instead of stopping it."""
        ...
