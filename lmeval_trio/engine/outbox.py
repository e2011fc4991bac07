"""The delivery worker: attempts the outbox's pending deliveries (store/outbox.py) in the
supervisor's nursery, retrying with exponential back-off and jitter up to a bound.

It never blocks the supervisor or the HTTP edge: it sleeps on an event that a stored
delivery or a finished attempt sets, or until the next delivery falls due, whichever is
first (no polling). Pending rows are read at start, so deliveries owed before a crash or a
restart go out within moments. At-least-once: an attempt cut short by a shutdown is not
recorded and is made again after the restart, with the same webhook-id. Webhooks are given
up after LMEVAL_WEBHOOK_MAX_ATTEMPTS; MLflow exports are retried until the tracking server
takes them (or refuses them for good).
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import trio

from lmeval_trio.config import Settings
from lmeval_trio.engine.change_signal import Pulse
from lmeval_trio.engine.live import log
from lmeval_trio.engine.mlflow_export import Hidden, MlflowExporter
from lmeval_trio.engine.webhooks import Outcome, WebhookSender, load_secret
from lmeval_trio.jobs.delivery import DELIVERED, FAILED, PENDING, Delivery
from lmeval_trio.outputs import results
from lmeval_trio.store.sqlite import JobStore

MAX_IN_FLIGHT = 16
Sender = Callable[[Delivery], Awaitable[Outcome]]


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def retry_delay_s(settings: Settings, attempts: int) -> float:
    """The wait after ``attempts`` failed attempts: doubling from the base, capped, with
    jitter (between half and all of it) so many receivers' retries do not come in waves."""
    base = settings.webhook_retry_base_s * 2 ** min(attempts - 1, 60)
    delay: float = min(settings.webhook_retry_max_s, base) * random.uniform(0.5, 1.0)
    return delay


class Outbox:
    """Owns the delivery attempts; ``poke()`` when something may be due."""

    def __init__(self, settings: Settings, store: JobStore, hidden: Hidden) -> None:
        self.settings = settings
        self.store = store
        self.hidden = hidden  # a job's secrets (masked in what an export uploads)
        self.scope = trio.CancelScope()
        self._wake = trio.Event()
        self._busy: set[int] = set()
        self._webhooks: WebhookSender | None = None
        self.senders: dict[str, Sender] = {"webhook": self._send_webhook}
        self.attempted = Pulse()  # fires after each recorded attempt (for waiters, tests)

    def poke(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled (``scope``, at shutdown): attempt what is due, then wait."""
        with self.scope:
            secret = await trio.to_thread.run_sync(load_secret, self.settings)
            self._webhooks = WebhookSender(self.settings, secret)
            exporter = None
            if self.settings.mlflow_tracking_uri is not None:
                exporter = MlflowExporter(self.settings, self.store, self.hidden)
                self.senders["mlflow"] = exporter.send
            try:
                async with trio.open_nursery() as nursery:
                    task_status.started()
                    await self._loop(nursery)
            finally:
                with trio.CancelScope(shield=True):
                    await self._webhooks.aclose()
                    if exporter is not None:
                        await exporter.aclose()

    async def _loop(self, nursery: trio.Nursery) -> None:
        while True:
            self._wake = trio.Event()  # before reading: a poke from now on is not missed
            free = MAX_IN_FLIGHT - len(self._busy)
            if free > 0:
                for delivery in await self.store.due_deliveries(
                    iso(_now()), sorted(self._busy), free
                ):
                    self._busy.add(delivery.id)
                    nursery.start_soon(self._attempt, delivery)
            wait_s = await self._until_next()
            with trio.move_on_after(wait_s):
                await self._wake.wait()

    async def _until_next(self) -> float:
        if len(self._busy) >= MAX_IN_FLIGHT:
            return math.inf  # a finished attempt pokes
        next_at = await self.store.next_delivery_at(sorted(self._busy))
        if next_at is None:
            return math.inf
        return max(0.0, (datetime.fromisoformat(next_at) - _now()).total_seconds())

    async def _attempt(self, delivery: Delivery) -> None:
        """One attempt, recorded with what comes next; an unexpected error is a failed
        attempt (logged), never the worker's end."""
        started = _now()
        try:
            sender = self.senders.get(delivery.kind)
            if sender is None:
                outcome = Outcome(False, error=f"{delivery.kind} export is not configured")
            else:
                outcome = await sender(delivery)
        except Exception as error:
            log.exception("delivery %s: the attempt failed unexpectedly", delivery.id)
            outcome = Outcome(False, error=f"internal error: {type(error).__name__}")
        try:
            await self._record(delivery, outcome, started)
        finally:
            self._busy.discard(delivery.id)
            self.attempted.fire()
            self.poke()

    async def _record(self, delivery: Delivery, outcome: Outcome, started: datetime) -> None:
        number = len(delivery.attempts) + 1
        status, next_at = DELIVERED, None
        if not outcome.delivered:
            if outcome.final or self._out_of_attempts(delivery, number):
                status = FAILED
            else:
                status = PENDING
                delay = retry_delay_s(self.settings, number)
                next_at = iso(_now() + timedelta(seconds=delay))
            _log_failure(delivery, number, outcome, status)
        attempt: dict[str, Any] = {
            "at": iso(started),
            "status_code": outcome.status_code,
            "error": outcome.error,
        }
        await self.store.record_attempt(delivery.id, attempt, status, next_at)

    def _out_of_attempts(self, delivery: Delivery, number: int) -> bool:
        """Webhooks are given up after the bound; an export waits for its tracking server
        however long it is down (a finished job is never left out of MLflow)."""
        return delivery.kind == "webhook" and number >= self.settings.webhook_max_attempts

    async def _send_webhook(self, delivery: Delivery) -> Outcome:
        assert self._webhooks is not None
        payload = await self._frozen_payload(delivery)
        return await self._webhooks.send(delivery, payload)

    async def _frozen_payload(self, delivery: Delivery) -> dict[str, Any]:
        """The payload with the metrics table of a completed job, read at the first attempt
        and kept, so every retry sends the same body."""
        payload = delivery.payload
        data = payload.get("data", {})
        if delivery.event != "job.completed" or "metrics" in data or delivery.job_id is None:
            return payload
        record = await self.store.get(delivery.job_id)
        metrics: list[dict[str, Any]] = []
        if record is not None:
            try:
                loaded = await trio.to_thread.run_sync(results.load_results, record)
                metrics = loaded["metrics"]
            except results.ResultsUnavailable:
                pass
        frozen = {**payload, "data": {**data, "metrics": metrics}}
        await self.store.save_delivery(delivery.id, payload=frozen)
        return frozen


def _now() -> datetime:
    return datetime.now(UTC)


def _log_failure(delivery: Delivery, number: int, outcome: Outcome, status: str) -> None:
    """Where to, by origin only: a webhook URL's path may hold a token."""
    parts = urlsplit(delivery.target)
    what = outcome.error or f"HTTP {outcome.status_code}"
    then = "given up" if status == FAILED else "will retry"
    log.warning(
        "delivery %s (%s %s to %s://%s): attempt %d failed (%s); %s",
        delivery.id,
        delivery.kind,
        delivery.event,
        parts.scheme,
        parts.netloc,
        number,
        what,
        then,
    )
