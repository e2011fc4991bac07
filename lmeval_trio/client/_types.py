"""What the client returns besides the server's schemas: errors and follow-stream events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from lmeval_trio.http.schemas import JobSummary
from lmeval_trio.jobs.status import JobStatus


class ClientError(Exception):
    """Base of everything the client raises."""


class ServerUnreachable(ClientError):
    """No usable answer: connection refused, a timeout, or a connection dropped mid-way."""

    def __init__(self, url: str, cause: Exception) -> None:
        reason = str(cause) or type(cause).__name__
        super().__init__(f"cannot reach the lmeval-trio server at {url}: {reason}")
        self.url = url
        self.cause = cause


class ApiError(ClientError):
    """The server answered with an error status; ``detail`` is its explanation."""

    def __init__(
        self, status_code: int, detail: Any, field: str | None = None, rule: str | None = None
    ) -> None:
        super().__init__(f"HTTP {status_code}: {describe_detail(detail)}")
        self.status_code = status_code
        self.detail = detail
        self.field = field
        self.rule = rule


def describe_detail(detail: Any) -> str:
    """One readable line from an error ``detail`` (422 details are lists of field errors)."""
    if isinstance(detail, list):
        return "; ".join(_field_error(item) for item in detail)
    return str(detail)


def _field_error(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(p) for p in item.get("loc", []) if p not in ("body", "query", "header"))
    message = str(item.get("msg", item))
    return f"{where}: {message}" if where else message


def api_error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        return ApiError(response.status_code, body["detail"], body.get("field"), body.get("rule"))
    text = response.text.strip()[:500] or response.reason_phrase
    return ApiError(response.status_code, text)


# -- event models -------------------------------------------------------------------------


class Phase(BaseModel):
    """One request phase of a run (loglikelihood, generate_until, ...)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    n: int = 0
    total: int = 0
    rate_per_s: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None


class Progress(BaseModel):
    """A job's inference progress: a summary's ``progress`` and every progress event."""

    model_config = ConfigDict(extra="ignore")

    percent: int = 0
    phase: str | None = None
    n: int | None = None
    total: int | None = None
    rate_per_s: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    phases: list[Phase] = []


@dataclass(frozen=True)
class StatusEvent:
    """The job's state changed. ``job.progress`` is empty: progress has its own events."""

    job: JobSummary


@dataclass(frozen=True)
class ProgressEvent:
    job_id: int
    progress: Progress


@dataclass(frozen=True)
class LogEvent:
    """New complete lines of one log; ``event_id`` resumes the stream after them."""

    stream: str
    offset: int
    lines: list[str]
    event_id: str | None


@dataclass(frozen=True)
class EndEvent:
    """The job is over (``status``), or was deleted (``status`` None, ``reason`` "deleted")."""

    job_id: int
    status: JobStatus | None
    reason: str | None = None


JobEvent = StatusEvent | ProgressEvent | LogEvent | EndEvent


@dataclass(frozen=True)
class JobsChanged:
    """Some job changed (``GET /events``); ``counts`` are jobs by status."""

    version: int
    counts: dict[str, int]


@dataclass(frozen=True)
class LogLine:
    stream: str
    text: str
