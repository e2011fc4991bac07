"""Every error as JSON with a ``detail`` (what the original's FastAPI clients read).

422 bodies keep FastAPI's shape, a list of ``{loc, msg, type}``, so a client that printed the
original's validation errors prints ours; other errors carry a sentence, and policy refusals
also name the ``field`` and the ``rule``.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from pydantic import ValidationError
from quart import Quart, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from lmeval_trio.engine.supervisor import (
    JobNotFound,
    NotAccepting,
    NotResumable,
    QueueFull,
)
from lmeval_trio.engine.sweeps import NothingToResume, SweepNotFound, SweepRejected
from lmeval_trio.harness.request_model import RequestRejected
from lmeval_trio.policy import MissingPath, PolicyViolation
from lmeval_trio.results import ResultsUnavailable

log = logging.getLogger("lmeval_trio.http")
#: Set on ``g`` when authentication refused the request (its body is then never read).
UNAUTHENTICATED = "lmeval_unauthenticated"


class InvalidParameter(Exception):
    """A bad query parameter or path value (422, naming it)."""

    def __init__(self, location: str, name: str, message: str) -> None:
        super().__init__(message)
        self.location = location
        self.name = name
        self.message = message


class Conflict(Exception):
    """The job is not in a state that allows this (409)."""


def error_response(
    status: int, detail: Any, *, reason: str | None = None, **extra: Any
) -> Response:
    """A JSON error; 4xx refusals (except 404) are counted by ``reason``."""
    response = jsonify({"detail": detail, **extra})
    response.status_code = status
    if 400 <= status < 500 and status != 404:
        count_refusal(reason or _REASONS.get(status, str(status)))
    return response


_REASONS = {
    401: "unauthenticated",
    403: "forbidden",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "queue_full",
}


def count_refusal(reason: str) -> None:
    """Feed the refusals metric of the app's supervisor (if it runs)."""
    supervisor = current_app.extensions.get("lmeval_trio.supervisor")
    if supervisor is not None:
        supervisor.metrics.refusals.labels(reason).inc()


def _too_large() -> Response:
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    detail = f"the request body exceeds {limit} bytes"
    response = error_response(413, detail, rule="LMEVAL_MAX_REQUEST_BYTES")
    response.headers["Connection"] = "close"  # the unread body would poison a kept-alive link
    return response


async def _drain_body(response: Response) -> Response:
    """Read what is left of the request body before answering, so that the connection can
    serve the next request (a 405 to a POST, say); the read is bounded by
    LMEVAL_BODY_READ_TIMEOUT_S, and a body too large or too slow closes the connection.

    A client without a valid key is answered at once and its connection closed, its body
    never read: otherwise a partial body would hold the connection (and a file descriptor)
    for as long as the client cared to trickle it."""
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if g.get(UNAUTHENTICATED, False):
        response.headers["Connection"] = "close"
        return response
    if chunked or (request.content_length or 0) > 0:
        try:
            await request.get_data()
        except HTTPException:
            response.headers["Connection"] = "close"
    return response


def field_errors(location: str, error: ValidationError) -> list[dict[str, Any]]:
    return [
        {
            "loc": [location, *item["loc"]],
            "msg": item["msg"],
            "type": item["type"],
        }
        for item in error.errors(include_url=False, include_input=False)
    ]


def install(app: Quart) -> None:
    """Register the handlers on ``app``."""
    app.after_request(_drain_body)

    @app.errorhandler(ValidationError)
    async def _validation(error: ValidationError) -> Response:
        return error_response(422, field_errors("body", error))

    @app.errorhandler(InvalidParameter)
    async def _parameter(error: InvalidParameter) -> Response:
        detail = [
            {"loc": [error.location, error.name], "msg": error.message, "type": "value_error"}
        ]
        return error_response(422, detail)

    @app.errorhandler(RequestRejected)
    async def _rejected(error: RequestRejected) -> Response:
        loc = ["body", error.field] if error.field else ["body"]
        detail = [
            {
                "loc": loc,
                "msg": f"lm-eval rejects this: {error.message}",
                "type": "lm_eval_rejected",
            }
        ]
        return error_response(422, detail)

    @app.errorhandler(MissingPath)
    async def _missing(error: MissingPath) -> Response:
        detail = [{"loc": ["body", error.field], "msg": error.message, "type": "missing_path"}]
        return error_response(422, detail)

    @app.errorhandler(PolicyViolation)
    async def _policy(error: PolicyViolation) -> Response:
        return error_response(403, str(error), reason="policy", field=error.field, rule=error.rule)

    @app.errorhandler(JobNotFound)
    async def _not_found(error: JobNotFound) -> Response:
        return error_response(404, str(error))

    @app.errorhandler(SweepNotFound)
    async def _no_sweep(error: SweepNotFound) -> Response:
        return error_response(404, str(error))

    @app.errorhandler(SweepRejected)
    async def _sweep_rejected(error: SweepRejected) -> Response:
        return error_response(422, error.errors)

    @app.errorhandler(NothingToResume)
    async def _nothing_to_resume(error: NothingToResume) -> Response:
        return error_response(409, str(error))

    @app.errorhandler(ResultsUnavailable)
    async def _no_results(error: ResultsUnavailable) -> Response:
        return error_response(404, str(error))

    @app.errorhandler(NotResumable)
    async def _not_resumable(error: NotResumable) -> Response:
        return error_response(409, str(error))

    @app.errorhandler(Conflict)
    async def _conflict(error: Conflict) -> Response:
        return error_response(409, str(error))

    @app.errorhandler(QueueFull)
    async def _queue_full(error: QueueFull) -> Response:
        response = error_response(429, str(error), rule="LMEVAL_MAX_QUEUED_JOBS")
        response.headers["Retry-After"] = "30"
        return response

    @app.errorhandler(NotAccepting)
    async def _not_accepting(error: NotAccepting) -> Response:
        response = error_response(503, str(error))
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(sqlite3.Error)
    async def _store_fault(error: sqlite3.Error) -> Response:
        # A full disk or a read-only database: nothing was half-done (the supervisor undoes
        # or retries), and the client may retry once the operator has freed the store.
        log.error("the job store refused a request's write: %s", error)
        response = error_response(503, "the job store cannot take writes right now; retry later")
        response.headers["Retry-After"] = "30"
        return response

    @app.errorhandler(HTTPException)
    async def _http(error: HTTPException) -> Response:
        if error.code == 413:
            return _too_large()
        response = error_response(error.code or 500, error.description or error.name)
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(RecursionError)
    @app.errorhandler(UnicodeDecodeError)
    async def _undecodable(error: RecursionError | UnicodeDecodeError) -> Response:
        # Raised while decoding a body: bytes that are not UTF-8, or JSON nested thousands of
        # levels deep. (Quart's get_json(silent=True) lets both through.)
        log.warning("refused an undecodable request body: %s", error)
        detail = [{"loc": ["body"], "msg": f"undecodable JSON: {error}", "type": "json_invalid"}]
        return error_response(422, detail)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error", exc_info=error)
        return error_response(500, "internal server error (logged on the server)")
