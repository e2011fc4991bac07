"""The supervisor: queues jobs, runs at most N at once, and owns every job's lifetime.

A memory channel is the queue and a CapacityLimiter the execution slots, so a job starts the
moment a slot frees (no polling). Each running job lives in its own cancel scope: stop and
delete cancel that scope, and the process runner takes the whole process group down. The
store is the source of truth for records; live state (progress, change signals) is kept
only for queued and running jobs. Usable without HTTP::

    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit({"model": "dummy", "tasks": "my_task"})
        final = await supervisor.wait(record.id)
"""

from __future__ import annotations

import enum
import logging
import math
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import trio
from pydantic import BaseModel

from lmeval_trio import admission, admission_checks, bytecode, command, process, unrecorded
from lmeval_trio.catalog_builds import Catalogs
from lmeval_trio.cli_schema import RequestRejected, request_model
from lmeval_trio.config import Settings
from lmeval_trio.endpoint_wait import EndpointGate
from lmeval_trio.job_walls import JobWalls
from lmeval_trio.logs import (
    REPLAY_MAX_BYTES,
    LogPump,
    open_regular_file,
    read_segments,
    read_tail_lines,
)
from lmeval_trio.metrics import Metrics
from lmeval_trio.policy import CONFIG_COPY, Admitted, Policy, PolicyViolation
from lmeval_trio.progress import ProgressSnapshot, ProgressTracker
from lmeval_trio.pulse import Pulse
from lmeval_trio.records import JobRecord, utc_now
from lmeval_trio.runner import LocalRunner, Runner, Started, local_environment
from lmeval_trio.secrets import output_secrets
from lmeval_trio.slots import Slots
from lmeval_trio.status import TERMINAL, JobStatus
from lmeval_trio.store import Draft, JobStore, StoreError
from lmeval_trio.warm import WarmPool

log = logging.getLogger("lmeval_trio.supervisor")
#: What a store write raises when the database cannot be written (full disk, read-only, I/O).
STORE_FAULTS = (sqlite3.Error, OSError)
RETRY_FIRST_S = 0.1  # first wait before writing again to a store that refused a write
RETRY_MAX_S = 30.0


class SupervisorError(Exception):
    """Base of the errors the supervisor reports to its callers."""


class JobNotFound(SupervisorError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"No lm-evaluation-harness job with ID={job_id} found.")
        self.job_id = job_id


class QueueFull(SupervisorError):
    """More jobs are queued than LMEVAL_MAX_QUEUED_JOBS allows."""


class NotAccepting(SupervisorError):
    """The supervisor is not running (not started yet, shutting down, or crashed)."""


class NotResumable(SupervisorError):
    """Only Stopped and Failed jobs can be resumed."""


class StopReason(enum.Enum):
    STOP = "stopped by request"
    DELETE = "deleted"
    SHUTDOWN = "interrupted: the server shut down while this job ran"


class StopOutcome(enum.Enum):
    STOPPED = "stopped"
    DEQUEUED = "removed from the queue"
    ALREADY_FINISHED = "already finished"


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
    dispatched: bool = False  # handed to a slot: from now on only its own task settles it

    @property
    def id(self) -> int:
        return self.record.id


@dataclass(frozen=True)
class SupervisorStatistics:
    """A snapshot for health checks and metrics (trio-style ``statistics()``)."""

    alive: bool
    queued: int
    running: int
    slots_total: int
    slots_free: int
    warm_runners_idle: int = 0  # pre-started lm-eval processes waiting for a job
    warm_runners_ready: int = 0  # … of which have finished importing
    warm_starts: int = 0  # jobs started in a warm runner
    warm_misses: int = 0  # fast-start jobs no warm runner matched (started afresh)
    jobs_confined: bool = False  # local jobs run behind a Landlock wall (README "Security")
    job_confinement: str = "off"  # the setting: auto, landlock or off


