"""The HTTP protocol without I/O: each route as a Call, SSE decoding, resumable follows and
log paging. Both clients drive these, so they differ only in how they wait."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, cast
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from lmeval_trio.client._types import (
    EndEvent,
    JobEvent,
    JobsChanged,
    LogEvent,
    LogLine,
    Progress,
    ProgressEvent,
    ServerUnreachable,
    StatusEvent,
    api_error,
)
from lmeval_trio.http.schemas import (
    ArtifactList,
    BulkResult,
    CheckReport,
    Comparison,
    DeliveryList,
    FlipsPage,
    JobDetail,
    JobList,
    JobResults,
    JobSummary,
    LogChunkOut,
    SamplesPage,
    StopResult,
    Submitted,
    SweepDetail,
    SweepList,
    SweepResults,
    SweepSubmitted,
    TaskDetail,
    TaskList,
)
from lmeval_trio.jobs.status import JobStatus

URL_ENV = "LMEVAL_URL"
API_KEY_ENV = "LMEVAL_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8080"
# Generous read timeout: event streams send a keep-alive every 15 s, and stopping a job
# waits out its SIGTERM grace period.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
MAX_LOG_PAGE = 1024 * 1024  # the server's largest /logs read
Stream = Literal["stdout", "stderr"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, str | int] | None = None
    body: Any = None
    ok: tuple[int, ...] = (200,)

    def result(self, response: httpx.Response) -> T:
        if response.status_code not in self.ok:
            raise api_error(response)
        return self.parse(response)


def _compare_params(
    job_ids: Iterable[int], baseline: int | None, alpha: float | None, sweep_id: int | None
) -> dict[str, str | int]:
    params: dict[str, str | int] = {}
    if sweep_id is not None:
        params["sweep"] = sweep_id
    else:
        params["jobs"] = ",".join(str(job_id) for job_id in job_ids)
    if baseline is not None:
        params["baseline"] = baseline
    if alpha is not None:
        params["alpha"] = repr(alpha)
    return params


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        return model.model_validate(response.json())

    return parse


def _json_object(response: httpx.Response) -> dict[str, Any]:
    data: dict[str, Any] = response.json()
    return data


def _request_body(request: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(request, BaseModel):
        return request.model_dump(mode="json", exclude_none=True)
    return dict(request)


def _status_param(status: JobStatus | str | Iterable[JobStatus | str]) -> str:
    if isinstance(status, str):  # JobStatus is a str too
        return str(status)
    return ",".join(str(s) for s in status)


class Routes:
    """Every route as a Call; the clients only send them."""

    @staticmethod
    def submit(request: Mapping[str, Any] | BaseModel) -> Call[Submitted]:
        return Call("POST", "/job", _model(Submitted), body=_request_body(request))

    @staticmethod
    def dry_run(request: Mapping[str, Any] | BaseModel) -> Call[CheckReport]:
        body = _request_body(request)
        params: dict[str, str | int] = {"dry_run": "true"}
        return Call("POST", "/job", _model(CheckReport), params=params, body=body)

    @staticmethod
    def tasks(
        query: str | None,
        kind: str | None,
        output_type: str | None,
        limit: int | None,
        offset: int,
        include_path: str | None,
    ) -> Call[TaskList]:
        wanted = {"q": query, "kind": kind, "output_type": output_type, "limit": limit}
        params: dict[str, str | int] = {k: v for k, v in wanted.items() if v is not None}
        if offset:
            params["offset"] = offset
        if include_path:
            params["include_path"] = include_path
        return Call("GET", "/tasks", _model(TaskList), params=params)

    @staticmethod
    def task(name: str, include_path: str | None) -> Call[TaskDetail]:
        params: dict[str, str | int] = {"include_path": include_path} if include_path else {}
        path = f"/tasks/{quote(name, safe='')}"
        return Call("GET", path, _model(TaskDetail), params=params)

    @staticmethod
    def list_jobs(
        status: JobStatus | str | Iterable[JobStatus | str] | None,
        active_only: bool,
        limit: int | None,
        offset: int,
        newest_first: bool = False,
    ) -> Call[JobList]:
        params: dict[str, str | int] = {"order": "desc"} if newest_first else {}
        if status is not None:
            params["status"] = _status_param(status)
        if active_only:
            params["include_completed"] = "false"
        if limit is not None:
            params["limit"] = limit
        if offset:
            params["offset"] = offset
        return Call("GET", "/jobs", _model(JobList), params=params)

    @staticmethod
    def get_job(job_id: int) -> Call[JobDetail]:
        return Call("GET", f"/job/{job_id}", _model(JobDetail))

    @staticmethod
    def stop(job_id: int) -> Call[StopResult]:
        return Call("POST", f"/job/{job_id}/stop", _model(StopResult))

    @staticmethod
    def stop_all() -> Call[BulkResult]:
        return Call("POST", "/jobs/stop", _model(BulkResult))

    @staticmethod
    def delete(job_id: int) -> Call[BulkResult]:
        return Call("DELETE", f"/job/{job_id}", _model(BulkResult))

    @staticmethod
    def delete_all() -> Call[BulkResult]:
        return Call("DELETE", "/jobs", _model(BulkResult))

    @staticmethod
    def resume(job_id: int) -> Call[Submitted]:
        return Call("POST", f"/job/{job_id}/resume", _model(Submitted))

    @staticmethod
    def logs(
        job_id: int, stream: Stream, offset: int, limit: int | None, tail: int | None
    ) -> Call[LogChunkOut]:
        params: dict[str, str | int] = {"stream": stream, "offset": offset}
        if limit is not None:
            params["limit"] = limit
        if tail is not None:
            params["tail"] = tail
        return Call("GET", f"/job/{job_id}/logs", _model(LogChunkOut), params=params)

    @staticmethod
    def results(job_id: int) -> Call[JobResults]:
        return Call("GET", f"/job/{job_id}/results", _model(JobResults))

    @staticmethod
    def samples(job_id: int, **query: str | int | bool | None) -> Call[SamplesPage]:
        """A page of a job's samples; ``query`` as GET /job/{id}/samples names it."""
        params: dict[str, str | int] = {}
        for name, value in query.items():
            if value is not None:
                params[name] = str(value).lower() if isinstance(value, bool) else value
        return Call("GET", f"/job/{job_id}/samples", _model(SamplesPage), params=params)

    @staticmethod
    def deliveries(job_id: int) -> Call[DeliveryList]:
        return Call("GET", f"/job/{job_id}/deliveries", _model(DeliveryList))

    @staticmethod
    def artifacts(job_id: int) -> Call[ArtifactList]:
        return Call("GET", f"/job/{job_id}/artifacts", _model(ArtifactList))

    @staticmethod
    def artifact(job_id: int, name: str) -> Call[bytes]:
        path = f"/job/{job_id}/artifacts/{quote(name, safe='/')}"
        return Call("GET", path, lambda response: response.content)

    @staticmethod
    def submit_sweep(sweep: Mapping[str, Any]) -> Call[SweepSubmitted]:
        return Call("POST", "/sweeps", _model(SweepSubmitted), body=dict(sweep))

    @staticmethod
    def list_sweeps(limit: int | None, offset: int, newest_first: bool) -> Call[SweepList]:
        params: dict[str, str | int] = {"order": "desc"} if newest_first else {}
        if limit is not None:
            params["limit"] = limit
        if offset:
            params["offset"] = offset
        return Call("GET", "/sweeps", _model(SweepList), params=params)

    @staticmethod
    def get_sweep(sweep_id: int) -> Call[SweepDetail]:
        return Call("GET", f"/sweeps/{sweep_id}", _model(SweepDetail))

    @staticmethod
    def sweep_results(sweep_id: int) -> Call[SweepResults]:
        return Call("GET", f"/sweeps/{sweep_id}/results", _model(SweepResults))

    @staticmethod
    def sweep_results_csv(sweep_id: int) -> Call[str]:
        path = f"/sweeps/{sweep_id}/results"
        return Call("GET", path, lambda response: response.text, params={"format": "csv"})

    @staticmethod
    def stop_sweep(sweep_id: int) -> Call[BulkResult]:
        return Call("POST", f"/sweeps/{sweep_id}/stop", _model(BulkResult))

    @staticmethod
    def delete_sweep(sweep_id: int) -> Call[BulkResult]:
        return Call("DELETE", f"/sweeps/{sweep_id}", _model(BulkResult))

    @staticmethod
    def resume_sweep(sweep_id: int) -> Call[BulkResult]:
        return Call("POST", f"/sweeps/{sweep_id}/resume", _model(BulkResult))

    @staticmethod
    def compare(
        job_ids: Iterable[int], baseline: int | None, alpha: float | None, sweep_id: int | None
    ) -> Call[Comparison]:
        return Call(
            "GET",
            "/compare",
            _model(Comparison),
            params=_compare_params(job_ids, baseline, alpha, sweep_id),
        )

    @staticmethod
    def compare_flips(
        job_ids: tuple[int, int],
        task: str,
        filter_name: str | None,
        metric: str | None,
        offset: int,
        limit: int,
    ) -> Call[FlipsPage]:
        params: dict[str, str | int] = {
            "jobs": ",".join(map(str, job_ids)),
            "task": task,
            "offset": offset,
            "limit": limit,
        }
        if filter_name:
            params["filter"] = filter_name
        if metric:
            params["metric"] = metric
        return Call("GET", "/compare/flips", _model(FlipsPage), params=params)

    @staticmethod
    def compare_report(
        job_ids: Iterable[int], baseline: int | None, alpha: float | None
    ) -> Call[str]:
        params = _compare_params(job_ids, baseline, alpha, None)
        return Call("GET", "/compare/report", lambda response: response.text, params=params)

    @staticmethod
    def job_report(job_id: int) -> Call[str]:
        return Call("GET", f"/job/{job_id}/report", lambda response: response.text)

    @staticmethod
    def health() -> Call[dict[str, Any]]:
        return Call("GET", "/healthz", _json_object, ok=(200, 503))

    @staticmethod
    def ready() -> Call[bool]:
        return Call("GET", "/readyz", lambda response: response.status_code == 200, ok=(200, 503))

    @staticmethod
    def metrics() -> Call[str]:
        return Call("GET", "/metrics", lambda response: response.text)

    @staticmethod
    def config() -> Call[dict[str, Any]]:
        return Call("GET", "/config", _json_object)

    @staticmethod
    def openapi() -> Call[dict[str, Any]]:
        return Call("GET", "/openapi.json", _json_object)


