"""The job store: one SQLite database, used from worker threads so the event loop never waits.

stdlib sqlite3 with one connection (WAL, synchronous=NORMAL) behind a CapacityLimiter(1):
serialising calls is what SQLite wants anyway, and a thread hop keeps disk latency off the
event loop. Ids come from AUTOINCREMENT so they never repeat, even after deletes, and a
trigger bumps a row's ``version`` on every UPDATE, so (id, version) names one state of a job:
readers may cache what they derive from a row under it (the job listing does).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import trio

from lmeval_trio.errors import CannotStart
from lmeval_trio.jobs.delivery import Delivery, NewDelivery
from lmeval_trio.jobs.record import JobRecord, SweepCell, SweepRecord, utc_now
from lmeval_trio.jobs.status import JobStatus, check_transition
from lmeval_trio.store import outbox

T = TypeVar("T")
log = logging.getLogger("lmeval_trio.store")

# Each entry upgrades the schema by one version; PRAGMA user_version records how far we are.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        status TEXT NOT NULL,
        request TEXT NOT NULL,
        argv TEXT NOT NULL,
        env TEXT NOT NULL,
        job_dir TEXT NOT NULL,
        output_dir TEXT NOT NULL,
        created_at TEXT NOT NULL,
        queued_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        exit_code INTEGER,
        reason TEXT,
        pid INTEGER,
        pid_start_ticks INTEGER,
        progress TEXT,
        progress_pct INTEGER NOT NULL DEFAULT 0,
        resumed_from INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        gpus TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX jobs_status ON jobs (status, id);
    """,
    """
    ALTER TABLE jobs ADD COLUMN backend TEXT NOT NULL DEFAULT 'local';
    ALTER TABLE jobs ADD COLUMN external_id TEXT;
    """,
    # A row's version changes on every UPDATE, whoever writes it, so readers that keep
    # something derived from a row (the listing's rendered JSON) can tell it is stale.
    # The indexes let a listing read (id, version) pairs without touching the rows.
    """
    ALTER TABLE jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
    CREATE TRIGGER jobs_bump_version AFTER UPDATE ON jobs WHEN NEW.version = OLD.version
    BEGIN
        UPDATE jobs SET version = OLD.version + 1 WHERE id = OLD.id;
    END;
    DROP INDEX jobs_status;
    CREATE INDEX jobs_status ON jobs (status, id, version);
    CREATE INDEX jobs_id_version ON jobs (id, version);
    """,
    # Time limits and retries: each attempt's record, and when a job waiting to retry may run.
    """
    ALTER TABLE jobs ADD COLUMN attempt_history TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE jobs ADD COLUMN retry_at TEXT;
    """,
    # Sweeps: a row per sweep (its cells as JSON); its jobs name it and their cell.
    """
    CREATE TABLE sweeps (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        cells TEXT NOT NULL,
        baseline TEXT,
        max_parallel INTEGER,
        created_at TEXT NOT NULL
    );
    ALTER TABLE jobs ADD COLUMN sweep_id INTEGER;
    ALTER TABLE jobs ADD COLUMN sweep_cell TEXT;
    CREATE INDEX jobs_sweep ON jobs (sweep_id, id);
    """,
    # The outbox (store/outbox.py): deliveries owed for status changes; sweeps' webhooks.
    outbox.MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)
_ORDER_BY = {
    "id": " ORDER BY id",
    "newest": " ORDER BY id DESC",
    "queue": " ORDER BY queued_at, id",
}
_ID_CHUNK = 500  # ids per "WHERE id IN (...)", well below SQLite's variable limit
_JSON_COLUMNS = frozenset({"request", "argv", "env", "progress", "gpus", "attempt_history"})
_PATH_COLUMNS = frozenset({"job_dir", "output_dir"})


