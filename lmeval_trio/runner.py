"""Where a job's command runs: the Runner interface, and the local process-group runner.

The supervisor decides *when* a job runs and records what happens; a runner decides *where*:
as a local child process (default) or elsewhere (a Ray cluster, see ``ray_runner.py``). A
runner pumps the job's output to the supervisor's sinks, returns its exit code, and makes
cancellation stop everything it started before returning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import trio

from lmeval_trio import process
from lmeval_trio.config import job_base_environment
from lmeval_trio.process import Sink
from lmeval_trio.records import JobRecord
from lmeval_trio.warm import WarmPool

log = logging.getLogger("lmeval_trio.runner")


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

        ``env`` holds the job's own variables (the request's and the server's additions).
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


def local_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What a local job's process gets: the server's base environment, then the job's own."""
    return {**job_base_environment(), **env}


class LocalRunner:
    """Each job is a child process in its own process group on this machine."""

    name = "local"

    def __init__(self, grace_s: float, warm: WarmPool | None = None) -> None:
        self.grace_s = grace_s
        self.warm = warm

    async def run(
        self,
        record: JobRecord,
        env: Mapping[str, str],
        on_stdout: Sink,
        on_stderr: Sink,
        *,
        task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED,
    ) -> int:
        full_env = local_environment(env)
        async with trio.open_nursery() as nursery:
            returncode: list[int] = []

            async def child(task_status: trio.TaskStatus[process.ProcessInfo]) -> None:
                returncode.append(
                    await self._start(record, full_env, on_stdout, on_stderr, task_status)
                )

            info: process.ProcessInfo = await nursery.start(child)
            task_status.started(Started(pid=info.pid, start_ticks=info.start_ticks))
        return returncode[0]

    async def _start(
        self,
        record: JobRecord,
        env: dict[str, str],
        on_stdout: Sink,
        on_stderr: Sink,
        task_status: trio.TaskStatus[process.ProcessInfo],
    ) -> int:
        """Run the job in a warm runner if one matches it (see ``warm.py``), else afresh."""
        handover = self.warm.take(record.argv, env, record.job_dir) if self.warm else None
        if handover is not None:
            try:
                return await process.adopt_process_group(
                    handover.proc,
                    handover.spec,
                    on_stdout=on_stdout,
                    on_stderr=on_stderr,
                    grace_s=self.grace_s,
                    task_status=task_status,
                )
            except process.SpareLost as err:
                log.warning("job %s: %s; starting it afresh", record.id, err)
        return await process.run_process_group(
            record.argv,
            env=env,
            cwd=record.job_dir,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            grace_s=self.grace_s,
            task_status=task_status,
        )

    async def reattach(
        self,
        record: JobRecord,
        on_stdout: Sink,
        on_stderr: Sink,
        *,
        task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED,
    ) -> int:
        raise NotImplementedError("a local job's pipes died with the server; it cannot be followed")

    async def recover(self, record: JobRecord) -> bool:
        """Kill the old run's process group, unless its pid now belongs to someone else."""
        if record.pid is None:
            return False
        ticks = process.process_start_ticks(record.pid)
        # Leader gone but group alive: its orphans (a pgid is never reused while in use).
        ours = ticks == record.pid_start_ticks if ticks is not None else True
        try:
            if ours and process.group_alive(record.pid):
                log.warning("job %s: killing leftover process group %s", record.id, record.pid)
                await process.kill_group(record.pid, grace_s=self.grace_s)
        except ValueError:  # a pid that can never be a job's group (ours, init, kernel)
            log.warning("job %s: recorded pid %s is not a job's; not killed", record.id, record.pid)
        return False

    def detach(self) -> bool:
        """A child's pipes die with the server, so a shutdown always stops local jobs."""
        return False
