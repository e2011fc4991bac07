"""What happens to a queued API-model job whose endpoint fails the pre-flight, before it takes
a slot: with ``LMEVAL_PREFLIGHT=fail`` it ends Failed at once with the reason; with ``wait``
(the default) it stays Queued, the reason on its record, without a slot, and is checked
again with back-off (1 s doubling to 30 s) until the endpoint answers (then it queues again,
behind the jobs queued meanwhile) or ``LMEVAL_PREFLIGHT_WAIT_MAX_S`` has passed (then it
fails with the reason). ``off`` skips the pre-flight.

The retry sleeps are the back-off of an outside server that sends no signal when it comes
up; nothing inside the server is polled. A stop or delete ends the wait (the job's cancel
scope is checked after every sleep, and its settling is left to whoever stopped it).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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


@dataclass
class EndpointGate:
    """Lets a queued job through to a slot once its endpoint answers; fails it, or keeps
    it waiting (its waits in ``nursery``), otherwise."""

    settings: Settings
    jobs: LiveJobs
    store: JobStore
    settle: Settle
    requeue: Callable[[LiveJob], None]
    nursery: trio.Nursery

    async def ready(self, live: LiveJob) -> bool:
        """True if the job may take a slot now; else it was failed or set waiting."""
        reason = await self._problem(live)
        if reason is None:
            return True
        if not self.owned(live):  # stopped meanwhile: whoever stopped it settles it
            return False
        if self.settings.preflight == "fail":
            await self.fail(live, reason)
        else:
            await self.note(live, f"waiting for its endpoint: {reason}")
            self.nursery.start_soon(self._wait, live, reason)
        return False

    async def _problem(self, live: LiveJob) -> str | None:
        """Why the job's endpoint cannot serve it, or None (also for non-API jobs)."""
        request: dict[str, Any] = live.record.request
        model = request.get("model")
        if self.settings.preflight == "off" or live.reattach or request.get("lm_eval_path"):
            return None
        if model not in preflight.API_MODELS:
            return None
        try:
            run = await trio.to_thread.run_sync(effective_run, request, None)
        except ValueError:  # judged at submission; a surprise now is lm-eval's to report
            return None
        env = request.get("env_vars") or {}
        try:
            await preflight.check(run, env, self.settings.preflight_timeout_s)
        except preflight.EndpointDown as down:
            return str(down)
        return None

    async def _wait(self, live: LiveJob, reason: str) -> None:
        deadline = trio.current_time() + self.settings.preflight_wait_max_s
        delay_s = FIRST_RETRY_S
        while True:
            await trio.sleep(min(delay_s, max(0.0, deadline - trio.current_time())))
            if not self.owned(live):
                return
            problem = await self._problem(live)
            if not self.owned(live):
                return
            if problem is None:
                log.info("job %s: its endpoint answers now; queued again", live.id)
                self.requeue(live)
                return
            if trio.current_time() >= deadline:
                waited = self.settings.preflight_wait_max_s
                await self.fail(live, f"{problem} (waited {waited:g} s)")
                return
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