def _private_file(path: Path) -> None:
    """The database (and SQLite's -wal and -shm beside it, which SQLite creates with the
    database's mode) readable by the server's user only: it holds every request's secrets."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if name.exists():
            os.chmod(name, 0o600)


class StoreError(CannotStart, RuntimeError):
    """The database cannot be used (newer schema, unreadable file, ...)."""


class IdTaken(StoreError):
    """A job was drafted for an id that has been handed out meanwhile (draft it again)."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job id {job_id} has been handed out already")
        self.job_id = job_id


@dataclass(frozen=True)
class Versioned:
    """A record and the row version it was read at."""

    version: int
    record: JobRecord


@dataclass(frozen=True)
class Draft:
    """What the engine decides about a new job, for the id it was drafted for."""

    request: dict[str, Any]
    argv: list[str]
    env: dict[str, str]
    job_dir: Path
    output_dir: Path
    resumed_from: int | None = None
    backend: str = "local"
    job_id: int | None = None  # None: the next id (for drafts that do not name their id)
    sweep_id: int | None = None  # the sweep it is a cell of (set by create_sweep for new ones)
    sweep_cell: str | None = None


class JobStore:
    """Async facade over the jobs table."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = trio.CapacityLimiter(1)
        #: Decides what deliveries a status change owes (engine/deliveries.py); None: none.
        self.planner: outbox.Planner | None = None
        #: Called (on the event loop) after a change stored deliveries: wakes their worker.
        self.on_owed: Callable[[], None] | None = None

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await trio.to_thread.run_sync(conn.close, limiter=self._lock)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._lock)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _private_file(self.path)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the job store is closed")
        return self._conn

    # -- writes ---------------------------------------------------------------------------

    async def create(self, draft: Draft, queued_at: str) -> JobRecord:
        """Insert a Queued job, under the id its draft was made for (``Draft.job_id``; None:
        the next one). An id handed out before, even to a deleted job, raises IdTaken: ids
        never repeat. Only persists: whoever drafts decides which ids to skip (next_id)."""
        return await self._run(self._create, draft, queued_at)

    def _create(self, draft: Draft, queued_at: str) -> JobRecord:
        with _transaction(self.conn):
            job_id = self._insert(draft, draft.sweep_id, queued_at)
        record = self._get(job_id)
        assert record is not None
        return record

    async def create_drafted(
        self, drafter: Callable[[int], Sequence[Draft]], queued_at: str
    ) -> list[JobRecord]:
        """Insert, as Queued, the drafts ``drafter`` makes starting at the next free id, all
        in one transaction that also reads that id (no other writer can take it meanwhile):
        a batch of concurrent submissions costs one commit and one thread hop. ``drafter``
        runs in the store's thread inside the transaction; the records come in its order."""
        return await self._run(self._create_drafted, drafter, queued_at)

    def _create_drafted(
        self, drafter: Callable[[int], Sequence[Draft]], queued_at: str
    ) -> list[JobRecord]:
        with _transaction(self.conn):
            drafts = drafter(self._last_id() + 1)
            job_ids = [self._insert(draft, draft.sweep_id, queued_at) for draft in drafts]
        by_id = {v.record.id: v.record for v in self._get_many(job_ids)}
        return [by_id[job_id] for job_id in job_ids]

    def _insert(self, draft: Draft, sweep_id: int | None, queued_at: str) -> int:
        """Insert one Queued job inside the caller's transaction; returns its id."""
        if draft.job_id is not None and draft.job_id <= self._last_id():
            raise IdTaken(draft.job_id)
        cursor = self.conn.execute(
            "INSERT INTO jobs (id, status, request, argv, env, job_dir, output_dir,"
            " resumed_from, backend, created_at, queued_at, sweep_id, sweep_cell)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                draft.job_id,
                JobStatus.QUEUED.value,
                json.dumps(draft.request),
                json.dumps(draft.argv),
                json.dumps(draft.env),
                str(draft.job_dir),
                str(draft.output_dir),
                draft.resumed_from,
                draft.backend,
                queued_at,
                queued_at,
                sweep_id,
                draft.sweep_cell,
            ),
        )
        return int(cursor.lastrowid or 0)

    # -- sweeps ---------------------------------------------------------------------------

    async def create_sweep(
        self, sweep: SweepRecord, drafts: Sequence[Draft], created_at: str
    ) -> tuple[SweepRecord, list[JobRecord]]:
        """Insert a sweep and its jobs (Queued) in one transaction: all of them or none,
        even if the server is killed meanwhile. ``sweep.id`` is ignored (a fresh id)."""
        return await self._run(self._create_sweep, sweep, list(drafts), created_at)

    def _create_sweep(
        self, sweep: SweepRecord, drafts: list[Draft], created_at: str
    ) -> tuple[SweepRecord, list[JobRecord]]:
        with _transaction(self.conn) as conn:
            cursor = conn.execute(
                "INSERT INTO sweeps (name, cells, baseline, max_parallel, created_at, notify)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    sweep.name,
                    json.dumps([{"key": c.key, "request": c.request} for c in sweep.cells]),
                    sweep.baseline,
                    sweep.max_parallel,
                    created_at,
                    json.dumps(list(sweep.notify)),
                ),
            )
            sweep_id = int(cursor.lastrowid or 0)
            job_ids = [self._insert(draft, sweep_id, created_at) for draft in drafts]
        stored = self._get_sweep(sweep_id)
        assert stored is not None
        by_id = {v.record.id: v.record for v in self._get_many(job_ids)}
        return stored, [by_id[job_id] for job_id in job_ids]

    async def get_sweep(self, sweep_id: int) -> SweepRecord | None:
        return await self._run(self._get_sweep, sweep_id)

    def _get_sweep(self, sweep_id: int) -> SweepRecord | None:
        if not 0 <= sweep_id < 2**63:
            return None
        row = self.conn.execute("SELECT * FROM sweeps WHERE id=?", (sweep_id,)).fetchone()
        return None if row is None else _sweep(row)

    async def select_sweeps(
        self, *, limit: int | None = None, offset: int = 0, newest_first: bool = False
    ) -> tuple[list[SweepRecord], int]:
        """A page of sweeps by id, and how many there are in all."""
        return await self._run(self._select_sweeps, limit, offset, newest_first)

    def _select_sweeps(
        self, limit: int | None, offset: int, newest_first: bool
    ) -> tuple[list[SweepRecord], int]:
        sql = "SELECT * FROM sweeps ORDER BY id" + (" DESC" if newest_first else "")
        params: list[Any] = []
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params.extend([limit, offset])
        sweeps = [_sweep(row) for row in self.conn.execute(sql, params)]
        total = int(self.conn.execute("SELECT COUNT(*) FROM sweeps").fetchone()[0])
        return sweeps, total

    async def sweep_jobs(self, sweep_ids: Sequence[int]) -> list[JobRecord]:
        """Every job of these sweeps, by id (a cell resumed has several)."""
        return await self._run(self._sweep_jobs, list(sweep_ids))

    def _sweep_jobs(self, sweep_ids: list[int]) -> list[JobRecord]:
        found = [_record(row) for row in _jobs_where_in(self.conn, "sweep_id", sweep_ids)]
        return sorted(found, key=lambda r: r.id)

    async def sweep_limits(self) -> dict[int, int]:
        """``max_parallel`` of every sweep that has one (for dispatch after a restart)."""
        return await self._run(self._sweep_limits)

    def _sweep_limits(self) -> dict[int, int]:
        rows = self.conn.execute(
            "SELECT id, max_parallel FROM sweeps WHERE max_parallel IS NOT NULL"
        )
        return {int(row[0]): int(row[1]) for row in rows}

    async def delete_sweep(self, sweep_id: int) -> None:
        """Remove the sweep's row (its jobs are deleted like jobs, before)."""
        await self._run(self._delete_sweep, sweep_id)

    def _delete_sweep(self, sweep_id: int) -> None:
        self.conn.execute("DELETE FROM sweeps WHERE id=?", (sweep_id,))

    async def next_id(self) -> int:
        """The id the next job gets unless it names a later one: the highest ever handed
        out plus one (AUTOINCREMENT never reuses an id, even after deletes)."""
        return await self._run(self._next_id)

    def _next_id(self) -> int:
        return self._last_id() + 1

    async def last_id(self) -> int:
        """The highest id ever handed out (0 for a new database)."""
        return await self._run(self._last_id)

    def _last_id(self) -> int:
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name='jobs'").fetchone()
        return 0 if row is None else int(row[0])

    async def transition(
        self, job_id: int, old: JobStatus, new: JobStatus, **fields: Any
    ) -> JobRecord:
        """Move ``job_id`` from ``old`` to ``new`` atomically, checked against the table."""
        check_transition(job_id, old, new)
        record, owed = await self._run(self._transition, job_id, old, new, fields)
        if owed and self.on_owed is not None:
            self.on_owed()
        return record

    def _transition(
        self, job_id: int, old: JobStatus, new: JobStatus, fields: dict[str, Any]
    ) -> tuple[JobRecord, int]:
        """The change and the deliveries it owes, in one transaction: a crash right after
        it still owes them, and a change that did not happen owes nothing."""
        columns = {"status": new.value, **{k: _encode(k, v) for k, v in fields.items()}}
        assignments = ", ".join(f"{name}=?" for name in columns)
        with _transaction(self.conn) as conn:
            cursor = conn.execute(
                f"UPDATE jobs SET {assignments} WHERE id=? AND status=?",
                (*columns.values(), job_id, old.value),
            )
            record = self._get(job_id)
            if cursor.rowcount != 1 or record is None:
                actual = record.status.value if record else "deleted"
                raise StoreError(f"job {job_id}: expected {old.value}, found {actual}")
            owed = self._owe(record, old)
        return record, owed

    def _owe(self, record: JobRecord, old: JobStatus) -> int:
        """Store what the planner says ``record``'s change owes (and its sweep's end)."""
        planner = self.planner
        if planner is None:
            return 0
        sweep = None if record.sweep_id is None else self._get_sweep(record.sweep_id)
        now = utc_now()
        planned = _planned(lambda: planner.for_job(record, old, sweep))
        owed = outbox.insert(self.conn, planned, now, job_id=record.id, sweep_id=record.sweep_id)
        ended = sweep is not None and record.status.is_terminal
        if sweep is not None and ended and outbox.sweep_finished(self.conn, sweep.id):
            jobs = self._sweep_jobs([sweep.id])
            planned = _planned(lambda: planner.for_sweep(sweep, jobs))
            owed += outbox.insert(self.conn, planned, now, sweep_id=sweep.id)
        return owed

    async def update(self, job_id: int, **fields: Any) -> JobRecord:
        """Change fields other than the status (those go through transition())."""
        if "status" in fields:
            raise ValueError("status changes go through transition()")
        return await self._run(self._update, job_id, fields)

    def _update(self, job_id: int, fields: dict[str, Any]) -> JobRecord:
        assignments = ", ".join(f"{name}=?" for name in fields)
        values = [_encode(k, v) for k, v in fields.items()]
        self.conn.execute(f"UPDATE jobs SET {assignments} WHERE id=?", (*values, job_id))
        record = self._get(job_id)
        if record is None:
            raise StoreError(f"job {job_id} does not exist")
        return record

    async def set_progress(self, job_id: int, progress: dict[str, Any], pct: int) -> None:
        await self._run(self._set_progress, job_id, progress, pct)

    def _set_progress(self, job_id: int, progress: dict[str, Any], pct: int) -> None:
        self.conn.execute(
            "UPDATE jobs SET progress=?, progress_pct=? WHERE id=?",
            (json.dumps(progress), pct, job_id),
        )

    async def delete(self, job_ids: Sequence[int]) -> int:
        return await self._run(self._delete, list(job_ids))

    def _delete(self, job_ids: list[int]) -> int:
        with _transaction(self.conn) as conn:
            total = 0
            for job_id in job_ids:
                total += conn.execute("DELETE FROM jobs WHERE id=?", (job_id,)).rowcount
                outbox.forget_settled(conn, job_id)
        return total

    # -- the outbox (store/outbox.py) -----------------------------------------------------

    async def due_deliveries(self, now: str, busy: Sequence[int], limit: int) -> list[Delivery]:
        return await self._run(outbox.due, self.conn, now, list(busy), limit)

    async def next_delivery_at(self, busy: Sequence[int]) -> str | None:
        return await self._run(outbox.next_due_at, self.conn, list(busy))

    async def record_attempt(
        self, delivery_id: int, attempt: dict[str, Any], status: str, next_at: str | None
    ) -> None:
        await self._run(outbox.record_attempt, self.conn, delivery_id, attempt, status, next_at)

    async def save_delivery(
        self,
        delivery_id: int,
        *,
        payload: dict[str, Any] | None = None,
        state: dict[str, Any] | None = None,
    ) -> None:
        """Keep a delivery's payload or progress (an MLflow run id before its metrics)."""

        def save() -> None:
            outbox.save(self.conn, delivery_id, payload=payload, state=state)

        await self._run(save)

    async def job_deliveries(self, job_id: int) -> list[Delivery]:
        return await self._run(outbox.of_job, self.conn, job_id)

    async def sweep_deliveries(self, sweep_id: int) -> list[Delivery]:
        return await self._run(outbox.of_sweep, self.conn, sweep_id)

    # -- reads ----------------------------------------------------------------------------

    async def get(self, job_id: int) -> JobRecord | None:
        return await self._run(self._get, job_id)

    def _get(self, job_id: int) -> JobRecord | None:
        if not 0 <= job_id < 2**63:  # beyond SQLite's INTEGER: no such job (not an error)
            return None
        row = self.conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    async def select(
        self,
        statuses: Iterable[JobStatus] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        order: str = "id",
    ) -> list[JobRecord]:
        """Jobs by ``order`` ("id", "newest" or "queue"), optionally filtered and paged."""
        wanted = None if statuses is None else [s.value for s in statuses]
        return await self._run(self._list, wanted, limit, offset, order)

    def _list(
        self, statuses: list[str] | None, limit: int | None, offset: int, order: str
    ) -> list[JobRecord]:
        sql, params = _select_sql("*", statuses, limit, offset, order)
        return [_record(row) for row in self.conn.execute(sql, params)]

    async def versions(
        self,
        statuses: Iterable[JobStatus] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        order: str = "id",
    ) -> list[tuple[int, int]]:
        """(id, version) of the jobs select() would return: read from an index, no rows
        decoded, so a caller can tell which of its cached renderings are still current."""
        wanted = None if statuses is None else [s.value for s in statuses]
        return await self._run(self._versions, wanted, limit, offset, order)

    def _versions(
        self, statuses: list[str] | None, limit: int | None, offset: int, order: str
    ) -> list[tuple[int, int]]:
        sql, params = _select_sql("id, version", statuses, limit, offset, order)
        cursor = self.conn.cursor()
        cursor.row_factory = None  # plain tuples: several times cheaper than Rows
        return cursor.execute(sql, params).fetchall()

    async def get_many(self, job_ids: Sequence[int]) -> list[Versioned]:
        """The given jobs that still exist, each with its row version (in no set order)."""
        return await self._run(self._get_many, list(job_ids))

    def _get_many(self, job_ids: list[int]) -> list[Versioned]:
        rows = _jobs_where_in(self.conn, "id", job_ids)
        return [Versioned(row["version"], _record(row)) for row in rows]

    async def stamp(self) -> tuple[int, int]:
        """A value that changes whenever any row changes: our own writes (trigger work
        included) and commits by other connections. Equal stamps: nothing changed."""
        return await self._run(self._stamp)

    def _stamp(self) -> tuple[int, int]:
        others = int(self.conn.execute("PRAGMA data_version").fetchone()[0])
        return others, self.conn.total_changes

    async def counts(self) -> dict[JobStatus, int]:
        return await self._run(self._counts)

    def _counts(self) -> dict[JobStatus, int]:
        counts = dict.fromkeys(JobStatus, 0)
        for status, count in self.conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY 1"):
            counts[JobStatus(status)] = int(count)
        return counts

    async def writable(self) -> bool:
        """A cheap write probe for health checks."""
        try:
            await self._run(self.conn.execute, "PRAGMA user_version=" + str(SCHEMA_VERSION))
        except (sqlite3.Error, StoreError):
            return False
        return True


