"""A job's Server-Sent Events stream: status changes, progress and new log lines.

Event ids are the two log offsets (``<stdout>-<stderr>``), so a client that reconnects with
Last-Event-ID continues the logs exactly where it left off; status and progress are state,
sent afresh on every connect. The stream waits on the job's change signal, never polls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.errors import InvalidParameter, JobNotFound
from lmeval_trio.http import strict_json
from lmeval_trio.http.params import ascii_int
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.outputs.logs import LogChunk, collapse_redraws, read_range
from lmeval_trio.policy.secrets import margin_bytes

STREAMS = ("stdout", "stderr")
CHUNK_BYTES = 64 * 1024
KEEPALIVE_S = 15.0
COALESCE_S = 0.25  # gather bursts of changes into one round of events (and rate-limit progress)


def parse_last_event_id(raw: str | None) -> dict[str, int]:
    if not raw:
        return dict.fromkeys(STREAMS, 0)
    parts = [ascii_int(part) for part in raw.split("-")]
    if len(parts) != 2 or parts[0] is None or parts[1] is None:
        raise InvalidParameter(
            "header", "Last-Event-ID", "expected '<stdout>-<stderr>' offsets in ASCII digits"
        )
    return {"stdout": parts[0], "stderr": parts[1]}


def _event(kind: str, data: Any, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {strict_json.dumps(data)}\n\n".encode()


async def event_stream(
    supervisor: Supervisor, job_id: int, offsets: dict[str, int], *, logs: bool = True
) -> AsyncIterator[bytes]:
    """Yield SSE frames until the job has ended (and, with ``logs``, its logs are drained)."""
    last_status: dict[str, Any] | None = None
    last_progress: dict[str, Any] | None = None
    hidden = _Secrets(supervisor)
    while True:
        pulse = supervisor.live_changes(job_id)
        version = pulse.version if pulse is not None else 0
        try:
            record = await supervisor.get(job_id)
        except JobNotFound:
            yield _event("end", {"job_id": job_id, "reason": "deleted"})
            return
        more = False
        for stream in STREAMS if logs else ():
            frame, offsets[stream], full = await _log_frame(
                record, stream, offsets[stream], hidden, ended=pulse is None
            )
            more = more or full
            if frame is not None:
                yield _event("log", frame, f"{offsets['stdout']}-{offsets['stderr']}")
        state = supervisor.listing.summary(record)
        progress = state.pop("progress")
        if state != last_status:
            last_status = state
            yield _event("status", state)
        if progress != last_progress:
            last_progress = progress
            yield _event("progress", {"job_id": job_id, **progress})
        if more:
            continue
        if pulse is None:
            yield _event("end", {"job_id": job_id, "status": record.status.value})
            return
        with trio.move_on_after(KEEPALIVE_S) as idle:
            await pulse.wait_past(version)
        if idle.cancelled_caught:
            yield b": keep-alive\n\n"
        await trio.sleep(COALESCE_S)


class _Secrets:
    """A job's secrets, read once (when its log first has bytes: by then the job has
    started, so its --config copy, whose credentials count too, exists)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self.known: tuple[str, ...] | None = None

    async def read(self, record: JobRecord) -> tuple[str, ...]:
        if self.known is None:
            self.known = await self._supervisor.output_secrets(record)
        return self.known


async def _log_frame(
    record: JobRecord, stream: str, offset: int, hidden: _Secrets, *, ended: bool
) -> tuple[dict[str, Any] | None, int, bool]:
    """New complete lines of one log from ``offset`` (and, once the job ``ended``, its
    unfinished last line), secrets masked even where one straddles the resumed offset:
    (frame or None, new offset, more?)."""
    path = record.log_path(stream)
    chunk = await _read(path, offset, hidden.known or ())
    if chunk.data and hidden.known is None:
        chunk = await _read(path, offset, await hidden.read(record))
    secrets = hidden.known or ()
    data = chunk.data
    full = len(data) >= CHUNK_BYTES - 4
    end_of_line = data.rfind(b"\n")
    if (full and end_of_line >= 0) or not (full or ended):
        # Whole lines only: a bar still being redrawn arrives once, in its last state, when
        # its line ends (the progress events carry it live meanwhile). A line longer than a
        # whole chunk goes out in pieces.
        data = data[: end_of_line + 1]
    if not data:
        return None, offset, False
    text = chunk.cut(len(data)).masked_text(secrets)
    frame = {"stream": stream, "offset": chunk.offset, "lines": collapse_redraws(text)}
    return frame, chunk.offset + len(data), full


async def _read(path: Path, offset: int, secrets: tuple[str, ...]) -> LogChunk:
    return await trio.to_thread.run_sync(
        read_range, path, offset, CHUNK_BYTES, margin_bytes(secrets)
    )


async def jobs_stream(supervisor: Supervisor) -> AsyncIterator[bytes]:
    """Yield a ``jobs`` event whenever any job changes (coalesced), for live job tables.

    The event carries the counts by status; clients re-read the page they show.
    """
    version = -1
    while True:
        current = supervisor.changed.version
        if current != version:
            version = current
            counts = await supervisor.listing.counts()
            yield _event(
                "jobs", {"version": version, "counts": {s.value: n for s, n in counts.items()}}
            )
        with trio.move_on_after(KEEPALIVE_S) as idle:
            await supervisor.changed.wait_past(version)
        if idle.cancelled_caught:
            yield b": keep-alive\n\n"
        await trio.sleep(COALESCE_S)
