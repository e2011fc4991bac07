"""A delivery the outbox keeps: one webhook (or MLflow export) a status change owed, and
its attempts (store/outbox.py stores them, engine/outbox.py makes the attempts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["webhook", "mlflow"]
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class NewDelivery:
    """A delivery a change owes: what kind, for which event, to where, with what data."""

    kind: Kind
    event: str
    target: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    """One stored delivery and its attempts so far."""

    id: int
    kind: Kind
    event: str
    target: str
    message_id: str  # the webhook-id: the same on every attempt (receivers de-duplicate)
    job_id: int | None
    sweep_id: int | None
    created_at: str
    status: str  # pending, delivered or failed (given up)
    next_attempt_at: str | None
    payload: dict[str, Any]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)  # kind's own progress (an MLflow run id)