def _planned(plan: Callable[[], list[NewDelivery]]) -> list[NewDelivery]:
    """What the planner owes; a planner's bug costs the deliveries (logged), never the status
    change itself."""
    try:
        return plan()
    except Exception:
        log.exception("the outbox planner failed; this change owes no deliveries")
        return []


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT/ROLLBACK on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _migrate(conn: sqlite3.Connection) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database schema is version {version}, newer than this server's "
            f"{SCHEMA_VERSION}: upgrade lmeval-trio"
        )
    for number in range(version, SCHEMA_VERSION):
        # executescript commits first, so the whole step is one script: all or nothing.
        conn.executescript(
            f"BEGIN IMMEDIATE; {MIGRATIONS[number]}; PRAGMA user_version={number + 1}; COMMIT;"
        )


def _jobs_where_in(
    conn: sqlite3.Connection, column: Literal["id", "sweep_id"], values: list[int]
) -> Iterator[sqlite3.Row]:
    """The job rows whose ``column`` is one of ``values`` (in no set order), asked
    ``_ID_CHUNK`` values at a time: SQLite bounds the variables of one statement."""
    for start in range(0, len(values), _ID_CHUNK):
        chunk = values[start : start + _ID_CHUNK]
        yield from conn.execute(
            f"SELECT * FROM jobs WHERE {column} IN ({','.join('?' * len(chunk))})", chunk
        )


