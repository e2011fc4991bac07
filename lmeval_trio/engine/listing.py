"""The read model of a supervisor's jobs: GET /jobs bodies, counts, and each job's summary.

The HTTP edge reads stored jobs only through this (never the store itself); the supervisor
exposes one as ``supervisor.listing``. GET /jobs bodies come from per-job JSON that is rendered
once and reused until the job changes.

Decoding a row and rendering its summary (shlex-quoting the argv, json.dumps) costs ~100 µs,
so an unpaged listing of 10,000 jobs took over a second. :class:`JobListing` keeps each
job's summary as JSON bytes: a stored job's stay current while its row ``version`` (which a
trigger bumps on every UPDATE) is unchanged; an active job's while the supervisor holds the
same live record and its progress renders the same (live progress changes without a write).
A listing reads (id, version) pairs from an index and renders only what changed, comparing
with the previous listing of the same query; while the store's change stamp holds, that
listing is reused outright (its live rows redone). The rows join into the very bytes
``jsonify`` produced.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import compress, count, repeat
from operator import eq, itemgetter, ne
from typing import TYPE_CHECKING, Any, cast

from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.json_values import finite
from lmeval_trio.policy.secrets import (
    job_secrets,
    mask_json,
    mask_text,
    public_argument,
    public_request,
)
from lmeval_trio.store.sqlite import Versioned

if TYPE_CHECKING:
    from lmeval_trio.engine.supervisor import Supervisor

# What app.json produces outside debug mode: compact, ASCII, keys in insertion order.
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def _ENCODE(value: Any) -> str:
    """Strict JSON (see strict_json.py): non-finite floats go out as null."""
    try:
        return _ENCODER.encode(value)
    except ValueError:
        return _ENCODER.encode(finite(value))


HEAD = b'{"jobs":['
LIVE = -1  # the version of a row rendered from the supervisor's live state
RENDER_BATCH = 64  # stale rows fetched and rendered per step: under ~10 ms of event loop
PIECE_BYTES = 256 * 1024  # the body goes out in pieces at least this big: few writes ...
MAX_PIECES = 8  # ... and at most this many (Quart-Trio's test client holds only 10 unread)
MAX_CACHE_BYTES = 64 * 2**20  # ~40,000 typical summaries; past it new ones go uncached
MAX_RECENT = 4  # listings (distinct queries) remembered for reuse while nothing changes

Shape = tuple[tuple[JobStatus, ...] | None, int | None, int, bool]


@dataclass(frozen=True, slots=True)
class _Rendered:
    """One job's summary JSON and what it was rendered from."""

    data: bytes
    version: int = LIVE  # the stored row's version, or LIVE: from a live record
    live: JobRecord | None = None  # that live record (compared by identity)
    progress: str = ""  # and its progress, as JSON


