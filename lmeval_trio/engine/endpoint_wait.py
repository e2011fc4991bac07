"""The endpoint gate before a slot: a queued API-model job's pre-flight (preflight.py), run
in the gate's own nursery so that a slow or down endpoint never holds up other jobs.

The dispatcher asks ``ready`` of each job it passes in queue order; the first time, an API
job's check starts and the job is passed over (it keeps its place) until the check clears
it. A job whose endpoint fails the check: with ``LMEVAL_PREFLIGHT=fail`` it ends Failed at
once with the reason; with ``wait`` (the default) it stays Queued, the reason on its record,
without a slot, and is checked again with back-off (1 s doubling to 30 s) until the endpoint
answers (then it is first again at its place in the queue) or ``LMEVAL_PREFLIGHT_WAIT_MAX_S``
has passed (then it fails with the reason). ``off`` skips the pre-flight.

The back-off sleeps wait for an outside server that sends no signal when it comes up; a stop
or delete ends them at once (they also wait on the job's ``done``), and its settling is left
to whoever stopped it. At most ``MAX_CHECKS`` checks run at a time.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from lmeval_trio.config import Settings
from lmeval_trio.engine import preflight
from lmeval_trio.engine.live import LiveJob, LiveJobs
from lmeval_trio.harness.effective import effective_run
from lmeval_trio.jobs.record import utc_now
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.store.sqlite import JobStore

log = logging.getLogger("lmeval_trio.supervisor")
#: What a store write raises when the database cannot be written (as execution.py).
STORE_FAULTS = (sqlite3.Error, OSError)
#: Records a queued job's end (``Execution.settle``).
Settle = Callable[..., Awaitable[None]]
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 30.0
#: Pre-flights in flight at once (each holds a connection for up to the timeout).
MAX_CHECKS = 16


@dataclass
class EndpointGate:
    """Lets a queued job through to a slot once its endpoint answers; fails it, or keeps
    it waiting, otherwise. Checks run in ``nursery``; ``cleared`` wakes the dispatcher."""

    settings: Settings
    jobs: LiveJobs
    store: JobStore
    settle: Settle
    nursery: trio.Nursery
    cleared: Callable[[], None]
    _checking: set[int] = field(default_factory=set)
    _passed: set[int] = field(default_factory=set)
    _limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(MAX_CHECKS))

    def ready(self, live: LiveJob) -> bool:
        """Whether the job may take a slot now; the first time, an API job's check starts
        (and ``cleared`` is called once it passes)."""
        if live.id in self._passed:
            return True
        if live.id in self._checking:
            return False
        if not self._needs_check(live):
            return True
        self._checking.add(live.id)
        self.nursery.start_soon(self._check, live)
        return False

    def forget(self, job_id: int) -> None:
        """The job left the queue (dispatched, stopped or deleted): a requeue checks again."""
        self._passed.discard(job_id)

    def _needs_check(self, live: LiveJob) -> bool:
        request: dict[str, Any] = live.record.request
        if self.settings.preflight == "off" or live.reattach or request.get("lm_eval_path"):
            return False
        return request.get("model") in preflight.API_MODELS

    async def _check(self, live: LiveJob) -> None:
        passed = False
        try:
            passed = await self._verdict(live) and self.owned(live)
        except Exception:  # a bug must cost one check, never the dispatcher: lm-eval judges
            log.exception("job %s: its endpoint pre-flight failed; it runs unchecked", live.id)
            passed = self.owned(live)
        finally:
            self._checking.discard(live.id)
            if passed:
                self._passed.add(live.id)
                self.cleared()

    async def _verdict(self, live: LiveJob) -> bool:
        """True once the endpoint answers; False if the job was failed or stopped."""
        reason = await self._problem(live)
        if reason is None:
            return True
        if not self.owned(live):  # stopped meanwhile: whoever stopped it settles it
            return False
        if self.settings.preflight == "fail":
            await self.fail(live, reason)
            return False
        await self.note(live, f"waiting for its endpoint: {reason}")
        return await self._wait(live)

    async def _problem(self, live: LiveJob) -> str | None:
        """Why the job's endpoint cannot serve it, or None."""
        request: dict[str, Any] = live.record.request
        try:
            run = await trio.to_thread.run_sync(effective_run, request, None)
        except ValueError:  # judged at submission; a surprise now is lm-eval's to report
            return None
        env = request.get("env_vars") or {}
        try:
            async with self._limiter:
                await preflight.check(run, env, self.settings.preflight_timeout_s)
        except preflight.EndpointDown as down:
            return str(down)
        return None

    async def _wait(self, live: LiveJob) -> bool:
        deadline = trio.current_time() + self.settings.preflight_wait_max_s
        delay_s = FIRST_RETRY_S
        while True:
            with trio.move_on_after(min(delay_s, max(0.0, deadline - trio.current_time()))):
                await live.done.wait()  # a stop or delete ends the wait at once
            if not self.owned(live):
                return False
            problem = await self._problem(live)
            if not self.owned(live):
                return False
            if problem is None:
                log.info("job %s: its endpoint answers now", live.id)
                return True
            if trio.current_time() >= deadline:
                waited = self.settings.preflight_wait_max_s
                await self.fail(live, f"{problem} (waited {waited:g} s)")
                return False
            delay_s = min(delay_s * 2, MAX_RETRY_S)

    def owned(self, live: LiveJob) -> bool:
        """Still queued, not stopped, not handed on: the dispatcher's to settle."""
        return self.jobs.jobs.get(live.id) is live and not (
            live.scope.cancel_called or live.dispatched
        )

    async def fail(self, live: LiveJob, reason: str) -> None:
        live.dispatched = True  # from now on only this settles it (a stop waits for it)
        with trio.CancelScope(shield=True):
            try:
                await self.settle(live, JobStatus.FAILED, reason=reason, finished_at=utc_now())
            except Exception:
                log.exception("job %s: could not record its end", live.id)
            self.jobs.forget(live)

    async def note(self, live: LiveJob, reason: str) -> None:
        """Put why the job waits on its record (best effort: it changes nothing else)."""
        try:
            live.record = await self.store.update(live.id, reason=reason)
        except STORE_FAULTS as error:
            log.warning("job %s: could not store why it waits: %s", live.id, error)
        self.jobs.fire(live)
