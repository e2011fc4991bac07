"""The local runner: each job a child process group on this machine, forked by a fork server
where one matches it (see ``base.py`` for the interface every runner keeps)."""

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
from lmeval_trio.runners.fork_server import ForkServers, Route
from lmeval_trio.runners.job_walls import JobWalls
from lmeval_trio.runners.process import Sink

log = logging.getLogger("lmeval_trio.runner")
#: A launcher says one short line; its pipe is read to EOF, up to this much.
_INFO_MAX_BYTES = 4096
#: Once the launcher has exited its info pipe is at EOF; this only bounds a pathological wait.
_INFO_WAIT_S = 5.0


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
        self,
        settings: Settings,
        forks: ForkServers | None = None,
        walls: JobWalls | None = None,
    ) -> None:
        self.settings = settings
        self.grace_s = settings.kill_grace_s
        self.forks = forks
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
        """Run the job from a fork server if one matches it (``fork_server.py``), else cold;
        either way behind its walls, put up the moment the process becomes the job."""
        argv = record.argv
        if self.walls is not None and walls is not None:
            await trio.to_thread.run_sync(_check_executable, argv[0] if argv else "")
            argv = self.walls.command(argv, walls)
        route = (
            self.forks.route(record.argv, env, record.job_dir, walls, argv) if self.forks else None
        )
        if route is not None:
            return await self._start_forked(route, record, env, on_stdout, on_stderr, task_status)
        return await process.run_process_group(
            argv,
            env=env,
            cwd=record.job_dir,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            grace_s=self.grace_s,
            task_status=task_status,
        )

    async def _start_forked(
        self,
        route: Route,
        record: JobRecord,
        env: dict[str, str],
        on_stdout: Sink,
        on_stderr: Sink,
        task_status: trio.TaskStatus[process.ProcessInfo],
    ) -> int:
        """The job's child is its launcher (``fork_launcher.py``); what it says on the info
        pipe names the forked job's process group, which is reaped with the launcher's."""
        assert self.forks is not None
        info_r, info_w = os.pipe()
        said = _LauncherReport(self.forks, route, record.id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(said.read, info_r)
            return await process.run_process_group(
                route.argv(info_w),
                env=env,
                cwd=record.job_dir,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                grace_s=self.grace_s,
                task_status=task_status,
                pass_fds=(info_w,),
                also_reap=said.job_groups,
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


class _LauncherReport:
    """What a launcher says on its info pipe: the forked job's pid, or why it started cold."""

    def __init__(self, forks: ForkServers, route: Route, job_id: int) -> None:
        self.forks = forks
        self.route = route
        self.job_id = job_id
        self.job_pid: int | None = None
        self.done = trio.Event()

    async def read(self, fd: int) -> None:
        data = b""
        try:
            async with trio.lowlevel.FdStream(fd) as stream:
                while len(data) < _INFO_MAX_BYTES and (chunk := await stream.receive_some()):
                    data += chunk
        finally:
            self.done.set()
        word, _, rest = data.decode(errors="replace").strip().partition(" ")
        if word == "pid" and rest.isdigit():
            self.job_pid = int(rest)
            self.forks.forked(self.route, self.job_pid)
        elif word == "cold":
            self.forks.ran_cold(self.route, self.job_id, rest)

    async def job_groups(self) -> list[int]:
        """The forked job's group (its pid: it leads its own session), once the launcher
        has exited and so said all it will."""
        with trio.move_on_after(_INFO_WAIT_S):
            await self.done.wait()
        if self.job_pid is None:
            return []
        self.forks.ended(self.route, self.job_pid)
        return [self.job_pid]
