"""The blocking client, for scripts and the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Literal, Self, overload

import httpx
from pydantic import BaseModel

from lmeval_trio.client._protocol import (
    DEFAULT_TIMEOUT,
    Call,
    ClientBase,
    Follow,
    LogPager,
    Routes,
    SseDecoder,
    Stream,
    T,
    jobs_changed,
    log_lines,
    reaching,
)
from lmeval_trio.client._types import (
    JobEvent,
    JobsChanged,
    LogLine,
    ServerUnreachable,
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
    LogChunkOut,
    Sample,
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


class Client(ClientBase):
    """The blocking client: same methods as AsyncClient, for scripts and the CLI."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        reconnects: int = 3,
    ) -> None:
        super().__init__(url, api_key, reconnects)
        self._http = httpx.Client(
            base_url=self.url, headers=self.headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        with reaching(self.url):
            response = self._http.request(
                call.method, call.path, params=call.params, json=call.body
            )
        return call.result(response)

    @overload
    def submit(
        self, request: Mapping[str, Any] | BaseModel, *, dry_run: Literal[False] = False
    ) -> Submitted: ...

    @overload
    def submit(
        self, request: Mapping[str, Any] | BaseModel, *, dry_run: Literal[True]
    ) -> CheckReport: ...

    def submit(
        self, request: Mapping[str, Any] | BaseModel, *, dry_run: bool = False
    ) -> Submitted | CheckReport:
        """Queue a job; ``request`` is lm-eval's flags as JSON (``tasks`` required). With
        ``dry_run=True`` run every admission check and return their report, queuing nothing."""
        if dry_run:
            return self._send(Routes.dry_run(request))
        return self._send(Routes.submit(request))

    def tasks(
        self,
        query: str | None = None,
        *,
        kind: str | None = None,
        output_type: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        include_path: str | None = None,
    ) -> TaskList:
        """``GET /tasks``: search the task catalog (or a task folder's own tasks)."""
        call = Routes.tasks(query, kind, output_type, limit, offset, include_path)
        return self._send(call)

    def task(self, name: str, *, include_path: str | None = None) -> TaskDetail:
        """``GET /tasks/{name}``: one task, group or tag with its config after includes."""
        return self._send(Routes.task(name, include_path))

    def list_jobs(
        self,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        *,
        active_only: bool = False,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> JobList:
        return self._send(Routes.list_jobs(status, active_only, limit, offset, newest_first))

    def get_job(self, job_id: int) -> JobDetail:
        return self._send(Routes.get_job(job_id))

    def stop(self, job_id: int) -> StopResult:
        return self._send(Routes.stop(job_id))

    def stop_all(self) -> BulkResult:
        return self._send(Routes.stop_all())

    def delete(self, job_id: int) -> BulkResult:
        return self._send(Routes.delete(job_id))

    def delete_all(self) -> BulkResult:
        return self._send(Routes.delete_all())

    def resume(self, job_id: int) -> Submitted:
        return self._send(Routes.resume(job_id))

    def submit_sweep(self, sweep: Mapping[str, Any]) -> SweepSubmitted:
        """Queue a sweep: ``name``, ``base`` and a ``matrix`` or ``cells`` (all or none)."""
        return self._send(Routes.submit_sweep(sweep))

    def list_sweeps(
        self, *, limit: int | None = None, offset: int = 0, newest_first: bool = False
    ) -> SweepList:
        return self._send(Routes.list_sweeps(limit, offset, newest_first))

    def get_sweep(self, sweep_id: int) -> SweepDetail:
        return self._send(Routes.get_sweep(sweep_id))

    def sweep_results(self, sweep_id: int) -> SweepResults:
        return self._send(Routes.sweep_results(sweep_id))

    def sweep_results_csv(self, sweep_id: int) -> str:
        return self._send(Routes.sweep_results_csv(sweep_id))

    def compare(
        self,
        job_ids: Iterable[int] = (),
        *,
        baseline: int | None = None,
        alpha: float | None = None,
        sweep_id: int | None = None,
    ) -> Comparison:
        """Jobs (or a sweep's cells) against a baseline: deltas, z tests, mismatches,
        paired comparisons (GET /compare)."""
        return self._send(Routes.compare(job_ids, baseline, alpha, sweep_id))

    def compare_flips(
        self,
        baseline: int,
        other: int,
        task: str,
        *,
        filter_name: str | None = None,
        metric: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> FlipsPage:
        """One page of the documents that flipped between two jobs on ``task``."""
        call = Routes.compare_flips((baseline, other), task, filter_name, metric, offset, limit)
        return self._send(call)

    def compare_report(
        self, job_ids: Iterable[int], *, baseline: int | None = None, alpha: float | None = None
    ) -> str:
        """The comparison as a self-contained HTML file."""
        return self._send(Routes.compare_report(job_ids, baseline, alpha))

    def job_report(self, job_id: int) -> str:
        """A job's results as a self-contained HTML file."""
        return self._send(Routes.job_report(job_id))

    def stop_sweep(self, sweep_id: int) -> BulkResult:
        return self._send(Routes.stop_sweep(sweep_id))

    def delete_sweep(self, sweep_id: int) -> BulkResult:
        return self._send(Routes.delete_sweep(sweep_id))

    def resume_sweep(self, sweep_id: int) -> BulkResult:
        """Run again the sweep's failed and stopped cells; the new job ids."""
        return self._send(Routes.resume_sweep(sweep_id))

    def logs(
        self,
        job_id: int,
        stream: Stream = "stderr",
        *,
        offset: int = 0,
        limit: int | None = None,
        tail: int | None = None,
    ) -> LogChunkOut:
        """One byte range of a log (``tail``: the last bytes)."""
        return self._send(Routes.logs(job_id, stream, offset, limit, tail))

    def results(self, job_id: int) -> JobResults:
        return self._send(Routes.results(job_id))

    def samples(
        self,
        job_id: int,
        task: str | None = None,
        *,
        correct: bool | None = None,
        q: str | None = None,
        filter: str | None = None,
        metric: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        offset: int | None = None,
    ) -> SamplesPage:
        """One page of a finished job's logged samples (``next_cursor`` leads on)."""
        return self._send(
            Routes.samples(
                job_id,
                task=task,
                correct=correct,
                q=q,
                filter=filter,
                metric=metric,
                limit=limit,
                cursor=cursor,
                offset=offset,
            )
        )

    def all_samples(
        self,
        job_id: int,
        task: str | None = None,
        *,
        correct: bool | None = None,
        q: str | None = None,
        filter: str | None = None,
        metric: str | None = None,
    ) -> Iterator[Sample]:
        """Every sample matching the filters, page by page along the cursors."""
        cursor: str | None = None
        while True:
            page = self.samples(
                job_id,
                task,
                correct=correct,
                q=q,
                filter=filter,
                metric=metric,
                limit=200,
                cursor=cursor,
            )
            yield from page.samples
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def deliveries(self, job_id: int) -> DeliveryList:
        """The job's webhook deliveries and exports, with their attempts."""
        return self._send(Routes.deliveries(job_id))

    def artifacts(self, job_id: int) -> ArtifactList:
        return self._send(Routes.artifacts(job_id))

    def artifact(self, job_id: int, name: str) -> bytes:
        return self._send(Routes.artifact(job_id, name))

    def health(self) -> dict[str, Any]:
        """The health report, healthy or not (503 is an answer here, not an error)."""
        return self._send(Routes.health())

    def ready(self) -> bool:
        return self._send(Routes.ready())

    def metrics(self) -> str:
        """Prometheus metrics, in the text exposition format."""
        return self._send(Routes.metrics())

    def config(self) -> dict[str, Any]:
        return self._send(Routes.config())

    def openapi(self) -> dict[str, Any]:
        return self._send(Routes.openapi())

    def read_log(self, job_id: int, stream: Stream = "stderr") -> Iterator[str]:
        """Every line of a log as it is now (tqdm redraws collapsed), page by page."""
        pager = LogPager(job_id, stream)
        while not pager.done:
            yield from pager.take(self._send(pager.call()))

    def events(self, job_id: int, *, last_event_id: str | None = None) -> Iterator[JobEvent]:
        """Follow a job until its end event, reconnecting (without repeating log lines) if
        the connection drops."""
        follow = Follow(job_id, last_event_id, self.reconnects)
        while not follow.ended:
            try:
                with self._http.stream("GET", follow.path, headers=follow.headers()) as response:
                    if response.status_code != 200:
                        response.read()
                        raise api_error(response)
                    for line in response.iter_lines():
                        event = follow.feed(line)
                        if event is not None:
                            yield event
                if not follow.ended:
                    follow.dropped(ServerUnreachable(self.url, EOFError("stream ended early")))
            except httpx.TransportError as error:
                follow.dropped(ServerUnreachable(self.url, error))

    def follow_logs(
        self, job_id: int, streams: tuple[Stream, ...] = ("stdout", "stderr")
    ) -> Iterator[LogLine]:
        """Every log line from the start, then new ones as they come, until the job ends."""
        for event in self.events(job_id):
            yield from log_lines(event, streams)

    def jobs_events(self) -> Iterator[JobsChanged]:
        """``GET /events``: one item whenever any job changes (runs until you stop)."""
        sse = SseDecoder()
        with reaching(self.url), self._http.stream("GET", "/events") as response:
            if response.status_code != 200:
                response.read()
                raise api_error(response)
            for line in response.iter_lines():
                frame = sse.feed(line)
                changed = jobs_changed(frame[0], frame[1]) if frame else None
                if changed is not None:
                    yield changed

    def wait(self, job_id: int) -> JobDetail:
        """Wait (on the event stream, not by polling) until the job ends; return it."""
        for _ in self.events(job_id):
            pass
        return self.get_job(job_id)