@dataclass
class SseDecoder:
    """Server-Sent Events decoding: lines in, (kind, data, last id) out; comments skipped."""

    kind: str = "message"
    data: list[str] = field(default_factory=list)
    last_id: str | None = None

    def feed(self, line: str) -> tuple[str, str, str | None] | None:
        if not line:
            frame = (self.kind, "\n".join(self.data), self.last_id) if self.data else None
            self.kind, self.data = "message", []
            return frame
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.kind = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            self.last_id = value
        return None


def job_event(kind: str, data: str, event_id: str | None) -> JobEvent | None:
    """The typed event; None for kinds this client does not know (a newer server)."""
    payload = json.loads(data)
    if kind == "status":
        return StatusEvent(JobSummary.model_validate({"progress": {}, **payload}))
    if kind == "progress":
        return ProgressEvent(payload["job_id"], Progress.model_validate(payload))
    if kind == "log":
        return LogEvent(payload["stream"], payload["offset"], payload["lines"], event_id)
    if kind == "end":
        status = payload.get("status")
        return EndEvent(
            payload["job_id"], JobStatus(status) if status else None, payload.get("reason")
        )
    return None


@dataclass
class Follow:
    """State of one followed job stream across reconnects (Last-Event-ID resumes the logs)."""

    job_id: int
    last_event_id: str | None
    reconnects: int
    failures: int = 0
    ended: bool = False
    sse: SseDecoder = field(default_factory=SseDecoder)

    @property
    def path(self) -> str:
        return f"/job/{self.job_id}/events"

    def headers(self) -> dict[str, str]:
        self.sse = SseDecoder(last_id=self.last_event_id)
        return {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}

    def feed(self, line: str) -> JobEvent | None:
        frame = self.sse.feed(line)
        event = job_event(*frame) if frame else None
        if event is not None:
            self.failures = 0
            self.ended = isinstance(event, EndEvent)
            if isinstance(event, LogEvent):
                self.last_event_id = event.event_id
        return event

    def dropped(self, error: ServerUnreachable) -> None:
        """The stream broke before its end: reconnect, unless it keeps breaking."""
        self.failures += 1
        if self.failures > self.reconnects:
            raise error


