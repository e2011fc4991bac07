"""Recovery: bringing the store and the live jobs back in line, at start-up and after the
store refused writes.

At start-up: refuse a database that does not know the data directory's job folders,
re-attach to or requeue what the previous run left Running, then queue the rest in order.
While serving: once a store that refused writes takes them again, record the ends it
refused, undo the submissions it left half-done, queue held jobs again, and settle any
Running record that has no live job.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from lmeval_trio.config import Settings
from lmeval_trio.engine.dispatch import Dispatcher
from lmeval_trio.engine.execution import STORE_FAULTS, Execution, log_transition
from lmeval_trio.engine.live import LiveJobs, StoreFaults, log
from lmeval_trio.engine.retention import Retention
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.runners.base import Runner
from lmeval_trio.store import unrecorded
from lmeval_trio.store.sqlite import JobStore, StoreError

RETRY_FIRST_S = 0.1  # first wait before writing again to a store that refused a write
RETRY_MAX_S = 30.0


class Recovery:
    """Start-up recovery, and the reconciler that finishes what a store fault interrupted."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        runner: Runner,
        *,
        live: LiveJobs,
        faults: StoreFaults,
        dispatcher: Dispatcher,
        execution: Execution,
        retention: Retention,
        creating: dict[int, trio.Event],
    ) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner
        self.live = live
        self.faults = faults
        self.dispatcher = dispatcher
        self.execution = execution
        self.retention = retention
        self.creating = creating  # stored, not yet queued: a submission still owns them
        self.scope = trio.CancelScope()

    # -- start-up -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the data directory and its store, then take over what the last run left."""
        await trio.to_thread.run_sync(_make_private, self.settings.data_dir)
        await self.store.open()
        await self._check_store_matches_folders()
        await self._recover()

    async def _recover(self) -> None:
        """Re-attach or requeue what the previous run left, then queue the rest in order."""
        attached: list[int] = []
        for record in await self.store.select([JobStatus.RUNNING]):
            if record.backend == self.runner.name and await self.runner.recover(record):
                log.info("job %s: re-attaching to %s", record.id, record.external_id)
                self.dispatcher.enqueue(record, reattach=True)
                attached.append(record.id)
                continue
            kept = await trio.to_thread.run_sync(unrecorded.load, record.job_dir)
            if kept is not None:  # it ended, but the store could not take that then
                await self.store.transition(record.id, record.status, kept[0], **kept[1])
                await trio.to_thread.run_sync(unrecorded.discard, record.job_dir)
                continue
            reason = f"interrupted: the server stopped while this job ran (pid {record.pid})"
            settled = await self.execution.finish_interrupted(record, reason)
            log_transition(settled, JobStatus.RUNNING)
        queued = await self.store.select([JobStatus.QUEUED], order="queue")
        for record in queued:
            self.dispatcher.enqueue(record)
        log.info(
            "start-up: data in %s; %d jobs re-attached %s, %d queued (interrupted ones first)",
            self.settings.data_dir,
            len(attached),
            attached,
            len(queued),
        )
        await self.retention.prune()

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

    # -- store faults ---------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Record the ends the store refused, once it takes writes again (retrying with
        backoff); then make sure no record says Running without a live job."""
        with self.scope:
            while True:
                await self.faults.fault.wait()
                delay_s = RETRY_FIRST_S
                while not await self._store_recovered():
                    await trio.sleep(delay_s)
                    delay_s = min(delay_s * 2, RETRY_MAX_S)
                self.faults.fault = trio.Event()
                await self._sweep_orphans()

    async def _store_recovered(self) -> bool:
        """Once the store takes writes: record refused ends, undo refused submissions and
        queue held jobs again. False while it still refuses."""
        if not await self.store.writable() or not await self._record_unrecorded():
            return False
        while self.faults.to_discard:
            try:
                await self.retention.remove([self.faults.to_discard[0]])
            except STORE_FAULTS:
                return False
            self.faults.to_discard.pop(0)
        held, self.faults.held = self.faults.held, []
        for live in held:
            if self.live.jobs.get(live.id) is live and not live.scope.cancel_called:
                self.dispatcher.requeue(live)
        return True

    async def _record_unrecorded(self) -> bool:
        """Try each refused end again; False while the store still refuses."""
        for job_id, (live, status, fields) in list(self.faults.unrecorded.items()):
            try:
                await self.execution.settle(live, status, **fields)
                log.info("job %s: its end is recorded now", job_id)
            except STORE_FAULTS:
                return False
            except Exception:  # deleted meanwhile, say: nothing left to record it on
                log.exception("job %s: could not record its end", job_id)
            del self.faults.unrecorded[job_id]
            await self.retention.prune_logged()
            self.live.forget(live)
        return True

    async def _sweep_orphans(self) -> None:
        """Running records with no live job (their process is gone): settle them as a
        restart would. A store fault on the way starts another round."""
        try:
            for record in await self.store.select([JobStatus.RUNNING, JobStatus.QUEUED]):
                undone = any(r.id == record.id for r in self.faults.to_discard)
                if record.id in self.live.jobs or record.id in self.creating or undone:
                    continue
                if record.status is JobStatus.QUEUED:
                    self.dispatcher.enqueue(record)  # a Queued record always has its place
                    continue
                reason = "interrupted: its process ended while the store took no writes"
                settled = await self.execution.finish_interrupted(record, reason)
                if settled.status is JobStatus.QUEUED:
                    self.dispatcher.enqueue(settled)
        except STORE_FAULTS:
            log.exception("the store refused a write while reconciling; retrying")
            self.faults.fault.set()

    async def keep_unrecorded(self) -> None:
        """Shutdown: ends the store never took are saved beside their jobs, for the next
        start to record (see ``unrecorded.py``)."""
        self.scope.cancel()
        for live, status, fields in self.faults.unrecorded.values():
            log.error("job %s: the store never took its end; kept for the next start", live.id)
            await trio.to_thread.run_sync(unrecorded.save, live.record.job_dir, status, fields)
            self.live.forget(live)


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
