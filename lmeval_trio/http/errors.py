"""Every error as JSON with a ``detail`` (what the original's FastAPI clients read).

422 bodies keep FastAPI's shape, a list of ``{loc, msg, type}``, so a client that printed the
original's validation errors prints ours; other errors carry a sentence, and policy refusals
also name the ``field`` and the ``rule``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pydantic import ValidationError
from quart import Quart, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from lmeval_trio.engine.catalog import CatalogUnavailable
from lmeval_trio.engine.preflight import EndpointDown
from lmeval_trio.engine.sweeps import SweepNotFound, SweepRejected
from lmeval_trio.engine.task_checks import TaskRefused
from lmeval_trio.errors import (
    Conflict,
    InvalidParameter,
    JobNotFound,
    NotAccepting,
    QueueFull,
)
from lmeval_trio.harness.request_model import RequestRejected
from lmeval_trio.http.params import running_supervisor
from lmeval_trio.outputs.results import ResultsUnavailable
from lmeval_trio.outputs.samples_index import SamplesUnavailable
from lmeval_trio.policy.rules import MissingPath, PolicyViolation

log = logging.getLogger("lmeval_trio.http")
#: Set on ``g`` when authentication refused the request (its body is then never read).
UNAUTHENTICATED = "lmeval_unauthenticated"
#: Set on ``g`` once a route has read the whole request body (nothing left to drain).
BODY_READ = "lmeval_body_read"


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
    supervisor = running_supervisor()
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
    if g.get(BODY_READ, False):  # the route read it all: a second read only costs
        return response
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


def _sentence(error: Exception) -> tuple[Any, dict[str, Any]]:
    return str(error), {}


@dataclass(frozen=True)
class Answer:
    """How one exception class is answered: status, body, refusal reason, Retry-After."""

    status: int
    body: Callable[[Exception], tuple[Any, dict[str, Any]]] = _sentence  # detail, more fields
    reason: str | None = None  # the refusals metric's label (default: by status)
    retry_after_s: int | None = None


def _validation(error: Exception) -> tuple[Any, dict[str, Any]]:
    return field_errors("body", cast(ValidationError, error)), {}


def _parameter(error: Exception) -> tuple[Any, dict[str, Any]]:
    bad = cast(InvalidParameter, error)
    return [{"loc": [bad.location, bad.name], "msg": bad.message, "type": "value_error"}], {}


def _rejected(error: Exception) -> tuple[Any, dict[str, Any]]:
    bad = cast(RequestRejected, error)
    loc = ["body", bad.field] if bad.field else ["body"]
    msg = f"lm-eval rejects this: {bad.message}"
    return [{"loc": loc, "msg": msg, "type": "lm_eval_rejected"}], {}


def _missing(error: Exception) -> tuple[Any, dict[str, Any]]:
    bad = cast(MissingPath, error)
    return [{"loc": ["body", bad.field], "msg": bad.message, "type": "missing_path"}], {}


def _policy(error: Exception) -> tuple[Any, dict[str, Any]]:
    refused = cast(PolicyViolation, error)
    return str(refused), {"field": refused.field, "rule": refused.rule}


def _tasks(error: Exception) -> tuple[Any, dict[str, Any]]:
    bad = cast(TaskRefused, error)
    return [{"loc": ["body", bad.field], "msg": bad.message, "type": bad.kind}], dict(bad.extra)


def _endpoint(error: Exception) -> tuple[Any, dict[str, Any]]:
    bad = cast(EndpointDown, error)
    return [{"loc": ["body", bad.field], "msg": bad.message, "type": "endpoint"}], {}


def _queue_full(error: Exception) -> tuple[Any, dict[str, Any]]:
    return str(error), {"rule": "LMEVAL_MAX_QUEUED_JOBS"}


def _store_fault(error: Exception) -> tuple[Any, dict[str, Any]]:
    # A full disk or a read-only database: nothing was half-done (the supervisor undoes
    # or retries), and the client may retry once the operator has freed the store.
    log.error("the job store refused a request's write: %s", error)
    return "the job store cannot take writes right now; retry later", {}


def _sweep_rejected(error: Exception) -> tuple[Any, dict[str, Any]]:
    return cast(SweepRejected, error).errors, {}


def _undecodable(error: Exception) -> tuple[Any, dict[str, Any]]:
    # Raised while decoding a body: bytes that are not UTF-8, or JSON nested thousands of
    # levels deep. (Quart's get_json(silent=True) lets both through.)
    log.warning("refused an undecodable request body: %s", error)
    return [{"loc": ["body"], "msg": f"undecodable JSON: {error}", "type": "json_invalid"}], {}


#: Exception class -> answer; an exception takes the entry of its nearest class in this table
#: (NotResumable is a Conflict). Anything else is a logged 500.
ANSWERS: dict[type[Exception], Answer] = {
    ValidationError: Answer(422, _validation),
    InvalidParameter: Answer(422, _parameter),
    RequestRejected: Answer(422, _rejected),
    MissingPath: Answer(422, _missing),
    TaskRefused: Answer(422, _tasks),
    EndpointDown: Answer(422, _endpoint),
    RecursionError: Answer(422, _undecodable),
    UnicodeDecodeError: Answer(422, _undecodable),
    PolicyViolation: Answer(403, _policy, reason="policy"),
    JobNotFound: Answer(404),
    SweepNotFound: Answer(404),
    SweepRejected: Answer(422, _sweep_rejected),
    ResultsUnavailable: Answer(404),
    SamplesUnavailable: Answer(404),
    Conflict: Answer(409),
    QueueFull: Answer(429, _queue_full, retry_after_s=30),
    NotAccepting: Answer(503, retry_after_s=5),
    CatalogUnavailable: Answer(503, retry_after_s=30),
    sqlite3.Error: Answer(503, _store_fault, retry_after_s=30),
}


def _report(error: Exception) -> dict[str, Any]:
    """The admission report a refused submission carries (engine/admission_checks), if any."""
    report = getattr(error, "checks", None)
    return {"checks": report["checks"], "ok": False} if isinstance(report, dict) else {}


def answer_for(error: Exception) -> Answer | None:
    """The table's entry for the nearest class of ``error`` (None: not a mapped error)."""
    for cls in type(error).__mro__:
        found = ANSWERS.get(cls)
        if found is not None:
            return found
    return None


async def _answer(error: Exception) -> Response:
    answer = answer_for(error)
    assert answer is not None  # registered only for the table's classes
    detail, extra = answer.body(error)
    extra.update(_report(error))
    response = error_response(answer.status, detail, reason=answer.reason, **extra)
    if answer.retry_after_s is not None:
        response.headers["Retry-After"] = str(answer.retry_after_s)
    return response


def install(app: Quart) -> None:
    """Register the handlers on ``app``."""
    app.after_request(_drain_body)
    for cls in ANSWERS:
        app.register_error_handler(cls, _answer)

    @app.errorhandler(HTTPException)
    async def _http(error: HTTPException) -> Response:
        if error.code == 413:
            return _too_large()
        response = error_response(error.code or 500, error.description or error.name)
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error", exc_info=error)
        return error_response(500, "internal server error (logged on the server)")
