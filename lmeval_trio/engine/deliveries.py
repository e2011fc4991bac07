"""Which deliveries a status change owes: the outbox planner the store runs inside the
transaction that stores the change (store/outbox.py), and the summaries they carry.

Pure by design (it runs in the store's thread while the database is locked): targets come
from the job's request, its sweep and the server-wide LMEVAL_WEBHOOKS; the data is the job's
summary with secrets masked. Metrics are added by the delivery worker at the first attempt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from lmeval_trio.config import Settings
from lmeval_trio.jobs.delivery import NewDelivery
from lmeval_trio.jobs.notify import NotifyTarget
from lmeval_trio.jobs.record import JobRecord, SweepRecord, utc_now
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.policy import secrets

EVENT_OF = {
    JobStatus.RUNNING: "job.started",
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.STOPPED: "job.stopped",
}


class DeliveryPlanner:
    """The store's outbox.Planner for this server's settings."""

    def __init__(self, settings: Settings) -> None:
        self.server_hooks = tuple(settings.webhooks)
        self.mlflow = settings.mlflow_tracking_uri  # every finished job exported there

    def for_job(
        self, record: JobRecord, old: JobStatus, sweep: SweepRecord | None
    ) -> list[NewDelivery]:
        event = EVENT_OF.get(record.status)
        if event is None:
            return []
        hooks = _targets(record.request.get("notify") or [], sweep)
        payload = {"type": event, "timestamp": utc_now(), "data": job_summary(record)}
        owed = [NewDelivery("webhook", event, url, payload) for url in _wanting(hooks, event, self)]
        if self.mlflow is not None and record.status.is_terminal:
            owed.append(NewDelivery("mlflow", event, self.mlflow, {"job_id": record.id}))
        return owed

    def for_sweep(self, sweep: SweepRecord, jobs: Sequence[JobRecord]) -> list[NewDelivery]:
        event = "sweep.completed"
        hooks = [NotifyTarget.model_validate(entry) for entry in sweep.notify]
        payload = {"type": event, "timestamp": utc_now(), "data": sweep_summary(sweep, jobs)}
        owed = [NewDelivery("webhook", event, url, payload) for url in _wanting(hooks, event, self)]
        if self.mlflow is not None:
            owed.append(NewDelivery("mlflow", event, self.mlflow, {"sweep_id": sweep.id}))
        return owed


def _targets(entries: Iterable[dict[str, Any]], sweep: SweepRecord | None) -> list[NotifyTarget]:
    """The job's own webhooks and its sweep's (those apply to every cell)."""
    hooks = [NotifyTarget.model_validate(entry) for entry in entries]
    if sweep is not None:
        hooks.extend(NotifyTarget.model_validate(entry) for entry in sweep.notify)
    return hooks


def _wanting(hooks: list[NotifyTarget], event: str, planner: DeliveryPlanner) -> list[str]:
    """URLs (each once) of the hooks, server-wide ones included, that want ``event``."""
    urls: list[str] = []
    for hook in [*hooks, *planner.server_hooks]:
        if hook.wants(event) and hook.url not in urls:
            urls.append(hook.url)
    return urls


def job_summary(record: JobRecord) -> dict[str, Any]:
    """What a receiver learns about a job: no request arguments (they may hold secrets;
    env_vars and model_args never leave), the reason with the request's secrets masked."""
    hidden = secrets.job_secrets(record.request)
    reason = None if record.reason is None else secrets.mask_text(record.reason, hidden)
    return {
        "job_id": record.id,
        "status": record.status.value,
        "model": record.request.get("model"),
        "tasks": record.request.get("tasks"),
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "exit_code": record.exit_code,
        "reason": reason,
        "attempts": record.attempts,
        "sweep_id": record.sweep_id,
        "sweep_cell": record.sweep_cell,
    }


def sweep_summary(sweep: SweepRecord, jobs: Sequence[JobRecord]) -> dict[str, Any]:
    """A finished sweep: its id, name and each cell's newest job and status."""
    newest: dict[str, JobRecord] = {}
    for job in sorted(jobs, key=lambda j: j.id):
        if job.sweep_cell is not None:
            newest[job.sweep_cell] = job
    counts: dict[str, int] = {}
    for job in newest.values():
        counts[job.status.value] = counts.get(job.status.value, 0) + 1
    return {
        "sweep_id": sweep.id,
        "name": sweep.name,
        "cells": len(sweep.cells),
        "counts": counts,
        "jobs": [
            {"cell": key, "job_id": job.id, "status": job.status.value}
            for key, job in newest.items()
        ],
    }
