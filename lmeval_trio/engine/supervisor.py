"""The supervisor: the engine's public face, owning every job's lifetime through its parts.

It keeps the public operations (submit, stop, delete, resume, get/list, wait, statistics,
shutdown) and the lifetime of the whole (start-up, fork servers, shutdown), and delegates:
admission (checks, done once, and storing), dispatch (queue, slots, GPUs), execution (one
job from Running to its end), recovery (start-up, store faults) and retention. Sweeps
(``self.sweeps``, engine/sweeps.py) are many jobs submitted and followed as one. Usable
without HTTP::

    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit({"model": "dummy", "tasks": "my_task"})
        final = await supervisor.wait(record.id)

Longer than 300 lines: it also holds the error classes its callers catch, and each public
operation is a few lines handing work to a part; the stop and delete coordination they
share (and tests observe through ``_cancel``) stays beside them.
"""

from __future__ import annotations

import contextlib
import enum
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import trio
from pydantic import BaseModel

from lmeval_trio.config import Settings
from lmeval_trio.engine import admission_checks
from lmeval_trio.engine.admission import Admission
from lmeval_trio.engine.catalog import CatalogUnavailable
from lmeval_trio.engine.catalog_builds import Catalogs
from lmeval_trio.engine.change_signal import Pulse
from lmeval_trio.engine.comparisons import Comparisons
from lmeval_trio.engine.deliveries import DeliveryPlanner
from lmeval_trio.engine.dispatch import Dispatcher
from lmeval_trio.engine.endpoint_wait import EndpointGate
from lmeval_trio.engine.execution import Execution
from lmeval_trio.engine.listing import JobListing
from lmeval_trio.engine.live import LiveJob, LiveJobs, StopReason, StoreFaults, log
from lmeval_trio.engine.metrics import Metrics
from lmeval_trio.engine.outbox import Outbox
from lmeval_trio.engine.recovery import Recovery
from lmeval_trio.engine.retention import Retention
from lmeval_trio.engine.samples import SamplesExplorer, SamplesQuery
from lmeval_trio.engine.slots import Slots
from lmeval_trio.engine.sweeps import Sweeps
from lmeval_trio.errors import JobNotFound, NotAccepting, NotResumable, QueueFull
from lmeval_trio.jobs.delivery import Delivery
from lmeval_trio.jobs.progress import ProgressSnapshot
from lmeval_trio.jobs.record import JobRecord, utc_now
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.policy.rules import Admitted, Policy
from lmeval_trio.runners import bytecode
from lmeval_trio.runners import job_command as command
from lmeval_trio.runners.base import Runner
from lmeval_trio.runners.environment import job_environment, local_environment
from lmeval_trio.runners.fork_server import ForkServerInfo, ForkServers
from lmeval_trio.runners.job_walls import JobWalls
from lmeval_trio.runners.local import LocalRunner
from lmeval_trio.store.sqlite import JobStore


class StopOutcome(enum.Enum):
    STOPPED = "stopped"
    DEQUEUED = "removed from the queue"
    ALREADY_FINISHED = "already finished"


