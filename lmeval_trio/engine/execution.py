"""Execution: one job from Running to its end, and the recording of that end.

Marks the job Running, runs its process through the runner with its logs pumped to files
(stderr also feeds the progress parser), flushes progress to the store while it runs, then
judges the outcome (and a failure's reason) and settles the record. Each job runs in its own
cancel scope: stop and delete cancel it, and the runner takes the whole process group down.
A store that refuses a write costs no job: its start is held, its end kept for later.

Longer than 300 lines: running a job and recording its end share the live job, the store
faults and the stop reason; split, one job's path would be read across two files.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import trio

from lmeval_trio.config import Settings
from lmeval_trio.engine import retries
from lmeval_trio.engine.dispatch import Dispatcher
from lmeval_trio.engine.live import (
    LiveJob,
    LiveJobs,
    NaturalEnd,
    StopReason,
    StoreFaults,
    log,
)
from lmeval_trio.engine.metrics import Metrics
from lmeval_trio.engine.retention import Retention
from lmeval_trio.engine.slots import Slots
from lmeval_trio.jobs.progress import ProgressTracker
from lmeval_trio.jobs.record import JobRecord, utc_now
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.outputs.logs import (
    REPLAY_MAX_BYTES,
    LogPump,
    open_regular_file,
    read_segments,
    read_tail_lines,
)
from lmeval_trio.policy.rules import CONFIG_COPY
from lmeval_trio.policy.secrets import output_secrets
from lmeval_trio.runners import process
from lmeval_trio.runners.base import Runner, Started
from lmeval_trio.store.sqlite import JobStore

#: What a store write raises when the database cannot be written (full disk, read-only, I/O).
STORE_FAULTS = (sqlite3.Error, OSError)
#: The job's environment for its GPUs (``Supervisor.job_environment``).
Environment = Callable[[Mapping[str, str], tuple[str, ...]], dict[str, str]]


class Execution:
    """Runs dispatched jobs to their end and records how they ended."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        runner: Runner,
        *,
        live: LiveJobs,
        slots: Slots,
        faults: StoreFaults,
        retention: Retention,
        metrics: Metrics,
        environment: Environment,
        dispatcher: Dispatcher,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner
        self.live = live
        self.slots = slots
        self.faults = faults
        self.retention = retention
        self.metrics = metrics
        self.environment = environment
        self.dispatcher = dispatcher  # queues a job again after a transient failure
        self.detached = False  # at shutdown the runner left its jobs running (Ray)

    async def run(self, live: LiveJob, gpus: tuple[str, ...]) -> None:
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
            if self._retries(live, status):
                await self._retry_later(live, fields)
                return
            if status.is_terminal:
                fields["attempt_history"] = retries.closed(
                    live.record,
                    status,
                    exit_code=fields.get("exit_code"),
                    reason=fields.get("reason"),
                )
            await self._record_end(live, status, fields)

    def _retries(self, live: LiveJob, status: JobStatus) -> bool:
        """A transient failure with attempts left, and nobody asked the job to stop."""
        if status is not JobStatus.FAILED or not live.transient or live.stop_reason is not None:
            return False
        return retries.failed_attempts(live.record) + 1 < retries.max_attempts(live.record)

    async def _retry_later(self, live: LiveJob, fields: dict[str, Any]) -> None:
        """Back to Queued (Running -> Queued: the table's one way back) with the failure
        recorded in the attempt's entry, then wait beside the queue, holding no slot, for
        the back-off; a stop that came meanwhile ends the job instead."""
        record, cause = live.record, str(fields.get("reason"))
        delay_s = retries.backoff_s(self.settings, retries.failed_attempts(record) + 1)
        retry_at = retries.stamp_after(delay_s)
        history = retries.closed(
            record, JobStatus.FAILED, exit_code=fields.get("exit_code"), reason=cause, retried=True
        )
        try:
            live.record = await self.store.transition(
                live.id,
                JobStatus.RUNNING,
                JobStatus.QUEUED,
                reason=retries.retry_reason(record, cause, retry_at),
                retry_at=retry_at,
                attempt_history=history,
                exit_code=None,
                finished_at=None,
                pid=None,
                pid_start_ticks=None,
            )
        except STORE_FAULTS:  # the retry cannot be recorded: the failure is, when it can be
            log.exception("job %s: the store refused its retry; it ends Failed", live.id)
            final = retries.closed(
                record, JobStatus.FAILED, exit_code=fields.get("exit_code"), reason=cause
            )
            await self._record_end(live, JobStatus.FAILED, {**fields, "attempt_history": final})
            return
        log_transition(live.record, JobStatus.RUNNING)
        self._reset_for_next_attempt(live)
        if live.stop_reason is not None:  # asked while the retry was being recorded
            await self._end_waiting(live)
            return
        self.dispatcher.requeue_after(live, delay_s)

    def _reset_for_next_attempt(self, live: LiveJob) -> None:
        """The live job as a fresh queued one: the next attempt starts afresh (even after a
        re-attached one), under a new cancel scope (a scope is entered once)."""
        live.dispatched = live.reattach = False
        live.scope = trio.CancelScope()
        live.progress = ProgressTracker()
        live.timed_out = live.transient = False
        live.natural_end = None  # the last attempt's exit is no end of the next one
        self.live.fire(live)

    async def _end_waiting(self, live: LiveJob) -> None:
        """A stop or delete that came while a retry was recorded: it ends the job now (a
        shutdown leaves it Queued, waiting in the store for the next start)."""
        reason = live.stop_reason
        try:
            if reason is not None and reason is not StopReason.SHUTDOWN:
                await self.settle(
                    live, JobStatus.STOPPED, reason=reason.value, finished_at=utc_now()
                )
        finally:
            self.live.forget(live)

    async def _record_end(self, live: LiveJob, status: JobStatus, fields: dict[str, Any]) -> None:
        """Settle the job, prune, then let it go; a store fault keeps it for the reconciler."""
        try:
            await self.settle(live, status, **fields)
        except STORE_FAULTS:
            log.exception("job %s: the store refused its end; retrying", live.id)
            self.faults.unrecorded[live.id] = (live, status, fields)  # stays live meanwhile
            self.faults.fault.set()
            live.changed.fire()
            return
        except Exception:
            log.exception("job %s: could not record its end", live.id)
        await self.retention.prune_logged()
        self.live.forget(live)  # waiters wake once retention has run too

    def _hold(self, live: LiveJob) -> None:
        """A job whose start the store refused goes back to waiting (still Queued, in the
        store and in the counters) until the store takes writes; then it is queued again."""
        live.dispatched = False
        live.scope = trio.CancelScope()
        self.faults.held.append(live)
        self.faults.fault.set()
        self.live.fire(live)

    async def _execute(
        self, live: LiveJob, gpus: tuple[str, ...]
    ) -> tuple[JobStatus, dict[str, Any]]:
        returncode: int | None = None
        with live.scope:
            try:
                await trio.to_thread.run_sync(_prepare_dirs, live.record)
                previous_reason = live.record.reason
                if not live.reattach:
                    offsets = await trio.to_thread.run_sync(retries.log_boundary, live.record)
                    await self._mark_running(live, gpus, offsets)
            except STORE_FAULTS as error:
                raise _StartRefused(error) from error
            if not live.reattach:
                await trio.to_thread.run_sync(_mark_attempt, live.record, previous_reason)
            try:
                env = self.environment(live.record.env, gpus)
                with trio.CancelScope(
                    deadline=retries.deadline(live.record, self.settings)
                ) as limit:
                    returncode = await self._run_with_logs(live, env)
                # A limit reached after the process ended on its own (while its logs
                # closed) is no timeout: the job's own exit stands.
                ended = live.natural_end
                in_time = ended if ended is not None and ended.before(limit.deadline) else None
                live.timed_out = limit.cancelled_caught and in_time is None
                if returncode is None and in_time is not None:
                    returncode = in_time.exit_code
            except process.SpawnError as error:
                return JobStatus.FAILED, {
                    "reason": f"could not start: {error}",
                    "finished_at": utc_now(),
                }
        return await self._outcome(live, returncode)

    async def _mark_running(
        self, live: LiveJob, gpus: tuple[str, ...], offsets: dict[str, int]
    ) -> None:
        started_at = utc_now()
        live.record = await self.store.transition(
            live.id,
            JobStatus.QUEUED,
            JobStatus.RUNNING,
            started_at=started_at,
            retry_at=None,
            attempt_history=retries.opened(live.record, started_at, offsets),
            finished_at=None,
            exit_code=None,
            reason=None,  # a requeue's reason belongs to the attempt before (and to its log)
            attempts=live.record.attempts + 1,
            gpus=list(gpus),
        )
        self.live.fire(live)
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
                if live.stop_reason is None:  # its own end: a later stop must not hide it
                    live.natural_end = NaturalEnd(code, trio.current_time())
                nursery.cancel_scope.cancel()  # the job is over: stop the flusher

            started: Started = await nursery.start(child)
            self.metrics.dispatch_latency.observe(trio.current_time() - live.slot_granted_at)
            live.record = await self.store.update(
                live.id,
                pid=started.pid,
                pid_start_ticks=started.start_ticks,
                external_id=started.external_id,
            )
            self.live.fire(live)  # the record now names its process
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
                    self.live.changed.fire()
                await trio.sleep(self.settings.progress_flush_s)

    async def _outcome(
        self, live: LiveJob, returncode: int | None
    ) -> tuple[JobStatus, dict[str, Any]]:
        if live.natural_end is not None:  # ended on its own before any stop or shutdown
            returncode, stop_reason = live.natural_end.exit_code, None
        else:
            stop_reason = live.stop_reason
        fields: dict[str, Any] = {"exit_code": returncode, "finished_at": utc_now()}
        if stop_reason is StopReason.SHUTDOWN:
            # Detached: a Running record stays Running, so the next start re-attaches.
            status = live.record.status if self.detached else JobStatus.QUEUED
            return status, {"reason": stop_reason.value}
        if stop_reason is not None:
            return JobStatus.STOPPED, {**fields, "reason": stop_reason.value}
        if live.timed_out:  # stopped by the time limit (TERM, grace, KILL): final
            return JobStatus.FAILED, {
                **fields,
                "reason": retries.timed_out_reason(live.record, self.settings),
            }
        if returncode is None:
            return JobStatus.FAILED, {**fields, "reason": "the job ended before it started"}
        if returncode == 0:
            live.progress.complete()
            return JobStatus.COMPLETED, fields
        return JobStatus.FAILED, {**fields, "reason": await self._failure_reason(live, returncode)}

    async def _failure_reason(self, live: LiveJob, returncode: int) -> str:
        """Why the attempt failed; also judges whether another attempt may succeed."""
        if returncode < 0:
            live.transient = retries.is_transient(returncode, None)
            name = (
                signal.Signals(-returncode).name if -returncode in signal.valid_signals() else "?"
            )
            return f"lm-eval was killed by signal {name} ({returncode})"
        # Stored masked: the summary masks a reason with the request's secrets only.
        lines = await self.log_tail(live.record, "stderr", await self.output_secrets(live.record))
        cause = next((ln.strip() for ln in reversed(lines) if _looks_like_error(ln)), None)
        live.transient = retries.is_transient(returncode, cause)
        base = f"lm-eval exited with code {returncode}"
        return f"{base}: {cause}" if cause else base

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

    async def settle(self, live: LiveJob, status: JobStatus, **fields: Any) -> None:
        """Record the job's new status (its live state is dropped by the caller)."""
        snapshot = live.progress.snapshot()
        if status is not JobStatus.QUEUED:
            fields.setdefault("progress", snapshot.to_dict())
            fields.setdefault("progress_pct", snapshot.percent)
            if live.record.retry_at is not None:  # stopped while waiting to retry
                fields.setdefault("retry_at", None)
        old = live.record.status
        if status is old:
            pass  # shut down before it started (stays queued), or detached (stays running)
        elif status is JobStatus.QUEUED:
            live.record = await self.finish_interrupted(live.record, str(fields.get("reason")))
        else:
            live.record = await self.store.transition(live.id, old, status, **fields)
        log_transition(live.record, old)
        if live.record.status.is_terminal and live.record.started_at:
            self.metrics.job_duration.labels(live.record.status.value).observe(
                _seconds_between(live.record.started_at, live.record.finished_at)
            )

    async def finish_interrupted(self, record: JobRecord, reason: str) -> JobRecord:
        """A Running job whose process is gone: queued again, or Failed if requeue is off."""
        if self.settings.requeue_interrupted:
            return await self.store.transition(
                record.id,
                JobStatus.RUNNING,
                JobStatus.QUEUED,
                reason=reason + "; requeued",
                pid=None,
                pid_start_ticks=None,
                attempt_history=retries.closed(
                    record, JobStatus.QUEUED, exit_code=None, reason=reason
                ),
            )
        return await self.store.transition(
            record.id,
            JobStatus.RUNNING,
            JobStatus.FAILED,
            reason=reason,
            finished_at=utc_now(),
            attempt_history=retries.closed(record, JobStatus.FAILED, exit_code=None, reason=reason),
        )


class _StartRefused(Exception):
    """The store refused the write that starts a job (it has not started)."""


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


def _prepare_dirs(record: JobRecord) -> None:
    record.job_dir.mkdir(parents=True, exist_ok=True)
    (record.job_dir / "cache").mkdir(exist_ok=True)


def log_transition(record: JobRecord, old: JobStatus) -> None:
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


def _seconds_between(start: str | None, end: str | None) -> float:
    if not start or not end:
        return 0.0
    delta = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return max(0.0, delta.total_seconds())


def _looks_like_error(line: str) -> bool:
    head = line.strip().split(":", 1)[0]
    return head.endswith(("Error", "Exception", "Interrupt")) and " " not in head
