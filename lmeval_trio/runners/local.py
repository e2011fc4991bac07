"""The local runner: each job a child process group on this machine, or a spare that
becomes the job (see ``base.py`` for the interface every runner keeps)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import trio

from lmeval_trio.config import Settings
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.runners import process
from lmeval_trio.runners.base import Started
from lmeval_trio.runners.confinement import Walls
from lmeval_trio.runners.environment import local_environment
from lmeval_trio.runners.job_walls import JobWalls
from lmeval_trio.runners.process import Sink
from lmeval_trio.runners.warm_pool import WarmPool

log = logging.getLogger("lmeval_trio.runner")


def _check_executable(path: str) -> None:
    """Name a missing executable as a failed start, as a direct spawn would: behind the
    exec wrapper the failure would otherwise surface only as exit code 127."""
    if not os.path.isabs(path):
        return
    if not os.path.exists(path):
        raise process.SpawnError(f"executable not found: {path}")
    if not os.access(path, os.X_OK) or os.path.isdir(path):
        raise process.SpawnError(f"permission denied: {path}")


class LocalRunner:
    """Each job is a child process in its own process group on this machine."""

    name = "local"

    def __init__(
        self, settings: Settings, warm: WarmPool | None = None, walls: JobWalls | None = None
    ) -> None:
        self.settings = settings
        self.grace_s = settings.kill_grace_s
        self.warm = warm
        self.walls = walls

    async def run(
        self,
        record: JobRecord,
        env: Mapping[str, str],
        on_stdout: Sink,
        on_stderr: Sink,
        *,
        task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED,
    ) -> int:
        full_env = local_environment(self.settings, env)
        walls = await self._walls(record, env, full_env)
        async with trio.open_nursery() as nursery:
            returncode: list[int] = []

            async def child(task_status: trio.TaskStatus[process.ProcessInfo]) -> None:
                returncode.append(
                    await self._start(record, full_env, walls, on_stdout, on_stderr, task_status)
                )

            info: process.ProcessInfo = await nursery.start(child)
            task_status.started(Started(pid=info.pid, start_ticks=info.start_ticks))
        return returncode[0]

    async def _walls(
        self, record: JobRecord, own_env: Mapping[str, str], env: Mapping[str, str]
    ) -> Walls | None:
        """The job's walls, or None when jobs run unconfined."""
        if self.walls is None or not self.walls.confined:
            return None
        return await trio.to_thread.run_sync(
            self.walls.walls, record.job_dir, own_env, env, record.argv
        )

    async def _start(
        self,
        record: JobRecord,
        env: dict[str, str],
        walls: Walls | None,
        on_stdout: Sink,
        on_stderr: Sink,
        task_status: trio.TaskStatus[process.ProcessInfo],
    ) -> int:
        """Run the job in a spare if one matches it (see ``warm_pool.py``), else afresh;
        either way behind its walls, put up the moment the process becomes the job."""
        handover = self.warm.take(record.argv, env, record.job_dir, walls) if self.warm else None
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
        argv = record.argv
        if self.walls is not None and walls is not None:
            await trio.to_thread.run_sync(_check_executable, argv[0] if argv else "")
            argv = self.walls.command(argv, walls)
        return await process.run_process_group(
            argv,
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
