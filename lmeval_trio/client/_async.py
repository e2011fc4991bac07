"""The async client: the same calls as Client, awaited; runs under trio or asyncio."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import aclosing
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
    closing_lines,
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


class AsyncClient(ClientBase):
    """The async client; works under trio and asyncio (httpx picks the running loop)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        reconnects: int = 3,
    ) -> None:
        super().__init__(url, api_key, reconnects)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call[T]) -> T:
        with reaching(self.url):
            response = await self._http.request(
                call.method, call.path, params=call.params, json=call.body
            )
        return call.result(response)

    @overload
    async def submit(
        self, request: Mapping[str, Any] | BaseModel, *, dry_run: Literal[False] = False
    ) -> Submitted: ...

    @overload
    async def submit(
        self, request: Mapping[str, Any] | BaseModel, *, dry_run: Literal[True]
    ) -> CheckReport: ...

    async def submit(
        self, request: Mapping[str, Any] | BaseModel, *, dry_run: bool = False
    ) -> Submitted | CheckReport:
        """Queue a job; ``request`` is lm-eval's flags as JSON (``tasks`` required). With
        ``dry_run=True`` run every admission check and return their report, queuing nothing."""
        if dry_run:
            return await self._send(Routes.dry_run(request))
        return await self._send(Routes.submit(request))

    async def tasks(
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
        return await self._send(call)

    async def task(self, name: str, *, include_path: str | None = None) -> TaskDetail:
        """``GET /tasks/{name}``: one task, group or tag with its config after includes."""
        return await self._send(Routes.task(name, include_path))

    async def list_jobs(
        self,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        *,
        active_only: bool = False,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> JobList:
        return await self._send(Routes.list_jobs(status, active_only, limit, offset, newest_first))

    async def get_job(self, job_id: int) -> JobDetail:
        return await self._send(Routes.get_job(job_id))

    async def stop(self, job_id: int) -> StopResult:
        return await self._send(Routes.stop(job_id))

    async def stop_all(self) -> BulkResult:
        return await self._send(Routes.stop_all())

    async def delete(self, job_id: int) -> BulkResult:
        return await self._send(Routes.delete(job_id))

    async def delete_all(self) -> BulkResult:
        return await self._send(Routes.delete_all())

    async def resume(self, job_id: int) -> Submitted:
        return await self._send(Routes.resume(job_id))

    async def submit_sweep(self, sweep: Mapping[str, Any]) -> SweepSubmitted:
        """Queue a sweep: ``name``, ``base`` and a ``matrix`` or ``cells`` (all or none)."""
        return await self._send(Routes.submit_sweep(sweep))

    async def list_sweeps(
        self, *, limit: int | None = None, offset: int = 0, newest_first: bool = False
    ) -> SweepList:
        return await self._send(Routes.list_sweeps(limit, offset, newest_first))

    async def get_sweep(self, sweep_id: int) -> SweepDetail:
        return await self._send(Routes.get_sweep(sweep_id))

    async def sweep_results(self, sweep_id: int) -> SweepResults:
        return await self._send(Routes.sweep_results(sweep_id))

    async def sweep_results_csv(self, sweep_id: int) -> str:
        return await self._send(Routes.sweep_results_csv(sweep_id))

    async def compare(
        self,
        job_ids: Iterable[int] = (),
        *,
        baseline: int | None = None,
        alpha: float | None = None,
        sweep_id: int | None = None,
    ) -> Comparison:
        """Jobs (or a sweep's cells) against a baseline: deltas, z tests, mismatches,
        paired comparisons (GET /compare)."""
        return await self._send(Routes.compare(job_ids, baseline, alpha, sweep_id))

    async def compare_flips(
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
        return await self._send(call)

    async def compare_report(
        self, job_ids: Iterable[int], *, baseline: int | None = None, alpha: float | None = None
    ) -> str:
        """The comparison as a self-contained HTML file."""
        return await self._send(Routes.compare_report(job_ids, baseline, alpha))

    async def job_report(self, job_id: int) -> str:
        """A job's results as a self-contained HTML file."""
        return await self._send(Routes.job_report(job_id))

    async def stop_sweep(self, sweep_id: int) -> BulkResult:
        return await self._send(Routes.stop_sweep(sweep_id))

    async def delete_sweep(self, sweep_id: int) -> BulkResult:
        return await self._send(Routes.delete_sweep(sweep_id))

    async def resume_sweep(self, sweep_id: int) -> BulkResult:
        """Run again the sweep's failed and stopped cells; the new job ids."""
        return await self._send(Routes.resume_sweep(sweep_id))

    async def logs(
        self,
        job_id: int,
        stream: Stream = "stderr",
        *,
        offset: int = 0,
        limit: int | None = None,
        tail: int | None = None,
    ) -> LogChunkOut:
        """One byte range of a log (``tail``: the last bytes)."""
        return await self._send(Routes.logs(job_id, stream, offset, limit, tail))

    async def results(self, job_id: int) -> JobResults:
        return await self._send(Routes.results(job_id))

    async def samples(
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
        return await self._send(
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

    async def all_samples(
        self,
        job_id: int,
        task: str | None = None,
        *,
        correct: bool | None = None,
        q: str | None = None,
        filter: str | None = None,
        metric: str | None = None,
    ) -> AsyncGenerator[Sample, None]:
        """Every sample matching the filters, page by page along the cursors."""
        cursor: str | None = None
        while True:
            page = await self.samples(
                job_id,
                task,
                correct=correct,
                q=q,
                filter=filter,
                metric=metric,
                limit=200,
                cursor=cursor,
            )
            for sample in page.samples:
                yield sample
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def deliveries(self, job_id: int) -> DeliveryList:
        """The job's webhook deliveries and exports, with their attempts."""
        return await self._send(Routes.deliveries(job_id))

    async def artifacts(self, job_id: int) -> ArtifactList:
        return await self._send(Routes.artifacts(job_id))

    async def artifact(self, job_id: int, name: str) -> bytes:
        return await self._send(Routes.artifact(job_id, name))

    async def health(self) -> dict[str, Any]:
        """The health report, healthy or not (503 is an answer here, not an error)."""
        return await self._send(Routes.health())

    async def ready(self) -> bool:
        return await self._send(Routes.ready())

    async def metrics(self) -> str:
        """Prometheus metrics, in the text exposition format."""
        return await self._send(Routes.metrics())

    async def config(self) -> dict[str, Any]:
        return await self._send(Routes.config())

    async def openapi(self) -> dict[str, Any]:
        return await self._send(Routes.openapi())

    async def read_log(self, job_id: int, stream: Stream = "stderr") -> AsyncGenerator[str, None]:
        """Every line of a log as it is now (tqdm redraws collapsed), page by page."""
        pager = LogPager(job_id, stream)
        while not pager.done:
            for line in pager.take(await self._send(pager.call())):
                yield line

    async def events(
        self, job_id: int, *, last_event_id: str | None = None
    ) -> AsyncGenerator[JobEvent, None]:
        """Follow a job until its end event, reconnecting (without repeating log lines) if
        the connection drops."""
        follow = Follow(job_id, last_event_id, self.reconnects)
        while not follow.ended:
            try:
                async with (
                    self._http.stream("GET", follow.path, headers=follow.headers()) as response,
                    aclosing(closing_lines(response)) as lines,
                ):
                    if response.status_code != 200:
                        await response.aread()
                        raise api_error(response)
                    async for line in lines:
                        event = follow.feed(line)
                        if event is not None:
                            yield event
                if not follow.ended:
                    follow.dropped(ServerUnreachable(self.url, EOFError("stream ended early")))
            except httpx.TransportError as error:
                follow.dropped(ServerUnreachable(self.url, error))

    async def follow_logs(
        self, job_id: int, streams: tuple[Stream, ...] = ("stdout", "stderr")
    ) -> AsyncGenerator[LogLine, None]:
        """Every log line from the start, then new ones as they come, until the job ends."""
        async with aclosing(self.events(job_id)) as events:
            async for event in events:
                for line in log_lines(event, streams):
                    yield line

    async def jobs_events(self) -> AsyncGenerator[JobsChanged, None]:
        """``GET /events``: one item whenever any job changes (runs until you stop)."""
        sse = SseDecoder()
        with reaching(self.url):
            async with (
                self._http.stream("GET", "/events") as response,
                aclosing(closing_lines(response)) as lines,
            ):
                if response.status_code != 200:
                    await response.aread()
                    raise api_error(response)
                async for line in lines:
                    frame = sse.feed(line)
                    changed = jobs_changed(frame[0], frame[1]) if frame else None
                    if changed is not None:
                        yield changed

    async def wait(self, job_id: int) -> JobDetail:
        """Wait (on the event stream, not by polling) until the job ends; return it."""
        async with aclosing(self.events(job_id)) as events:
            async for _ in events:
                pass
        return await self.get_job(job_id)