@dataclass
class LogPager:
    """Reads a whole log page by page, keeping lines whole across page boundaries."""

    job_id: int
    stream: Stream
    offset: int = 0
    partial: str = ""
    done: bool = False

    def call(self) -> Call[LogChunkOut]:
        return Routes.logs(self.job_id, self.stream, self.offset, MAX_LOG_PAGE, None)

    def take(self, chunk: LogChunkOut) -> list[str]:
        lines = list(chunk.lines)
        if lines:
            lines[0] = self.partial + lines[0]
            self.partial = "" if lines[-1].endswith(("\n", "\r")) else lines.pop()
        self.offset = chunk.next_offset
        self.done = chunk.next_offset >= chunk.size or chunk.next_offset == chunk.offset
        if self.done and self.partial:
            lines.append(self.partial)
        return lines


def log_lines(event: JobEvent, streams: tuple[str, ...]) -> list[LogLine]:
    if isinstance(event, LogEvent) and event.stream in streams:
        return [LogLine(event.stream, line) for line in event.lines]
    return []


def jobs_changed(kind: str, data: str) -> JobsChanged | None:
    if kind != "jobs":
        return None
    payload = json.loads(data)
    return JobsChanged(payload["version"], payload["counts"])


def closing_lines(response: httpx.Response) -> AsyncGenerator[str, None]:
    """httpx types aiter_lines() as a plain iterator; it is a generator we must close."""
    return cast(AsyncGenerator[str, None], response.aiter_lines())


@contextmanager
def reaching(url: str) -> Iterator[None]:
    try:
        yield
    except httpx.TransportError as error:
        raise ServerUnreachable(url, error) from error


class ClientBase:
    """URL, key and headers, from arguments or the environment."""

    def __init__(self, url: str | None, api_key: str | None, reconnects: int) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.headers = {"User-Agent": "lmeval-trio-client"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.reconnects = reconnects