@dataclass(frozen=True)
class SupervisorStatistics:
    """A snapshot for health checks and metrics (trio-style ``statistics()``)."""

    alive: bool
    queued: int
    running: int
    slots_total: int
    slots_free: int
    fork_servers: tuple[ForkServerInfo, ...] = ()  # warm runners: pid, environment, jobs, age
    warm_starts: int = 0  # jobs forked by a fork server
    warm_misses: int = 0  # fast-start jobs that ran cold (no fork server matched or could serve)
    jobs_confined: bool = False  # local jobs run behind a Landlock wall (README "Security")
    job_confinement: str = "off"  # the setting: auto, landlock or off
    caches_ready: bool = False  # a job now starts as fast as it will (``_report_ready``)


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
        self.forks = None if runner is not None else fork_servers(settings, self.launcher)
        fastrun = self.launcher.executable if self.launcher.fork_server else None
        self.walls = JobWalls(settings, fastrun)
        self.runner = runner or default_runner(settings, self.forks, self.walls)
        self.store = JobStore(settings.data_dir / "jobs.db")
        self.store.planner = DeliveryPlanner(settings)  # what a status change owes
        self.outbox = Outbox(settings, self.store, self.output_secrets)  # delivers it
        self.store.on_owed = self.outbox.poke
        self.listing = JobListing(self)  # the read model the HTTP edge lists jobs from
        self.policy = Policy(settings, self.launcher.executable)
        self.catalogs = Catalogs(  # the task catalog (GET /tasks, the checks at submission)
            settings, lambda: local_environment(settings, self.job_environment({})), self.walls
        )
        self.slots = Slots(settings)
        self.metrics = Metrics()
        self.live = LiveJobs()
        self.changed: Pulse = self.live.changed  # any job changed: for listings of all jobs
        self.faults = StoreFaults()
        self.creating: dict[int, trio.Event] = {}  # stored, not yet queued (resume copies)
        self.submitting: set[trio.Event] = set()  # submissions storing or queuing a job
        self._wire_parts()
        self.sweeps = Sweeps(self)  # sweep operations (engine/sweeps.py)
        self.comparisons = Comparisons(self)  # comparisons of jobs (engine/comparisons.py)
        self.samples = SamplesExplorer(settings.effective_cache_dir / "samples-index")
        self._nursery: trio.Nursery | None = None
        self._forks_scope = trio.CancelScope()
        self._compile_scope = trio.CancelScope()
        self.caches_prepared = trio.Event()  # bytecode compiled, task index built (or failed)
        self.ready_for_jobs = trio.Event()  # … and the fork server preloaded, the catalog loaded
        self._accepting = False
        self._alive = False
        self._shutdown_requested = trio.Event()
        self.closed = trio.Event()  # set once every job process is gone and the store closed

    def _wire_parts(self) -> None:
        """The parts the supervisor delegates to, sharing its live jobs and store faults."""
        settings, store = self.settings, self.store
        self.admission = Admission(
            settings, store, self.policy, self.slots, self.launcher, self.runner.name
        )
        self.dispatcher = Dispatcher(self.live, self.slots)
        self.retention = Retention(settings, store, self.changed)
        self.execution = Execution(
            settings,
            store,
            self.runner,
            live=self.live,
            slots=self.slots,
            faults=self.faults,
            retention=self.retention,
            metrics=self.metrics,
            environment=self.job_environment,
            dispatcher=self.dispatcher,
        )
        self.recovery = Recovery(
            settings,
            store,
            self.runner,
            live=self.live,
            faults=self.faults,
            dispatcher=self.dispatcher,
            execution=self.execution,
            retention=self.retention,
            creating=self.creating,
        )

    # -- lifetime -------------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        await self.walls.check()  # raises ConfinementUnavailable if a required wall cannot be
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        try:
            await self.recovery.start()
            await self.sweeps.load_limits()
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
        self.catalogs.attach(self._nursery, preload_after=self.caches_prepared)
        await self._nursery.start(self.outbox.run)
        if self.forks is not None:
            if self.walls.confined:
                self.forks.use_safe_path()
            self.forks.prime(local_environment(self.settings, self.job_environment({})))
            await self._nursery.start(self._run_fork_servers, self.forks)
        if isinstance(self.runner, LocalRunner):
            self._nursery.start_soon(self._compile_bytecode)
        self._nursery.start_soon(self.dispatcher.run, self._nursery, self.execution.run, self._gate)
        self._nursery.start_soon(self.recovery.reconcile)
        self._accepting = self._alive = True
        return self

    async def _compile_bytecode(self) -> None:
        """Compiled bytecode for jobs (see ``bytecode.py``); a failure costs speed only.
        After a change of the environment the task index is rebuilt too, by a fork server
        run only to preload: confined jobs cannot write it, and fork servers may be off."""
        with self._compile_scope:
            try:
                changed = await bytecode.compile_environment(self.settings)
                preload = self.launcher.fork_server
                due = changed and preload is not None and self._accepting  # not when stopping
                if due and not await self._fork_server_preloaded():
                    assert preload is not None
                    await self._build_task_index(preload)
            except OSError as error:
                log.warning("could not prepare the caches for jobs: %s", error)
            self.caches_prepared.set()
            await self._report_ready()
        self.caches_prepared.set()  # also when stopped early

    async def _fork_server_preloaded(self) -> bool:
        """The default fork server builds and caches the task index as it preloads: waiting
        for it beats building the same index beside it (tens of CPU-seconds)."""
        return self.forks is not None and await self.forks.default_ready()

    async def _report_ready(self) -> None:
        """Say once when a job starts as fast as it ever will: the default fork server has
        preloaded, and the built-in task catalog (the check at submission) is loaded."""
        forked = await self._fork_server_preloaded()
        if self.settings.check_tasks:
            with contextlib.suppress(CatalogUnavailable):  # logged by the catalog
                await self.catalogs.builtin()
        self.ready_for_jobs.set()
        log.info(
            "ready for jobs: bytecode compiled, %s",
            "fork server preloaded" if forked else "jobs start cold",
        )

    async def _build_task_index(self, preload_argv: Sequence[str]) -> None:
        log.info("building the task index for jobs (no fork server preloaded it)")
        done = await trio.run_process(
            list(preload_argv),
            env=local_environment(self.settings, self.job_environment({})),
            cwd=self.settings.data_dir,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if done.returncode != 0:
            log.warning("could not build the task index (exit code %s)", done.returncode)

    async def _run_fork_servers(
        self, forks: ForkServers, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with self._forks_scope:
            await forks.run(task_status=task_status)

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
        log.info("shutdown: done; no job or fork server process left")
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
        running = self.live.running()
        return SupervisorStatistics(
            alive=self._alive,
            queued=len(self.live.jobs) - running,
            running=running,
            slots_total=self.slots.total,
            slots_free=self.slots.free,
            **self._warm_statistics(),
            jobs_confined=self.walls.confined and isinstance(self.runner, LocalRunner),
            job_confinement=self.settings.job_confinement,
            caches_ready=self.ready_for_jobs.is_set(),
        )

    def _warm_statistics(self) -> dict[str, Any]:
        if self.forks is None:
            return {}
        stats = self.forks.statistics()
        return {
            "fork_servers": stats.servers,
            "warm_starts": stats.forked,
            "warm_misses": stats.cold,
        }

    async def _stop_everything(self) -> None:
        """Shutdown: stop dispatching, interrupt running jobs (they go back to the queue),
        or, with a runner that detaches, leave them running for the next start to follow."""
        self._accepting = False
        self.dispatcher.stop()
        self._forks_scope.cancel()
        self._compile_scope.cancel()
        self.catalogs.close()  # a task catalog build in progress (catalog_builds.py)
        self.execution.detached = self.runner.detach()
        started = [live for live in self.live.jobs.values() if live.dispatched]
        _log_shutdown(started, len(self.live.jobs) - len(started), self.execution.detached)
        for live in started:
            self._cancel(live, StopReason.SHUTDOWN)
        with trio.move_on_after(self.settings.shutdown_timeout_s):
            for live in started:
                await self._settled_or_refused(live)
        await self.recovery.keep_unrecorded()
        self.outbox.scope.cancel()  # an attempt cut short is made again after the restart

    def _gate(self, nursery: trio.Nursery, cleared: Callable[[], None]) -> EndpointGate:
        """The endpoint pre-flight before a slot (endpoint_wait.py), its checks in ``nursery``."""
        settle = self.execution.settle
        return EndpointGate(self.settings, self.live, self.store, settle, nursery, cleared)

    # -- public operations ----------------------------------------------------------------

    async def submit(
        self,
        body: Mapping[str, Any] | BaseModel,
        *,
        resumed_from: JobRecord | None = None,
        in_sweep: tuple[int, str] | None = None,
    ) -> JobRecord:
        """Validate, run the admission checks (admission_checks), store and queue a job
        (``in_sweep``: as a sweep cell's, sweeps.py). Raises pydantic's ValidationError,
        PolicyViolation, RequestRejected, TaskRefused, QueueFull or NotAccepting."""
        self.check_accepting()
        request = self.admission.parse(body)
        self.admission.check_limits(request)
        await self.admission.check_notify(request)
        with self.queue_place():
            admitted = await admission_checks.admit(self, request, self.gates())
            record = await self._create_and_enqueue(request, admitted, resumed_from, in_sweep)
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
        self.check_accepting()
        request = self.admission.parse(body)
        self.admission.check_limits(request)
        await self.admission.check_notify(request)
        return await admission_checks.dry_run(self, request, self.gates())

    def gates(self) -> admission_checks.Gates:
        return admission_checks.Gates(
            self.admission.admit, self.admission.check_gpus, self.queue_place
        )

    @contextmanager
    def queue_place(self, count: int = 1) -> Iterator[None]:
        """``count`` places in the bounded queue, held until the submission is queued or
        refused (a sweep takes one per cell)."""
        if self.admission.queue_full(self.live.waiting(), count):
            limit = self.settings.max_queued_jobs
            if count == 1:
                raise QueueFull(f"the queue holds {limit} jobs already")
            raise QueueFull(f"{count} more jobs would not fit the queue bound of {limit}")
        with self.admission.queue_place(count):
            yield

    async def _create_and_enqueue(
        self,
        request: dict[str, Any],
        admitted: Admitted,
        resumed_from: JobRecord | None,
        in_sweep: tuple[int, str] | None = None,
    ) -> JobRecord:
        """Store the job and give it its queue place, or leave nothing behind.

        The store only persists; the job is queued after. While a resumed job's cache is
        copied the record exists but is not queued yet; a delete waits for that
        (``creating``), and a failure or cancellation on the way removes the record and
        folder again, so no Queued record is ever left without its place in the queue."""
        created = trio.Event()
        self.submitting.add(created)  # before the row can exist: deletes wait for us

        def claim(stored: JobRecord) -> None:  # as it is stored: a delete waits for us
            self.creating[stored.id] = created

        try:
            record = await self.admission.store_job(
                request, admitted, resumed_from, claim, in_sweep
            )
            try:
                await self.admission.prepare_folder(record, admitted, resumed_from)
                self.dispatcher.enqueue(record)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.discard(record)
                raise
            finally:
                del self.creating[record.id]
        finally:
            self.submitting.discard(created)
            created.set()
        return record

    async def discard(self, record: JobRecord) -> None:
        """Undo a half-done submission (its record, its folder), logging what could not be."""
        try:
            await self.retention.remove([record])
        except Exception:
            log.exception("job %s: could not undo a failed submission; retrying", record.id)
            self.faults.to_discard.append(record)
            self.faults.fault.set()

    async def get(self, job_id: int) -> JobRecord:
        live = self.live.jobs.get(job_id)
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
        active = self.live.jobs
        return [active[r.id].record if r.id in active else r for r in records]

    def progress(self, record: JobRecord) -> ProgressSnapshot:
        """Live progress for an active job, else the stored snapshot."""
        return ProgressSnapshot.from_dict(self.progress_dict(record))

    def progress_dict(self, record: JobRecord) -> dict[str, Any]:
        """The same as a dict; stored snapshots are served as stored (listing thousands of
        jobs must not re-validate each one)."""
        live = self.live.jobs.get(record.id)
        if live is not None:
            return live.progress.snapshot().to_dict()
        if record.progress is not None:
            return record.progress
        return ProgressSnapshot(percent=record.progress_pct).to_dict()

    def live_changes(self, job_id: int) -> Pulse | None:
        """The change signal of an active job (None once it has finished)."""
        live = self.live.jobs.get(job_id)
        return None if live is None else live.changed

    async def wait(self, job_id: int) -> JobRecord:
        """Wait until the job is finished (or leaves the queue for good) and return it."""
        live = self.live.jobs.get(job_id)
        if live is not None:
            await live.done.wait()
        return await self.get(job_id)

    async def stop(self, job_id: int) -> tuple[StopOutcome, JobRecord]:
        """Stop a job: remove it from the queue, or end its process tree."""
        live = self.live.jobs.get(job_id)
        if live is None:
            return StopOutcome.ALREADY_FINISHED, await self.get(job_id)
        outcome = (
            StopOutcome.DEQUEUED if live.record.status is JobStatus.QUEUED else StopOutcome.STOPPED
        )
        await self._stop_live(live, StopReason.STOP)
        # The record the job settled with, not a re-read: a shutdown racing this stop may
        # have closed the store in between (and get() would read the same record anyway).
        return outcome, live.record

    async def stop_all(self) -> list[int]:
        lives = list(self.live.jobs.values())
        async with trio.open_nursery() as nursery:
            for live in lives:
                nursery.start_soon(self._stop_live, live, StopReason.STOP)
        return [live.id for live in lives]

    async def delete(self, job_id: int) -> None:
        """Stop the job if it is active, then remove its record and files."""
        await self._wait_submissions()
        await self.wait_created(job_id)
        record = await self.get(job_id)
        await self.delete_records([record])

    async def delete_all(self) -> int:
        """Delete the jobs that exist now (a snapshot): jobs submitted while these stop
        (each may take its grace) are not touched."""
        boundary = await self.store.next_id()  # later submissions get later ids
        await self._wait_submissions()
        records = [r for r in await self.store.select() if r.id < boundary]
        await self.delete_records(records)
        return len(records)

    async def _wait_submissions(self) -> None:
        """Until the submissions under way now have queued their job (or undone it). A row
        is stored (in a worker thread) before its submission can claim it, so a delete
        that read it in between would race the submission's own folder and queue place."""
        for created in list(self.submitting):
            await created.wait()

    async def wait_created(self, job_id: int) -> None:
        """Until a submission that stored ``job_id`` has queued it (or undone it)."""
        created = self.creating.get(job_id)
        if created is not None:
            await created.wait()

    async def delete_records(self, records: Sequence[JobRecord]) -> None:
        """Stop those of ``records`` that are active, then remove them all."""
        lives = [self.live.jobs[r.id] for r in records if r.id in self.live.jobs]
        async with trio.open_nursery() as nursery:
            for live in lives:
                nursery.start_soon(self._stop_live, live, StopReason.DELETE)
        await self.retention.remove(records)

    async def resume(self, job_id: int) -> JobRecord:
        """Queue a new job with a Stopped/Failed job's request and a copy of its cache."""
        old = await self.get(job_id)
        if old.status not in (JobStatus.STOPPED, JobStatus.FAILED):
            raise NotResumable(
                f"job {job_id} is {old.status.value}; only Stopped or Failed jobs can be resumed"
            )
        return await self.submit(old.request, resumed_from=old)

    async def deliveries(self, job_id: int) -> list[Delivery]:
        """The job's webhook deliveries and exports, each with its attempts (JobNotFound)."""
        await self.get(job_id)
        return await self.store.job_deliveries(job_id)

    async def output_secrets(self, record: JobRecord) -> tuple[str, ...]:
        """Values to hide in what the job wrote (its request's and its config's secrets)."""
        return await self.execution.output_secrets(record)

    async def samples_page(self, job_id: int, query: SamplesQuery) -> dict[str, Any]:
        """A page of a finished job's logged samples (engine/samples.py), secrets masked."""
        record = await self.get(job_id)
        return await self.samples.page(record, query, await self.output_secrets(record))

    async def log_tail(
        self, record: JobRecord, stream: str, secrets: tuple[str, ...] = ()
    ) -> list[str]:
        """The newest lines of a log, ``secrets`` masked."""
        return await self.execution.log_tail(record, stream, secrets)

    def job_environment(
        self, env_vars: Mapping[str, str], gpus: tuple[str, ...] = ()
    ) -> dict[str, str]:
        """The variables the server sets for a job (``runners/environment.py``); the runner
        adds what the job inherits where it runs (PATH, HOME, ...)."""
        thread_free = self.walls.confined or self.forks is not None
        return job_environment(self.settings, env_vars, gpus, thread_free=thread_free)

    # -- stopping -------------------------------------------------------------------------

    def check_accepting(self) -> None:
        if not self._accepting:
            raise NotAccepting("the supervisor is not running")

    async def _stop_live(self, live: LiveJob, reason: StopReason) -> None:
        """A queued job is settled here; a dispatched one by its own task, once stopped."""
        if not live.dispatched and live.stop_reason is None:
            self._cancel(live, reason)
            try:
                await self.execution.settle(
                    live, JobStatus.STOPPED, reason=reason.value, finished_at=utc_now()
                )
            finally:
                self.live.forget(live)
            return
        self._cancel(live, reason)
        await self._settled_or_refused(live)

    async def _settled_or_refused(self, live: LiveJob) -> None:
        """Until the job's end is recorded, or its process ended and the store refused it
        (the reconciler records it later: nobody should wait for a disk to be freed)."""
        while not live.done.is_set() and live.id not in self.faults.unrecorded:
            await live.changed.wait_past(live.changed.version)

    def _cancel(self, live: LiveJob, reason: StopReason) -> None:
        if live.stop_reason is None:
            live.stop_reason = reason
        live.scope.cancel()


def _log_shutdown(started: list[LiveJob], waiting: int, detached: bool) -> None:
    ids = [live.id for live in started]
    if detached:
        log.info(
            "shutdown: detaching %d running jobs %s (followed again at the next start); "
            "%d stay queued",
            len(ids),
            ids,
            waiting,
        )
    else:
        log.info("shutdown: stopping %d running jobs %s; %d stay queued", len(ids), ids, waiting)


def fork_servers(settings: Settings, launcher: command.Launcher) -> ForkServers | None:
    """Fork servers for local fast-start jobs, unless the settings turn them off."""
    if settings.backend != "local" or launcher.fork_server is None or settings.fork_servers == 0:
        return None
    return ForkServers(
        launcher.executable,
        launcher.fork_server,
        cwd=settings.data_dir,
        max_servers=settings.fork_servers,
        grace_s=settings.kill_grace_s,
        preload_hf=settings.fork_preload_hf,
    )


def default_runner(
    settings: Settings, forks: ForkServers | None = None, walls: JobWalls | None = None
) -> Runner:
    """The runner the settings select (local processes unless configured otherwise)."""
    if settings.backend == "ray":
        from lmeval_trio.runners.ray import RayRunner  # only servers that use Ray load it

        return RayRunner(settings)
    return LocalRunner(settings, forks, walls)
