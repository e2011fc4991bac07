"""What a job produced: bounded log reads, a live event stream, results and artifacts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio
from pydantic import BaseModel, Field
from quart import Blueprint, Response, jsonify, make_response, request
from quart_schema import document_querystring, document_response, tag
from werkzeug.exceptions import NotFound

from lmeval_trio.errors import Conflict
from lmeval_trio.http import schemas
from lmeval_trio.http.download import file_response
from lmeval_trio.http.events import event_stream, jobs_stream, parse_last_event_id
from lmeval_trio.http.params import bool_arg, choice_arg, int_arg, supervisor
from lmeval_trio.jobs.status import TERMINAL
from lmeval_trio.outputs import results
from lmeval_trio.outputs.logs import collapse_redraws, read_range
from lmeval_trio.policy.secrets import margin_bytes, mask_json

MAX_LOG_READ_BYTES = 1024 * 1024
STREAMS = ("stdout", "stderr")


class LogQuery(BaseModel):
    stream: str = Field("stderr", pattern="^(stdout|stderr)$")
    offset: int = Field(0, ge=0, le=2**62)
    limit: int = Field(64 * 1024, ge=1, le=MAX_LOG_READ_BYTES)
    tail: int | None = Field(None, ge=1, le=MAX_LOG_READ_BYTES)


def blueprint() -> Blueprint:
    bp = Blueprint("outputs", __name__)

    @bp.get("/job/<int:job_id>/logs")
    @tag(["outputs"])
    @document_querystring(LogQuery)
    @document_response(schemas.LogChunkOut, 200)
    @document_response(schemas.Error, 404)
    @document_response(schemas.Error, 422)
    async def logs(job_id: int) -> Response:
        """A byte range of a log: ``offset``/``limit``, or the last ``tail`` bytes.
        ``lines`` holds the text with tqdm redraws collapsed to their last state. Offsets
        count the file's bytes; a secret, or the part of one in the range, shows as ***."""
        sup = supervisor()
        record = await sup.get(job_id)
        stream = choice_arg("stream", "stderr", STREAMS)
        limit = int_arg("limit", 64 * 1024, minimum=1, maximum=MAX_LOG_READ_BYTES) or 1
        tail = int_arg("tail", None, minimum=1, maximum=MAX_LOG_READ_BYTES)
        offset = int_arg("offset", 0, minimum=0, maximum=2**62) or 0
        if tail is not None:
            offset, limit = -tail, tail
        hidden = await sup.output_secrets(record)
        chunk = await trio.to_thread.run_sync(
            read_range, record.log_path(stream), offset, limit, margin_bytes(hidden)
        )
        text = chunk.masked_text(hidden)
        return jsonify(
            {
                "job_id": job_id,
                "stream": stream,
                "offset": chunk.offset,
                "next_offset": chunk.next_offset,
                "size": chunk.size,
                "text": text,
                "lines": collapse_redraws(text),
            }
        )

    @bp.get("/job/<int:job_id>/events")
    @tag(["outputs"])
    async def events(job_id: int) -> Response:
        """Server-Sent Events: ``status``, ``progress`` (at most 4/s) and ``log`` events until
        the job ends, then ``end``. Reconnect with Last-Event-ID to continue the logs;
        ``logs=false`` leaves the log events out (status and progress only)."""
        sup = supervisor()
        await sup.get(job_id)
        offsets = parse_last_event_id(
            request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
        )
        logs = bool_arg("logs", True)
        return await _stream_response(
            event_stream(sup, job_id, offsets, logs=logs), {"X-Accel-Buffering": "no"}
        )

    @bp.get("/events")
    @tag(["outputs"])
    async def all_events() -> Response:
        """Server-Sent Events: a ``jobs`` event (counts by status) whenever any job changes."""
        return await _stream_response(jobs_stream(supervisor()), {})

    @bp.get("/job/<int:job_id>/results")
    @tag(["outputs"])
    @document_response(schemas.JobResults, 200)
    @document_response(schemas.Error, 404)
    @document_response(schemas.Error, 409)
    async def job_results(job_id: int) -> Response:
        """The parsed lm-eval results plus a flat metrics table."""
        record = await supervisor().get(job_id)
        if record.status not in TERMINAL:
            raise Conflict(f"job {job_id} is {record.status.value}; results come when it ends")
        data: dict[str, Any] = await trio.to_thread.run_sync(results.load_results, record)
        data["status"] = record.status.value
        return jsonify(mask_json(data, await supervisor().output_secrets(record)))

    @bp.get("/job/<int:job_id>/artifacts")
    @tag(["outputs"])
    @document_response(schemas.ArtifactList, 200)
    @document_response(schemas.Error, 404)
    async def artifacts(job_id: int) -> Response:
        """The job's files (logs, results, samples, cache) with their sizes."""
        record = await supervisor().get(job_id)
        found = await trio.to_thread.run_sync(results.list_artifacts, record)
        return jsonify(
            {
                "job_id": job_id,
                "artifacts": [
                    {
                        "name": a.name,
                        "size_bytes": a.size_bytes,
                        "url": f"/job/{job_id}/artifacts/{a.name}",
                    }
                    for a in found
                ],
            }
        )

    @bp.get("/job/<int:job_id>/artifacts/<path:name>")
    @tag(["outputs"])
    async def artifact(job_id: int, name: str) -> Response:
        """Download one artifact (streamed from disk)."""
        record = await supervisor().get(job_id)
        found = await trio.to_thread.run_sync(results.resolve_artifact, record, name)
        if found is None:
            raise NotFound(f"job {job_id} has no artifact {name!r}")
        hidden = await supervisor().output_secrets(record)
        try:
            response = await file_response(found.path, hidden)
        except OSError:  # removed (or replaced by a folder) since it was listed
            raise NotFound(f"job {job_id} has no artifact {name!r}") from None
        response.timeout = None
        # Logs grow and may need a key: never from a shared or stale cache.
        response.headers["Cache-Control"] = "private, no-cache"
        return response

    return bp


async def _stream_response(events: AsyncIterator[bytes], headers: dict[str, str]) -> Response:
    """An event stream; a HEAD gets its headers at once (the stream would never end, and a
    HEAD answer has no body to wait for)."""
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
    if request.method == "HEAD":
        return Response(b"", 200, headers)  # the generator, never started, just goes away
    response = await make_response(events, 200, headers)
    response.timeout = None  # type: ignore[union-attr]
    return response  # type: ignore[return-value]