@dataclass(frozen=True)
class ListingBody:
    """A GET /jobs body: each row's JSON and the (job id, version) it shows, and the total."""

    rows: list[bytes]
    keys: list[tuple[int, int]]
    total: int
    size: int  # of the whole body, in bytes
    live: tuple[int, ...]  # the indexes of rows rendered from live state

    @classmethod
    def of(cls, rows: list[bytes], keys: list[tuple[int, int]], total: int) -> ListingBody:
        versions = map(itemgetter(1), keys)  # (C-level iteration: 10,000 rows in 1 ms)
        live = tuple(compress(count(), map(eq, versions, repeat(LIVE))))
        size = len(HEAD) + sum(map(len, rows)) + max(0, len(rows) - 1) + len(_tail(total))
        return cls(rows, keys, total, size, live)

    @property
    def tail(self) -> bytes:
        return _tail(self.total)

    def __len__(self) -> int:
        return self.size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces(max(PIECE_BYTES, -(-self.size // MAX_PIECES))):
            yield piece

    def pieces(self, size: int) -> Iterator[bytes]:
        """The body in pieces of about ``size`` bytes; each row's bytes are copied once."""
        rows, tail = self.rows, self.tail
        if not rows:
            yield HEAD + tail
            return
        start, filled = 0, 0
        for end, row in enumerate(rows, 1):
            filled += len(row) + 1
            if filled < size and end < len(rows):
                continue
            parts = rows[start:end]
            if start == 0:
                parts[0] = HEAD + parts[0]
            else:
                parts.insert(0, b"")  # the comma before this piece's first row
            if end == len(rows):
                parts[-1] += tail
            yield b",".join(parts)
            start, filled = end, 0


class JobListing:
    """One supervisor's jobs as the edge reads them: GET /jobs (caching each job's summary
    bytes), counts by status, one job's summary, and whether the store takes writes."""

    def __init__(self, supervisor: Supervisor, max_bytes: int = MAX_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._sup = supervisor
        self._entries: dict[int, _Rendered] = {}
        self._bytes = 0
        self._recent: dict[Shape, tuple[tuple[int, int], ListingBody]] = {}

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def summary(self, record: JobRecord) -> dict[str, Any]:
        """``record``'s summary, with its live progress if it is queued or running."""
        return summary(record, self._sup.progress_dict(record))

    async def counts(self) -> dict[JobStatus, int]:
        """How many jobs the store holds, by status."""
        return await self._sup.store.counts()

    async def store_writable(self) -> bool:
        """Whether the store takes writes now (for health checks)."""
        return await self._sup.store.writable()

    async def render(
        self,
        statuses: Sequence[JobStatus] | None,
        *,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> ListingBody:
        """The listing ``list_jobs`` + :func:`summary` would give, and its total."""
        sup = self._sup
        shape: Shape = (None if statuses is None else tuple(statuses), limit, offset, newest_first)
        stamp = await sup.store.stamp()
        recent = self._recent.get(shape)
        if recent is not None and recent[0] == stamp:
            body = await self._relive(sup, recent[1])
            if body is not None:
                return body
        body = await self._render(sup, shape, None if recent is None else recent[1])
        self._recent.pop(shape, None)
        if len(self._recent) >= MAX_RECENT:
            del self._recent[next(iter(self._recent))]
        self._recent[shape] = (stamp, body)
        return body

    async def _relive(self, sup: Supervisor, body: ListingBody) -> ListingBody | None:
        """``body`` with its live rows brought up to date (None if a job left live state:
        then it was written to, so this cannot happen while the stamp holds)."""
        if not body.live:
            return body  # the same object: encodings of it can be reused too
        rows, size = list(body.rows), body.size
        for index in body.live:
            job_id = body.keys[index][0]
            if sup.live_changes(job_id) is None:
                return None
            rows[index] = self._live_row(sup, await sup.get(job_id))  # no await inside
            size += len(rows[index]) - len(body.rows[index])
        return replace(body, rows=rows, size=size)

    async def _render(
        self, sup: Supervisor, shape: Shape, previous: ListingBody | None
    ) -> ListingBody:
        statuses, limit, offset, newest_first = shape
        order = "newest" if newest_first else "id"
        pairs = await sup.store.versions(statuses, limit=limit, offset=offset, order=order)
        rows, keys, stale = self._reuse(sup, pairs, previous)
        complete = await self._refresh(sup, stale, rows, keys)
        counts = await sup.store.counts()
        if len(self._entries) > sum(counts.values()):
            await self._sweep()  # jobs were deleted
        total = sum(counts[s] for s in statuses) if statuses else sum(counts.values())
        if complete:
            return ListingBody.of(cast(list[bytes], rows), keys, total)
        return ListingBody.of(*_present(rows, keys), total)

    def _reuse(
        self, sup: Supervisor, pairs: list[tuple[int, int]], previous: ListingBody | None
    ) -> tuple[list[bytes | None], list[tuple[int, int]], dict[int, int]]:
        """Cached bytes where still current; ``stale`` maps each other job to its row.

        Where the previous listing of the query showed the same (id, version) at the same
        place, its row is taken unchecked: a job not live then has not become live since
        without a write (jobs become live when created), so only changes are looked at.
        """
        if previous is not None and len(previous.keys) == len(pairs):
            rows: list[bytes | None] = list(previous.rows)
            check: Iterable[int] = compress(count(), map(ne, pairs, previous.keys))
        else:
            rows, check = [None] * len(pairs), range(len(pairs))
        entries, live = self._entries, sup.live_changes
        stale: dict[int, int] = {}
        for index in check:
            job_id, version = pairs[index]
            entry = entries.get(job_id)
            if entry is not None and entry.version == version and live(job_id) is None:
                rows[index] = entry.data
            else:
                rows[index] = None
                stale[job_id] = index
        return rows, list(pairs), stale

    async def _refresh(
        self,
        sup: Supervisor,
        stale: dict[int, int],
        rows: list[bytes | None],
        keys: list[tuple[int, int]],
    ) -> bool:
        """Render the stale rows: active jobs from the supervisor's live record (as
        ``list_jobs`` does), the others from the store, a batch per thread hop. False if
        some were deleted meanwhile (their rows stay None)."""
        fetch, found = [], 0
        for job_id, index in stale.items():
            if sup.live_changes(job_id) is not None:  # get() answers it without awaiting
                rows[index] = self._live_row(sup, await sup.get(job_id))
                keys[index] = (job_id, LIVE)
            else:
                fetch.append(job_id)
        for start in range(0, len(fetch), RENDER_BATCH):
            for versioned in await sup.store.get_many(fetch[start : start + RENDER_BATCH]):
                index = stale[versioned.record.id]
                rows[index], keys[index] = self._stored_row(sup, versioned)
                found += 1
        return found == len(fetch)

    def _live_row(self, sup: Supervisor, record: JobRecord) -> bytes:
        progress = sup.progress_dict(record)
        key = _ENCODE(progress)
        entry = self._entries.get(record.id)
        if entry is not None and entry.live is record and entry.progress == key:
            return entry.data
        data = _render(record, progress)
        self._keep(record.id, _Rendered(data, live=record, progress=key))
        return data

    def _stored_row(self, sup: Supervisor, found: Versioned) -> tuple[bytes, tuple[int, int]]:
        record = found.record
        data = _render(record, sup.progress_dict(record))
        if sup.live_changes(record.id) is not None:  # its progress is not the row's
            return data, (record.id, LIVE)
        self._keep(record.id, _Rendered(data, version=found.version))
        return data, (record.id, found.version)

    def _keep(self, job_id: int, entry: _Rendered) -> None:
        """Cache ``entry`` unless that would pass the budget (then it is served uncached:
        evicting instead would make a listing larger than the budget miss every row)."""
        old = self._entries.pop(job_id, None)
        if old is not None:
            self._bytes -= len(old.data)
        if self._bytes + len(entry.data) <= self.max_bytes:
            self._entries[job_id] = entry
            self._bytes += len(entry.data)

    async def _sweep(self) -> None:
        existing = {job_id for job_id, _ in await self._sup.store.versions()}
        for job_id in [job_id for job_id in self._entries if job_id not in existing]:
            self._bytes -= len(self._entries.pop(job_id).data)


def summary(record: JobRecord, progress: dict[str, Any]) -> dict[str, Any]:
    """The summary dict for ``record``; Completed always reports 100 percent."""
    stored = progress.get("percent")
    percent = 100 if record.status is JobStatus.COMPLETED else int(stored or 0)
    hidden = job_secrets(record.request)
    return {
        "job_id": record.id,
        "argument": public_argument(record.argv, hidden),
        "status": record.status.value,
        "timestamp": record.started_at,
        "exit_code": record.exit_code,
        "inference_progress_pct": percent,
        "created_at": record.created_at,
        "queued_at": record.queued_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "reason": None if record.reason is None else mask_text(record.reason, hidden),
        "resumed_from": record.resumed_from,
        "attempts": record.attempts,
        "retry_at": record.retry_at,
        "gpus": record.gpus,
        "progress": mask_json({**progress, "percent": percent}, hidden),  # phase names are log text
        "request": public_request(record.request, hidden),
        "sweep_id": record.sweep_id,
        "sweep_cell": None if record.sweep_cell is None else mask_text(record.sweep_cell, hidden),
    }


def _render(record: JobRecord, progress: dict[str, Any]) -> bytes:
    return _ENCODE(summary(record, progress)).encode()


def _tail(total: int) -> bytes:
    return b'],"total":%d}\n' % total


def _present(
    rows: list[bytes | None], keys: list[tuple[int, int]]
) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Leave out the rows of jobs deleted while the listing was rendered."""
    kept = [index for index, row in enumerate(rows) if row is not None]
    return [cast(bytes, rows[i]) for i in kept], [keys[i] for i in kept]
