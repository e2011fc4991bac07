"""The outbox: deliveries (webhooks, MLflow exports) owed for status changes, kept in the
job database so that each is written in the same transaction as the change that causes it.

Functions here run on the store's connection inside its worker thread (store/sqlite.py calls
them); the engine's delivery worker (engine/outbox.py) reads due rows and records attempts.
What a change owes is decided by a Planner the engine gives the store: the store only keeps.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from lmeval_trio.jobs.delivery import PENDING, Delivery, NewDelivery
from lmeval_trio.jobs.record import JobRecord, SweepRecord
from lmeval_trio.jobs.status import JobStatus

MIGRATION = """
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    event TEXT NOT NULL,
    target TEXT NOT NULL,
    message_id TEXT NOT NULL,
    job_id INTEGER,
    sweep_id INTEGER,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts TEXT NOT NULL DEFAULT '[]',
    next_attempt_at TEXT,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_job ON deliveries (job_id, id);
CREATE INDEX deliveries_sweep ON deliveries (sweep_id, id);
ALTER TABLE sweeps ADD COLUMN notify TEXT NOT NULL DEFAULT '[]';
"""


class Planner(Protocol):
    """Decides, inside the store's transaction, which deliveries a change owes (pure:
    no I/O, it runs in the store's thread while the database is locked)."""

    def for_job(
        self, record: JobRecord, old: JobStatus, sweep: SweepRecord | None
    ) -> list[NewDelivery]: ...

    def for_sweep(self, sweep: SweepRecord, jobs: Sequence[JobRecord]) -> list[NewDelivery]: ...


def insert(
    conn: sqlite3.Connection,
    owed: Sequence[NewDelivery],
    created_at: str,
    *,
    job_id: int | None = None,
    sweep_id: int | None = None,
) -> int:
    """Store ``owed`` as pending, due now; the caller's transaction commits them."""
    for item in owed:
        conn.execute(
            "INSERT INTO deliveries (kind, event, target, message_id, job_id, sweep_id,"
            " created_at, status, next_attempt_at, payload) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                item.kind,
                item.event,
                item.target,
                "msg_" + uuid.uuid4().hex,
                job_id,
                sweep_id,
                created_at,
                PENDING,
                created_at,
                json.dumps(item.payload),
            ),
        )
    return len(owed)


def sweep_finished(conn: sqlite3.Connection, sweep_id: int) -> bool:
    """Whether no job of the sweep is waiting or running any more."""
    row = conn.execute(
        "SELECT COUNT(*) FROM jobs WHERE sweep_id=? AND status IN (?, ?)",
        (sweep_id, JobStatus.QUEUED.value, JobStatus.RUNNING.value),
    ).fetchone()
    return int(row[0]) == 0


def due(conn: sqlite3.Connection, now: str, busy: Sequence[int], limit: int) -> list[Delivery]:
    """Pending deliveries due by ``now`` (oldest due first), except those in ``busy``."""
    rows = conn.execute(
        "SELECT * FROM deliveries WHERE status=? AND next_attempt_at<=?"
        " ORDER BY next_attempt_at, id LIMIT ?",
        (PENDING, now, limit + len(busy)),
    )
    taken = set(busy)
    return [d for d in map(_delivery, rows) if d.id not in taken][:limit]


def next_due_at(conn: sqlite3.Connection, busy: Sequence[int]) -> str | None:
    """When the next pending delivery not in ``busy`` is due."""
    marks = ",".join("?" * len(busy))
    sql = "SELECT MIN(next_attempt_at) FROM deliveries WHERE status=?"
    if busy:
        sql += f" AND id NOT IN ({marks})"
    row = conn.execute(sql, (PENDING, *busy)).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def record_attempt(
    conn: sqlite3.Connection,
    delivery_id: int,
    attempt: dict[str, Any],
    status: str,
    next_attempt_at: str | None,
) -> None:
    """Append one attempt and the delivery's new status (and when to try next)."""
    row = conn.execute("SELECT attempts FROM deliveries WHERE id=?", (delivery_id,)).fetchone()
    if row is None:
        return
    attempts = [*json.loads(row[0]), attempt]
    conn.execute(
        "UPDATE deliveries SET attempts=?, status=?, next_attempt_at=? WHERE id=?",
        (json.dumps(attempts), status, next_attempt_at, delivery_id),
    )


def save(
    conn: sqlite3.Connection,
    delivery_id: int,
    *,
    payload: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
) -> None:
    """Keep a delivery's frozen payload or its kind's progress (before the next step)."""
    if payload is not None:
        conn.execute(
            "UPDATE deliveries SET payload=? WHERE id=?", (json.dumps(payload), delivery_id)
        )
    if state is not None:
        conn.execute("UPDATE deliveries SET state=? WHERE id=?", (json.dumps(state), delivery_id))


def of_job(conn: sqlite3.Connection, job_id: int) -> list[Delivery]:
    rows = conn.execute("SELECT * FROM deliveries WHERE job_id=? ORDER BY id", (job_id,))
    return [_delivery(row) for row in rows]


def of_sweep(conn: sqlite3.Connection, sweep_id: int) -> list[Delivery]:
    rows = conn.execute(
        "SELECT * FROM deliveries WHERE sweep_id=? AND job_id IS NULL ORDER BY id", (sweep_id,)
    )
    return [_delivery(row) for row in rows]


def get(conn: sqlite3.Connection, delivery_id: int) -> Delivery | None:
    row = conn.execute("SELECT * FROM deliveries WHERE id=?", (delivery_id,)).fetchone()
    return None if row is None else _delivery(row)


def forget_settled(conn: sqlite3.Connection, job_id: int) -> None:
    """A deleted job's finished deliveries go with it; pending ones are still owed."""
    conn.execute("DELETE FROM deliveries WHERE job_id=? AND status!=?", (job_id, PENDING))


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row["id"],
        kind=row["kind"],
        event=row["event"],
        target=row["target"],
        message_id=row["message_id"],
        job_id=row["job_id"],
        sweep_id=row["sweep_id"],
        created_at=row["created_at"],
        status=row["status"],
        next_attempt_at=row["next_attempt_at"],
        payload=json.loads(row["payload"]),
        attempts=json.loads(row["attempts"]),
        state=json.loads(row["state"]),
    )