def _select_sql(
    columns: str, statuses: list[str] | None, limit: int | None, offset: int, order: str
) -> tuple[str, list[Any]]:
    sql = f"SELECT {columns} FROM jobs"
    params: list[Any] = []
    if statuses is not None:
        sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
        params.extend(statuses)
    sql += _ORDER_BY[order]
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params.extend([limit, offset])
    return sql, params


def _encode(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS:
        return None if value is None else json.dumps(value)
    if column in _PATH_COLUMNS:
        return str(value)
    if isinstance(value, JobStatus):
        return value.value
    return value


def _record(row: sqlite3.Row) -> JobRecord:
    data = dict(row)
    return JobRecord(
        id=data["id"],
        status=JobStatus(data["status"]),
        request=json.loads(data["request"]),
        argv=json.loads(data["argv"]),
        env=json.loads(data["env"]),
        job_dir=Path(data["job_dir"]),
        output_dir=Path(data["output_dir"]),
        created_at=data["created_at"],
        queued_at=data["queued_at"],
        started_at=data["started_at"],
        finished_at=data["finished_at"],
        exit_code=data["exit_code"],
        reason=data["reason"],
        pid=data["pid"],
        pid_start_ticks=data["pid_start_ticks"],
        progress=None if data["progress"] is None else json.loads(data["progress"]),
        progress_pct=data["progress_pct"],
        resumed_from=data["resumed_from"],
        attempts=data["attempts"],
        gpus=json.loads(data["gpus"]),
        backend=data["backend"],
        external_id=data["external_id"],
        attempt_history=json.loads(data["attempt_history"]),
        retry_at=data["retry_at"],
        sweep_id=data["sweep_id"],
        sweep_cell=data["sweep_cell"],
    )


def _sweep(row: sqlite3.Row) -> SweepRecord:
    cells = tuple(SweepCell(c["key"], c["request"]) for c in json.loads(row["cells"]))
    return SweepRecord(
        id=row["id"],
        name=row["name"],
        cells=cells,
        created_at=row["created_at"],
        baseline=row["baseline"],
        max_parallel=row["max_parallel"],
        notify=tuple(json.loads(row["notify"])),
    )