class Supervisor:
    """Owns the queue, the slots and every job's process; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        launcher: command.Launcher | None = None,
        runner: Runner | None = None,
    ) -> None:
        self.settings = settings
        self.launcher = launcher or command.Launcher.default(
            fast_start=settings.fast_start,
            index_cache=settings.effective_cache_dir / "task-index",
        )
        self.warm = None if runner is not None else warm_pool(settings, self.launcher)
        self.walls = JobWalls(settings, self.launcher.executable if self.launcher.warm else None)
        self.runner = runner or default_runner(settings, self.warm, self.walls)
        self.store = JobStore(settings.data_dir / "jobs.db")
        self.policy = Policy(settings, self.launcher.executable)
        self.catalogs = Catalogs(
            settings, lambda: local_environment(self.job_environment({})), self.walls
        )
        self.slots = Slots(settings)
        self.metrics = Metrics()
        self._send, self._receive = trio.open_memory_channel[int](math.inf)
        self._live: dict[int, LiveJob] = {}
        self._submitting = 0  # submissions past the queue-bound check, not yet queued
        self._creating: dict[int, trio.Event] = {}  # stored, not yet queued (resume copies)
        # What the store refused, for _reconcile to finish once it takes writes again: ends
        # to record, jobs whose start it refused (held), submissions to undo.
        self._held: list[LiveJob] = []
        self._to_discard: list[JobRecord] = []
        self._unrecorded: dict[int, tuple[LiveJob, JobStatus, dict[str, Any]]] = {}
        self._store_fault = trio.Event()
        self._reconcile_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._dispatch_scope = trio.CancelScope()
        self._warm_scope = trio.CancelScope()
        self._compile_scope = trio.CancelScope()
        self.caches_prepared = trio.Event()  # bytecode compiled, task index built (or failed)
        self._accepting = False
        self._alive = False
        self._shutdown_requested = trio.Event()
        self._detached = False  # at shutdown the runner left its jobs running (Ray)
        self.closed = trio.Event()  # set once every job process is gone and the store closed
        self.changed = Pulse()  # any job changed: for listings that follow everything

    # -- lifetime -------------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        await self.walls.check()  # raises ConfinementUnavailable if a required wall cannot be
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        self.catalogs.attach(self._nursery, preload_after=self.caches_prepared)  # catalog_builds.py
        try:
            await trio.to_thread.run_sync(_make_private, self.settings.data_dir)
            await self.store.open()
            await self._check_store_matches_folders()
            await self._recover()
        except BaseException as error:
            with trio.CancelScope(shield=True):
                await self.store.close()
            try:
                await self._nursery_manager.__aexit__(type(error), error, error.__traceback__)
            except BaseExceptionGroup as group:
                if list(group.exceptions) == [error]:  # the start failed: say why, unwrapped
                    raise error from None
                raise
            raise
        if self.warm is not None:
            self.warm.prime(local_environment(self.job_environment({})))
            await self._nursery.start(self._run_warm_pool, self.warm)
        if isinstance(self.runner, LocalRunner):
            self._nursery.start_soon(self._compile_bytecode)
        self._nursery.start_soon(self._dispatch)
        self._nursery.start_soon(self._reconcile)
        self._accepting = self._alive = True
        return self

    async def _compile_bytecode(self) -> None:
        """Compiled bytecode for jobs (see ``bytecode.py``); a failure costs speed only.
        After a change of the environment the task index is rebuilt too, by a warm runner
        that gets no job: confined jobs cannot write it, and warm runners may be off."""
        with self._compile_scope:
            try:
                changed = await bytecode.compile_environment(self.settings.effective_cache_dir)
                if changed and self.launcher.warm is not None and self._accepting:
                    await self._build_task_index(self.launcher.warm)  # never once shutting down
            except OSError as error:
                log.warning("could not prepare the caches for jobs: %s", error)
        self.caches_prepared.set()

    async def _build_task_index(self, warm_argv: Sequence[str]) -> None:
        done = await trio.run_process(
            list(warm_argv),
            env=local_environment(self.job_environment({})),
            cwd=self.settings.data_dir,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if done.returncode != 0:
            log.warning("could not build the task index (exit code %s)", done.returncode)

    async def _run_warm_pool(
        self, pool: WarmPool, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with self._warm_scope:
            await pool.run(task_status=task_status)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            with trio.CancelScope(shield=True):
                await self._stop_everything()
        finally:
            try:
                result = await self._nursery_manager.__aexit__(exc_type, exc, tb)
            finally:
                self._alive = False
                with trio.CancelScope(shield=True):
                    await self.store.close()
                self.closed.set()
        log.info("shutdown: done; no job or warm runner process left")
        return result

    async def run(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until shutdown() is called: for owners that start it in their own nursery."""
        try:
            async with self:
                task_status.started(self)
                await self._shutdown_requested.wait()
        finally:
            self._alive = False

    def shutdown(self) -> None:
        """Ask a supervisor started with run() to stop its jobs and return."""
        self._accepting = False
        self._shutdown_requested.set()

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def accepting(self) -> bool:
        return self._accepting

    def statistics(self) -> SupervisorStatistics:
        running = sum(1 for live in self._live.values() if live.record.status is JobStatus.RUNNING)
        return SupervisorStatistics(
            alive=self._alive,
            queued=len(self._live) - running,
            running=running,
            slots_total=self.slots.total,
            slots_free=self.slots.free,
            **self._warm_statistics(),
            jobs_confined=self.walls.confined and isinstance(self.runner, LocalRunner),
            job_confinement=self.settings.job_confinement,
        )

    def _warm_statistics(self) -> dict[str, int]:
        if self.warm is None:
            return {}
        stats = self.warm.statistics()
        return {
            "warm_runners_idle": stats.idle,
            "warm_runners_ready": stats.ready,
            "warm_starts": stats.taken,
            "warm_misses": stats.missed,
        }

    async def _stop_everything(self) -> None:
        """Shutdown: stop dispatching, interrupt running jobs (they go back to the queue),
        or, with a runner that detaches, leave them running for the next start to follow."""
        self._accepting = False
        self._dispatch_scope.cancel()
        self._warm_scope.cancel()
        self._compile_scope.cancel()
        self.catalogs.close()  # a task catalog build in progress (catalog_builds.py)
        self._detached = self.runner.detach()
        started = [live for live in self._live.values() if live.dispatched]
        ids = [live.id for live in started]
        waiting = len(self._live) - len(started)
        if self._detached:
            log.info(
                "shutdown: detaching %d running jobs %s (followed again at the next start); "
                "%d stay queued",
                len(ids),
                ids,
                waiting,
            )
        else:
            log.info(
                "shutdown: stopping %d running jobs %s; %d stay queued", len(ids), ids, waiting
            )
        for live in started:
            self._cancel(live, StopReason.SHUTDOWN)
        with trio.move_on_after(self.settings.shutdown_timeout_s):
            for live in started:
                await self._settled_or_refused(live)
        self._reconcile_scope.cancel()
        for live, status, fields in self._unrecorded.values():
            log.error("job %s: the store never took its end; kept for the next start", live.id)
            await trio.to_thread.run_sync(unrecorded.save, live.record.job_dir, status, fields)
            self._forget(live)

    # -- recovery -------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Re-attach or requeue what the previous run left, then queue the rest in order."""
        attached: list[int] = []
        for record in await self.store.select([JobStatus.RUNNING]):
            if record.backend == self.runner.name and await self.runner.recover(record):
                log.info("job %s: re-attaching to %s", record.id, record.external_id)
                self._enqueue(record, reattach=True)
                attached.append(record.id)
                continue
            kept = await trio.to_thread.run_sync(unrecorded.load, record.job_dir)
            if kept is not None:  # it ended, but the store could not take that then
                await self.store.transition(record.id, record.status, kept[0], **kept[1])
                await trio.to_thread.run_sync(unrecorded.discard, record.job_dir)
                continue
            reason = f"interrupted: the server stopped while this job ran (pid {record.pid})"
            _log_transition(await self._finish_interrupted(record, reason), JobStatus.RUNNING)
        queued = await self.store.select([JobStatus.QUEUED], order="queue")
        for record in queued:
            self._enqueue(record)
        log.info(
            "start-up: data in %s; %d jobs re-attached %s, %d queued (interrupted ones first)",
            self.settings.data_dir,
            len(attached),
            attached,
            len(queued),
        )
        await self._prune()

    async def _check_store_matches_folders(self) -> None:
        """Refuse to start on a database that does not know the data directory's jobs: a
        missing, empty or older jobs.db beside job folders it never handed out would give
        new jobs the ids (and the files) of old ones."""
        last_id = await self.store.last_id()
        newest = await trio.to_thread.run_sync(_newest_job_folder, self.settings.data_dir)
        if newest is not None and newest > last_id:
            raise StoreError(
                f"{self.store.path} does not match {self.settings.data_dir / 'jobs'}: the "
                f"folder of job {newest} exists but the database has handed out ids only up "
                f"to {last_id} (it is missing, empty or older than the folders). Restore the "
                "database, or move the job folders away, then start again."
            )

    async def _finish_interrupted(self, record: JobRecord, reason: str) -> JobRecord:
        if self.settings.requeue_interrupted:
            return await self.store.transition(
                record.id,
                JobStatus.RUNNING,
                JobStatus.QUEUED,
                reason=reason + "; requeued",
                pid=None,
                pid_start_ticks=None,
            )
        return await self.store.transition(
            record.id, JobStatus.RUNNING, JobStatus.FAILED, reason=reason, finished_at=utc_now()
        )

    # -- public operations ----------------------------------------------------------------

    async def submit(
        self, body: Mapping[str, Any] | BaseModel, *, resumed_from: JobRecord | None = None
    ) -> JobRecord:
        """Validate, check the policy, store and queue a job. Raises pydantic's
        ValidationError, PolicyViolation, RequestRejected, QueueFull or NotAccepting."""
        self._check_accepting()
        request = command.normalise(_as_request(body).model_dump(exclude_unset=True))
        with self._queue_place():
            admitted = await admission_checks.admit(self, request, self._gates())
            record = await self._create_and_enqueue(request, admitted, resumed_from)
        self.metrics.submissions.inc()
        log.info(  # not the argv: model_args may carry credentials
            "job %s queued (model=%s, tasks=%s)",
            record.id,
            request.get("model"),
            request.get("tasks"),
            extra={"job_id": record.id},
        )
        return record

    async def dry_run(self, body: Mapping[str, Any] | BaseModel) -> admission_checks.Report:
        """Every admission check of ``body`` (admission_checks), queuing nothing."""
        self._check_accepting()
        request = command.normalise(_as_request(body).model_dump(exclude_unset=True))
        return await admission_checks.dry_run(self, request, self._gates())

    def _gates(self) -> admission_checks.Gates:
        return admission_checks.Gates(self._admit, self._check_gpus, self._queue_place)

    async def _create_and_enqueue(
        self, request: dict[str, Any], admitted: Admitted, resumed_from: JobRecord | None
    ) -> JobRecord:
        """Store the job and give it its queue place, or leave nothing behind.

        While a resumed job's cache is copied the record exists but is not queued yet; a
        delete waits for that (``_creating``), and a failure or cancellation on the way
        removes the record and folder again, so no Queued record is ever left without its
        place in the queue."""
        draft = self._draft(request, admitted, resumed_from)
        record = await self.store.create(draft, utc_now())
        created = self._creating[record.id] = trio.Event()
        try:
            if admitted.config_bytes is not None:
                await trio.to_thread.run_sync(_write_config, record.job_dir, admitted.config_bytes)
            if resumed_from is not None:
                await trio.to_thread.run_sync(_copy_cache, resumed_from.job_dir, record.job_dir)
            self._enqueue(record)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._discard(record)
            raise
        finally:
            del self._creating[record.id]
            created.set()
        return record

    async def _discard(self, record: JobRecord) -> None:
        """Undo a half-done submission (its record, its folder), logging what could not be."""
        try:
            await self._remove([record])
        except Exception:
            log.exception("job %s: could not undo a failed submission; retrying", record.id)
            self._to_discard.append(record)
            self._store_fault.set()

    async def _admit(self, request: dict[str, Any]) -> Admitted:
        """The policy's verdict, its work bounded (see admission) and cancelled with the
        request; a bound passed is a refusal naming the field being checked."""
        try:
            return await admission.run_bounded(
                lambda: self.policy.admit(request), self.settings.admission_timeout_s
            )
        except admission.AdmissionExceeded as error:
            raise PolicyViolation(error.field, error.message) from None

    @contextmanager
    def _queue_place(self) -> Iterator[None]:
        """Hold a place in the bounded queue across the awaits of a submission, so that
        concurrent submissions cannot overshoot LMEVAL_MAX_QUEUED_JOBS."""
        waiting = sum(1 for live in self._live.values() if not live.dispatched)
        if waiting + self._submitting >= self.settings.max_queued_jobs:
            raise QueueFull(f"the queue holds {self.settings.max_queued_jobs} jobs already")
        self._submitting += 1
        try:
            yield
        finally:
            self._submitting -= 1

    def _check_gpus(self, requested: int | None) -> None:
        wanted = self.slots.gpus_for(requested)
        if wanted > len(self.settings.gpus):
            raise RequestRejected(
                "num_gpus",
                f"asks for {wanted} GPUs; this server has {len(self.settings.gpus)} (LMEVAL_GPUS)",
            )

    def _draft(
        self, request: dict[str, Any], admitted: Admitted, resumed_from: JobRecord | None
    ) -> Callable[[int], Draft]:
        """The stored request stays as submitted; the argv, environment and output folder
        carry its paths as the policy resolved them, absolute for this job's folder."""

        def draft_for(job_id: int) -> Draft:
            job_dir = command.job_dir_for(self.settings.data_dir, job_id)
            built = command.build(admitted.apply(request, job_dir), job_dir, self.launcher)
            return Draft(
                request=request,
                argv=built.argv,
                env=built.env,
                job_dir=job_dir,
                output_dir=built.output_dir,
                resumed_from=None if resumed_from is None else resumed_from.id,
                backend=self.runner.name,
            )

        return draft_for

    async def get(self, job_id: int) -> JobRecord:
        live = self._live.get(job_id)
        if live is not None:
            return live.record
        record = await self.store.get(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record

    async def list_jobs(
        self,
        statuses: Sequence[JobStatus] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[JobRecord]:
        order = "newest" if newest_first else "id"
        records = await self.store.select(statuses, limit=limit, offset=offset, order=order)
        return [self._live[r.id].record if r.id in self._live else r for r in records]

    def progress(self, record: JobRecord) -> ProgressSnapshot:
        """Live progress for an active job, else the stored snapshot."""
        return ProgressSnapshot.from_dict(self.progress_dict(record))

    def progress_dict(self, record: JobRecord) -> dict[str, Any]:
        """The same as a dict; stored snapshots are served as stored (listing thousands of
        jobs must not re-validate each one)."""
        live = self._live.get(record.id)
        if live is not None:
            return live.progress.snapshot().to_dict()
        if record.progress is not None:
            return record.progress
        return ProgressSnapshot(percent=record.progress_pct).to_dict()

    def live_changes(self, job_id: int) -> Pulse | None:
        """The change signal of an active job (None once it has finished)."""
        live = self._live.get(job_id)
        return None if live is None else live.changed

    async def wait(self, job_id: int) -> JobRecord:
        """Wait until the job is finished (or leaves the queue for good) and return it."""
        live = self._live.get(job_id)
        if live is not None:
            await live.done.wait()
        return await self.get(job_id)

    async def stop(self, job_id: int) -> tuple[StopOutcome, JobRecord]:
        """Stop a job: remove it from the queue, or end its process tree."""
        live = self._live.get(job_id)
        if live is None:
            return StopOutcome.ALREADY_FINISHED, await self.get(job_id)
        outcome = (
            StopOutcome.DEQUEUED if live.record.status is JobStatus.QUEUED else StopOutcome.STOPPED
        )
        await self._stop_live(live, StopReason.STOP)
        return outcome, await self.get(job_id)

    async def stop_all(self) -> list[int]:
        lives = list(self._live.values())
        async with trio.open_nursery() as nursery:
            for live in lives:
                nursery.start_soon(self._stop_live, live, StopReason.STOP)
        return [live.id for live in lives]

    async def delete(self, job_id: int) -> None:
        """Stop the job if it is active, then remove its record and files."""
        await self._wait_created(job_id)
        record = await self.get(job_id)
        await self._delete_records([record])

    async def delete_all(self) -> int:
        """Delete the jobs that exist now (a snapshot): jobs submitted while these stop
        (each may take its grace) are not touched."""
        for job_id in list(self._creating):
            await self._wait_created(job_id)
        records = await self.store.select()
        await self._delete_records(records)
        return len(records)

    async def _wait_created(self, job_id: int) -> None:
        created = self._creating.get(job_id)
        if created is not None:
            await created.wait()

    async def _delete_records(self, records: Sequence[JobRecord]) -> None:
        """Stop those of ``records`` that are active, then remove them all."""
        lives = [self._live[r.id] for r in records if r.id in self._live]
        async with trio.open_nursery() as nursery:
            for live in lives:
                nursery.start_soon(self._stop_live, live, StopReason.DELETE)
        await self._remove(records)

    async def resume(self, job_id: int) -> JobRecord:
        """Queue a new job with a Stopped/Failed job's request and a copy of its cache."""
        old = await self.get(job_id)
        if old.status not in (JobStatus.STOPPED, JobStatus.FAILED):
            raise NotResumable(
                f"job {job_id} is {old.status.value}; only Stopped or Failed jobs can be resumed"
            )
        return await self.submit(old.request, resumed_from=old)

    async def output_secrets(self, record: JobRecord) -> tuple[str, ...]:
        """Values to hide in what the job wrote (its request's and its config's secrets)."""
        return await trio.to_thread.run_sync(
            output_secrets, record.request, record.job_dir / CONFIG_COPY
        )

    async def log_tail(
        self, record: JobRecord, stream: str, secrets: tuple[str, ...] = ()
    ) -> list[str]:
        """The newest lines of a log, ``secrets`` masked."""
        return await trio.to_thread.run_sync(
            read_tail_lines,
            record.log_path(stream),
            self.settings.log_tail_lines,
            self.settings.log_tail_max_bytes,
            secrets,
        )

    # -- internals ------------------------------------------------------------------------

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise NotAccepting("the supervisor is not running")

    def _enqueue(self, record: JobRecord, *, reattach: bool = False) -> None:
        self._live[record.id] = LiveJob(record, reattach=reattach)
        self._send.send_nowait(record.id)
        self.changed.fire()

    async def _stop_live(self, live: LiveJob, reason: StopReason) -> None:
        if not live.dispatched and live.stop_reason is None:
            self._cancel(live, reason)
            try:
                await self._settle(
                    live, JobStatus.STOPPED, reason=reason.value, finished_at=utc_now()
                )
            finally:
                self._forget(live)
            return
        self._cancel(live, reason)
        await self._settled_or_refused(live)

    async def _settled_or_refused(self, live: LiveJob) -> None:
        """Until the job's end is recorded, or its process ended and the store refused it
        (the reconciler records it later: nobody should wait for a disk to be freed)."""
        while not live.done.is_set() and live.id not in self._unrecorded:
            await live.changed.wait_past(live.changed.version)

    def _cancel(self, live: LiveJob, reason: StopReason) -> None:
        if live.stop_reason is None:
            live.stop_reason = reason
        live.scope.cancel()

    async def _dispatch(self) -> None:
        """Hand queued jobs to free slots, in order, the moment a slot frees."""
        with self._dispatch_scope:
            async with trio.open_nursery() as waiting:  # jobs waiting for their endpoint
                await self._dispatch_through(
                    EndpointGate(  # endpoint_wait.py: pre-flight before a slot
                        self.settings,
                        waiting,
                        self._owns,
                        self._fail_queued,
                        self._enqueue_again,
                        self._note_reason,
                    )
                )

    async def _dispatch_through(self, gate: EndpointGate) -> None:
        """Each queued job, in order, once the gate lets it through, to a free slot."""
        assert self._nursery is not None
        async for job_id in self._receive:
            live = self._live.get(job_id)
            if live is None or live.scope.cancel_called or not await gate.ready(live):
                continue
            wanted = self.slots.gpus_for(live.record.request.get("num_gpus"))
            gpus = await self.slots.acquire(job_id, wanted)
            if live.scope.cancel_called or job_id not in self._live:
                self.slots.release(job_id)
                continue
            live.dispatched = True
            live.slot_granted_at = trio.current_time()
            self._nursery.start_soon(self._run_job, live, gpus)

    def _owns(self, live: LiveJob) -> bool:
        """Still queued, not stopped, not handed on: the dispatcher's to settle."""
        return self._live.get(live.id) is live and not (live.scope.cancel_called or live.dispatched)

    async def _fail_queued(self, live: LiveJob, reason: str) -> None:
        live.dispatched = True  # from now on only this settles it (a stop waits for it)
        with trio.CancelScope(shield=True):
            try:
                await self._settle(live, JobStatus.FAILED, reason=reason, finished_at=utc_now())
            except Exception:
                log.exception("job %s: could not record its end", live.id)
            self._forget(live)

    def _enqueue_again(self, live: LiveJob) -> None:
        self._send.send_nowait(live.id)

    async def _note_reason(self, live: LiveJob, reason: str) -> None:
        try:
            live.record = await self.store.update(live.id, reason=reason)
        except STORE_FAULTS as error:
            log.warning("job %s: could not store why it waits: %s", live.id, error)
        live.changed.fire()
        self.changed.fire()

    async def _run_job(self, live: LiveJob, gpus: tuple[str, ...]) -> None:
        """One job from Running to its end; nothing it does may escape to the nursery."""
        try:
            status, fields = await self._execute(live, gpus)
        except _StartRefused as refused:
            log.error(
                "job %s: the store refused its start (%s); it keeps its place", live.id, refused
            )
            if live.stop_reason is None:
                self._hold(live)
                return
            status, fields = JobStatus.STOPPED, {"reason": live.stop_reason.value}
        except Exception as error:  # a bug must cost one job, never the supervisor
            log.exception("job %s: internal error", live.id)
            status = JobStatus.FAILED
            fields = {"reason": f"internal error: {error!r}", "finished_at": utc_now()}
        finally:
            self.slots.release(live.id)
        with trio.CancelScope(shield=True):
            try:
                await self._settle(live, status, **fields)
            except STORE_FAULTS:
                log.exception("job %s: the store refused its end; retrying", live.id)
                self._unrecorded[live.id] = (live, status, fields)  # stays live meanwhile
                self._store_fault.set()
                live.changed.fire()
                return
            except Exception:
                log.exception("job %s: could not record its end", live.id)
            await self._prune_logged()
            self._forget(live)  # waiters wake once retention has run too

    def _hold(self, live: LiveJob) -> None:
        """A job whose start the store refused goes back to waiting (still Queued, in the
        store and in the counters) until the store takes writes; then it is queued again."""
        live.dispatched = False
        live.scope = trio.CancelScope()
        self._held.append(live)
        self._store_fault.set()
        live.changed.fire()
        self.changed.fire()

    async def _prune_logged(self) -> None:
        try:
            await self._prune()
        except Exception:
            log.exception("retention: could not prune finished jobs")

    async def _reconcile(self) -> None:
        """Record the ends the store refused, once it takes writes again (retrying with
        backoff); then make sure no record says Running without a live job."""
        with self._reconcile_scope:
            while True:
                await self._store_fault.wait()
                delay_s = RETRY_FIRST_S
                while not await self._store_recovered():
                    await trio.sleep(delay_s)
                    delay_s = min(delay_s * 2, RETRY_MAX_S)
                self._store_fault = trio.Event()
                await self._sweep_orphans()

    async def _store_recovered(self) -> bool:
        """Once the store takes writes: record refused ends, undo refused submissions and
        queue held jobs again. False while it still refuses."""
        if not await self.store.writable() or not await self._record_unrecorded():
            return False
        while self._to_discard:
            try:
                await self._remove([self._to_discard[0]])
            except STORE_FAULTS:
                return False
            self._to_discard.pop(0)
        held, self._held = self._held, []
        for live in held:
            if self._live.get(live.id) is live and not live.scope.cancel_called:
                self._send.send_nowait(live.id)
        return True

    async def _record_unrecorded(self) -> bool:
        """Try each refused end again; False while the store still refuses."""
        for job_id, (live, status, fields) in list(self._unrecorded.items()):
            try:
                await self._settle(live, status, **fields)
                log.info("job %s: its end is recorded now", job_id)
            except STORE_FAULTS:
                return False
            except Exception:  # deleted meanwhile, say: nothing left to record it on
                log.exception("job %s: could not record its end", job_id)
            del self._unrecorded[job_id]
            await self._prune_logged()
            self._forget(live)
        return True

    async def _sweep_orphans(self) -> None:
        """Running records with no live job (their process is gone): settle them as a
        restart would. A store fault on the way starts another round."""
        try:
            for record in await self.store.select([JobStatus.RUNNING, JobStatus.QUEUED]):
                undone = any(r.id == record.id for r in self._to_discard)
                if record.id in self._live or record.id in self._creating or undone:
                    continue
                if record.status is JobStatus.QUEUED:
                    self._enqueue(record)  # a Queued record always has its queue place
                    continue
                reason = "interrupted: its process ended while the store took no writes"
                settled = await self._finish_interrupted(record, reason)
                if settled.status is JobStatus.QUEUED:
                    self._enqueue(settled)
        except STORE_FAULTS:
            log.exception("the store refused a write while reconciling; retrying")
            self._store_fault.set()

    async def _execute(
        self, live: LiveJob, gpus: tuple[str, ...]
    ) -> tuple[JobStatus, dict[str, Any]]:
        returncode: int | None = None
        with live.scope:
            try:
                await trio.to_thread.run_sync(_prepare_dirs, live.record)
                previous_reason = live.record.reason
                if not live.reattach:
                    await self._mark_running(live, gpus)
            except STORE_FAULTS as error:
                raise _StartRefused(error) from error
            if not live.reattach:
                await trio.to_thread.run_sync(_mark_attempt, live.record, previous_reason)
            try:
                env = self.job_environment(live.record.env, gpus)
                returncode = await self._run_with_logs(live, env)
            except process.SpawnError as error:
                return JobStatus.FAILED, {
                    "reason": f"could not start: {error}",
                    "finished_at": utc_now(),
                }
        return await self._outcome(live, returncode)

    async def _mark_running(self, live: LiveJob, gpus: tuple[str, ...]) -> None:
        live.record = await self.store.transition(
            live.id,
            JobStatus.QUEUED,
            JobStatus.RUNNING,
            started_at=utc_now(),
            finished_at=None,
            exit_code=None,
            reason=None,  # a requeue's reason belongs to the attempt before (and to its log)
            attempts=live.record.attempts + 1,
            gpus=list(gpus),
        )
        live.changed.fire()
        self.changed.fire()
        self.metrics.queue_wait.observe(
            _seconds_between(live.record.queued_at, live.record.started_at)
        )

    async def _run_with_logs(self, live: LiveJob, env: dict[str, str]) -> int:
        if live.reattach:  # progress so far is in the log the previous server wrote
            segments = await trio.to_thread.run_sync(
                read_segments, live.record.stderr_path, REPLAY_MAX_BYTES
            )
            for segment in segments:
                live.progress.feed(segment)
        stdout = LogPump(live.record.stdout_path, live.changed)
        stderr = LogPump(live.record.stderr_path, live.changed, live.progress.feed)
        await stdout.open()
        try:
            await stderr.open()
            try:
                return await self._run_process(live, env, stdout, stderr)
            finally:
                await stderr.aclose()
        finally:
            await stdout.aclose()

    def job_environment(
        self, env_vars: Mapping[str, str], gpus: tuple[str, ...] = ()
    ) -> dict[str, str]:
        """The job's own variables; the runner adds what its host needs (PATH, HOME, ...).

        Jobs write no bytecode: they read the environment's own, which the server compiles
        (``bytecode.py``), and nothing a job compiles lands where another job imports it."""
        env = {"PYTHONDONTWRITEBYTECODE": "1", **self.walls.environment()}
        env.update(env_vars)
        env.update(self.policy.job_environment())
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        return env

    async def _run_process(
        self, live: LiveJob, env: dict[str, str], stdout: LogPump, stderr: LogPump
    ) -> int:
        """The job's exit code (cancellation propagates once the runner stopped it)."""
        result: list[int] = []
        with _unwrap_spawn_error():
            await self._supervise_child(live, env, stdout, stderr, result)
        return result[0]

    async def _supervise_child(
        self,
        live: LiveJob,
        env: dict[str, str],
        stdout: LogPump,
        stderr: LogPump,
        result: list[int],
    ) -> None:
        async with trio.open_nursery() as nursery:

            async def child(task_status: trio.TaskStatus[Started]) -> None:
                if live.reattach:
                    code = await self.runner.reattach(
                        live.record, stdout, stderr, task_status=task_status
                    )
                else:
                    code = await self.runner.run(
                        live.record, env, stdout, stderr, task_status=task_status
                    )
                result.append(code)
                nursery.cancel_scope.cancel()  # the job is over: stop the flusher

            started: Started = await nursery.start(child)
            self.metrics.dispatch_latency.observe(trio.current_time() - live.slot_granted_at)
            live.record = await self.store.update(
                live.id,
                pid=started.pid,
                pid_start_ticks=started.start_ticks,
                external_id=started.external_id,
            )
            live.changed.fire()  # the record now names its process
            self.changed.fire()
            nursery.start_soon(self._flush_progress, live)

    async def _flush_progress(self, live: LiveJob) -> None:
        """Write live progress to the store, at most once per progress_flush_s."""
        seen = live.changed.version
        stored = live.progress.snapshot()
        while True:
            seen = await live.changed.wait_past(seen)
            snapshot = live.progress.snapshot()
            if snapshot != stored:
                try:
                    await self.store.set_progress(live.id, snapshot.to_dict(), snapshot.percent)
                except STORE_FAULTS as error:  # progress is best effort: the job runs on
                    log.warning("job %s: could not store its progress: %s", live.id, error)
                else:
                    stored = snapshot
                    self.changed.fire()
                await trio.sleep(self.settings.progress_flush_s)

    async def _outcome(
        self, live: LiveJob, returncode: int | None
    ) -> tuple[JobStatus, dict[str, Any]]:
        fields: dict[str, Any] = {"exit_code": returncode, "finished_at": utc_now()}
        if live.stop_reason is StopReason.SHUTDOWN:
            # Detached: a Running record stays Running, so the next start re-attaches.
            status = live.record.status if self._detached else JobStatus.QUEUED
            return status, {"reason": live.stop_reason.value}
        if live.stop_reason is not None:
            return JobStatus.STOPPED, {**fields, "reason": live.stop_reason.value}
        if returncode is None:
            return JobStatus.FAILED, {**fields, "reason": "the job ended before it started"}
        if returncode == 0:
            live.progress.complete()
            return JobStatus.COMPLETED, fields
        return JobStatus.FAILED, {**fields, "reason": await self._failure_reason(live, returncode)}

    async def _failure_reason(self, live: LiveJob, returncode: int) -> str:
        if returncode < 0:
            name = (
                signal.Signals(-returncode).name if -returncode in signal.valid_signals() else "?"
            )
            return f"lm-eval was killed by signal {name} ({returncode})"
        # Stored masked: the summary masks a reason with the request's secrets only.
        lines = await self.log_tail(live.record, "stderr", await self.output_secrets(live.record))
        cause = next((ln.strip() for ln in reversed(lines) if _looks_like_error(ln)), None)
        base = f"lm-eval exited with code {returncode}"
        return f"{base}: {cause}" if cause else base

    async def _settle(self, live: LiveJob, status: JobStatus, **fields: Any) -> None:
        """Record the job's new status (its live state is dropped by the caller)."""
        snapshot = live.progress.snapshot()
        if status is not JobStatus.QUEUED:
            fields.setdefault("progress", snapshot.to_dict())
            fields.setdefault("progress_pct", snapshot.percent)
        old = live.record.status
        if status is old:
            pass  # shut down before it started (stays queued), or detached (stays running)
        elif status is JobStatus.QUEUED:
            live.record = await self._finish_interrupted(live.record, str(fields.get("reason")))
        else:
            live.record = await self.store.transition(live.id, old, status, **fields)
        _log_transition(live.record, old)
        if live.record.status.is_terminal and live.record.started_at:
            self.metrics.job_duration.labels(live.record.status.value).observe(
                _seconds_between(live.record.started_at, live.record.finished_at)
            )

    def _forget(self, live: LiveJob) -> None:
        self._live.pop(live.id, None)
        live.changed.fire()
        live.done.set()
        self.changed.fire()

    async def _remove(self, records: Sequence[JobRecord]) -> None:
        for record in records:
            await trio.to_thread.run_sync(shutil.rmtree, record.job_dir, True)
        await self.store.delete([r.id for r in records])
        self.changed.fire()

    async def _prune(self) -> None:
        """Apply the retention settings to finished jobs."""
        max_age_s, max_jobs = self.settings.retention_max_age_s, self.settings.retention_max_jobs
        if max_age_s is None and max_jobs is None:
            return
        finished = await self.store.select(TERMINAL)
        doomed = _expired(finished, max_age_s, max_jobs)
        if doomed:
            log.info("retention: deleting %d finished jobs", len(doomed))
            await self._remove(doomed)


class _StartRefused(Exception):
    """The store refused the write that starts a job (it has not started)."""


def warm_pool(settings: Settings, launcher: command.Launcher) -> WarmPool | None:
    """Warm runners for local fast-start jobs, unless the settings turn them off."""
    if settings.backend != "local" or launcher.warm is None or settings.warm_runners == 0:
        return None
    return WarmPool(
        launcher.executable,
        launcher.warm,
        cwd=settings.data_dir,
        max_idle=settings.warm_runners,
        grace_s=settings.kill_grace_s,
    )


def default_runner(
    settings: Settings, warm: WarmPool | None = None, walls: JobWalls | None = None
) -> Runner:
    """The runner the settings select (local processes unless configured otherwise)."""
    if settings.backend == "ray":
        from lmeval_trio.ray_runner import RayRunner  # only servers that use Ray load it

        return RayRunner(settings)
    return LocalRunner(settings.kill_grace_s, warm, walls)


def _as_request(body: Mapping[str, Any] | BaseModel) -> BaseModel:
    model = request_model()
    if isinstance(body, model):
        return body
    data = body.model_dump(exclude_unset=True) if isinstance(body, BaseModel) else dict(body)
    return model.model_validate(data)


@contextmanager
def _unwrap_spawn_error() -> Iterator[None]:
    """A spawn failure arrives wrapped in our nursery's group; callers want it bare."""
    try:
        yield
    except BaseExceptionGroup as group:
        spawn, rest = group.split(process.SpawnError)
        if spawn is None or rest is not None:
            raise
        leaf: BaseException = spawn
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


def _write_config(job_dir: Path, content: bytes) -> None:
    """The job reads the --config bytes the policy judged, not the file as it is later."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / CONFIG_COPY).write_bytes(content)


def _make_private(data_dir: Path) -> None:
    """The data dir holds every job's request (env_vars, credentials) and files: only the
    server's user may enter it."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)


def _newest_job_folder(data_dir: Path) -> int | None:
    """The highest id among the job folders (names of ASCII digits) under data_dir/jobs."""
    jobs = data_dir / "jobs"
    if not jobs.is_dir():
        return None
    ids = [int(p.name) for p in jobs.iterdir() if p.name.isascii() and p.name.isdigit()]
    return max(ids, default=None)


def _prepare_dirs(record: JobRecord) -> None:
    record.job_dir.mkdir(parents=True, exist_ok=True)
    (record.job_dir / "cache").mkdir(exist_ok=True)


def _log_transition(record: JobRecord, old: JobStatus) -> None:
    """The operator's log: every status change, with its reason (a failure's cause)."""
    new = record.status
    level = logging.WARNING if new is JobStatus.FAILED else logging.INFO
    why = f": {record.reason}" if record.reason else ""
    log.log(
        level,
        "job %s: %s -> %s%s",
        record.id,
        old.value,
        new.value,
        why,
        extra={"job_id": record.id},
    )


def _mark_attempt(record: JobRecord, previous_reason: str | None) -> None:
    """A requeued job's logs go on in the same files: its new attempt starts on a line of
    its own (the last one may be a bar cut mid-redraw) under a marker naming the attempt."""
    if record.attempts <= 1:
        return
    why = f" after: {previous_reason}" if previous_reason else ""
    marker = f"[lmeval-trio] attempt {record.attempts} started at {record.started_at}{why}\n"
    for path in (record.stdout_path, record.stderr_path):
        try:  # never through a link the job planted in its folder (see logs.py)
            fd = open_regular_file(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        except OSError as error:
            log.warning("job %s: no attempt marker in %s: %s", record.id, path.name, error)
            continue
        with open(fd, "r+b", buffering=0) as file:
            size = os.fstat(fd).st_size
            glued = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            file.write((("\n" if glued else "") + marker).encode())


def _copy_cache(old_dir: Path, new_dir: Path) -> None:
    """Copy the earlier job's response cache: regular files and folders only, never
    following a symlink (the earlier job could have planted one to read someone else's)."""
    _copy_tree_nofollow(old_dir / "cache", new_dir / "cache")


def _copy_tree_nofollow(source: Path, target: Path) -> None:
    try:
        info = os.lstat(source)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        return
    target.mkdir(parents=True, exist_ok=True)
    with os.scandir(source) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _copy_tree_nofollow(Path(entry.path), target / entry.name)
            elif entry.is_file(follow_symlinks=False):
                _copy_file_nofollow(Path(entry.path), target / entry.name)


def _copy_file_nofollow(source: Path, target: Path) -> None:
    """Open with O_NOFOLLOW, so a file swapped for a link meanwhile is skipped, not read."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    with open(fd, "rb") as reader, open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer)


def _seconds_between(start: str | None, end: str | None) -> float:
    if not start or not end:
        return 0.0
    delta = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return max(0.0, delta.total_seconds())


def _looks_like_error(line: str) -> bool:
    head = line.strip().split(":", 1)[0]
    return head.endswith(("Error", "Exception", "Interrupt")) and " " not in head


def _expired(
    finished: list[JobRecord], max_age_s: float | None, max_jobs: int | None
) -> list[JobRecord]:
    doomed: dict[int, JobRecord] = {}
    if max_age_s is not None:
        now = datetime.now(UTC)
        for record in finished:
            ended = datetime.fromisoformat(record.finished_at or record.created_at)
            if (now - ended).total_seconds() > max_age_s:
                doomed[record.id] = record
    if max_jobs is not None and len(finished) > max_jobs:
        for record in finished[: len(finished) - max_jobs]:
            doomed[record.id] = record
    return list(doomed.values())
