"""Sweeps: many jobs (cells of a matrix or a list) submitted, followed and compared as one.

A sweep is planned (its cells expanded and keyed), each cell admitted like a job, then stored
with one Queued job per cell in one transaction: accepted whole or refused whole. Each cell
then lives as an ordinary job (``JobRecord.sweep_id``/``sweep_cell``); dispatch holds the
sweep's ``max_parallel``. Views (status counts, progress, ETA, the results table) are read
from the cells' newest jobs; stop, delete and resume act on those jobs through the supervisor.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import trio
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from lmeval_trio.engine import admission_checks
from lmeval_trio.engine.admission import notify_errors
from lmeval_trio.engine.task_checks import TaskRefused
from lmeval_trio.errors import Conflict, InvalidRequest, NotFound
from lmeval_trio.harness.request_model import RequestRejected, request_model
from lmeval_trio.jobs.notify import NotifyList
from lmeval_trio.jobs.record import JobRecord, SweepCell, SweepRecord
from lmeval_trio.jobs.status import ACTIVE, JobStatus
from lmeval_trio.outputs import results
from lmeval_trio.policy.rules import Admitted, MissingPath, PolicyViolation
from lmeval_trio.policy.secrets import job_secrets, mask_json, mask_text, public_request

if TYPE_CHECKING:
    from lmeval_trio.engine.supervisor import Supervisor

KEY_SEPARATOR = " | "
MAX_KEY_CHARS = 500
#: Cells whose newest job ended this way are run again by a sweep resume (and so are cells
#: whose jobs were all deleted: by DELETE /job/{id}, DELETE /jobs or retention).
RESUMABLE = (JobStatus.FAILED, JobStatus.STOPPED)
#: The ``reason`` of a cell whose job was deleted (its ``job_id`` and ``status`` are null).
DELETED_REASON = "its job was deleted; a sweep resume runs the cell again"


class SweepNotFound(NotFound, LookupError):
    def __init__(self, sweep_id: int) -> None:
        super().__init__(f"No sweep with ID={sweep_id} found.")
        self.sweep_id = sweep_id


class SweepRejected(InvalidRequest, ValueError):
    """The sweep is refused whole: ``errors`` are FastAPI-shaped items, one per problem,
    each naming its cell (``cell``) where one is at fault."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(e["msg"]) for e in errors[:5]))
        self.errors = errors


class SweepRequest(BaseModel):
    """``POST /sweeps``: a base request and either a matrix or a list of cells over it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    base: dict[str, Any] = Field(default_factory=dict, description="Any POST /job body.")
    matrix: dict[str, list[Any]] | None = Field(
        None, description="Request field -> values; one cell per combination."
    )
    cells: list[dict[str, Any]] | None = Field(
        None, description="Partial requests merged over base (an optional 'key' names one)."
    )
    baseline: str | None = Field(None, description="The key of the cell others compare with.")
    max_parallel: Annotated[int, Strict()] | None = Field(None, ge=1, le=100_000)
    notify: NotifyList | None = Field(
        None,
        description="Webhooks told when the sweep ends (sweep.completed) and of its cells' "
        "job events (README: Webhooks).",
    )


def _reject(loc: Sequence[Any], msg: str, kind: str = "value_error", **extra: Any) -> SweepRejected:
    return SweepRejected([{"loc": ["body", *loc], "msg": msg, "type": kind, **extra}])


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def plan(body: Mapping[str, Any], max_cells: int) -> SweepRecord:
    """The sweep's cells, keyed and merged over ``base`` (not yet admitted). Raises
    pydantic's ValidationError or SweepRejected naming the field at fault."""
    spec = SweepRequest.model_validate(dict(body))
    if (spec.matrix is None) == (spec.cells is None):
        raise _reject(["matrix"], "give exactly one of matrix and cells")
    if spec.matrix is not None:
        cells = _matrix_cells(spec.base, spec.matrix, max_cells)
    else:
        cells = _listed_cells(spec.base, spec.cells or [], max_cells)
    keys = [cell.key for cell in cells]
    if spec.baseline is not None and spec.baseline not in keys:
        raise _reject(["baseline"], f"no cell has the key {spec.baseline!r}")
    notify = tuple(hook.model_dump(exclude_none=True) for hook in spec.notify or ())
    return SweepRecord(
        0, spec.name, tuple(cells), "", spec.baseline, spec.max_parallel, notify=notify
    )


def _matrix_cells(
    base: dict[str, Any], matrix: dict[str, list[Any]], max_cells: int
) -> list[SweepCell]:
    if not matrix:
        raise _reject(["matrix"], "names no field")
    fields = request_model().model_fields
    count = 1
    for name, values in matrix.items():
        if name not in fields:
            raise _reject(["matrix", name], "is not a field of a job request (POST /job)")
        if not values:
            raise _reject(["matrix", name], "lists no values")
        count *= len(values)
        if count > max_cells:
            raise _reject(["matrix"], f"makes more than {max_cells} cells (LMEVAL_MAX_SWEEP_CELLS)")
    cells: list[SweepCell] = [SweepCell("", dict(base))]
    for name, values in matrix.items():
        cells = [
            SweepCell(_join(cell.key, _label(name, value, index)), {**cell.request, name: value})
            for cell in cells
            for index, value in enumerate(values, 1)
        ]
    _check_unique([cell.key for cell in cells], ["matrix"])
    return cells


def _label(name: str, value: Any, index: int) -> str:
    """A cell key's part for one field: its value, or its place in the list for a value
    that is not a scalar (env_vars values are never shown)."""
    if isinstance(value, dict | list) or name == "env_vars":
        return f"{name}#{index}"
    return f"{name}={_shown(value)}"


def _join(key: str, part: str) -> str:
    return f"{key}{KEY_SEPARATOR}{part}" if key else part


def _listed_cells(
    base: dict[str, Any], listed: list[dict[str, Any]], max_cells: int
) -> list[SweepCell]:
    if not listed:
        raise _reject(["cells"], "lists no cells")
    if len(listed) > max_cells:
        raise _reject(["cells"], f"more than {max_cells} cells (LMEVAL_MAX_SWEEP_CELLS)")
    cells = []
    for index, partial in enumerate(listed):
        fields = dict(partial)
        key = fields.pop("key", None)
        if key is None:
            key = KEY_SEPARATOR.join(_label(n, v, index + 1) for n, v in fields.items())
            key = key or f"cell#{index + 1}"
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_CHARS:
            raise _reject(["cells", index, "key"], f"a non-empty string of <= {MAX_KEY_CHARS}")
        cells.append(SweepCell(key, {**base, **fields}))
    _check_unique([cell.key for cell in cells], ["cells"])
    return cells


def _check_unique(keys: list[str], loc: list[Any]) -> None:
    seen = Counter(keys)
    twice = [key for key, count in seen.items() if count > 1]
    if twice:
        raise _reject(loc, f"two cells have the key {twice[0]!r}; give each cell its own")
    if any(len(key) > MAX_KEY_CHARS for key in keys):
        raise _reject(loc, f"a cell key is longer than {MAX_KEY_CHARS} characters")


class Sweeps:
    """The supervisor's sweep operations (see the module docstring)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    async def load_limits(self) -> None:
        """At start-up, before dispatch: every stored sweep's ``max_parallel``."""
        sup = self.supervisor
        sup.dispatcher.sweep_limits.update(await sup.store.sweep_limits())

    async def submit(self, body: Mapping[str, Any]) -> tuple[SweepRecord, list[JobRecord]]:
        """Admit every cell, then store and queue them all, or refuse the whole sweep."""
        sup = self.supervisor
        sup.check_accepting()
        planned = plan(body, sup.settings.max_sweep_cells)
        await self._check_notify(planned)
        with sup.queue_place(len(planned.cells)):
            admitted = await self._admit_all(planned)
            parsed = replace(planned, cells=tuple(cell for cell, _ in admitted))
            sweep, records = await sup.admission.store_sweep(parsed, admitted)
            if sweep.max_parallel is not None:
                sup.dispatcher.sweep_limits[sweep.id] = sweep.max_parallel
            await self._queue(sweep, records, [verdict for _, verdict in admitted])
        sup.metrics.submissions.inc(len(records))
        return sweep, records

    async def _check_notify(self, planned: SweepRecord) -> None:
        """The sweep's webhooks and its cells' judged like a job's (a 422 naming them)."""
        settings = self.supervisor.settings
        errors = [
            {"loc": ["body", *e["loc"]], "msg": e["type"].message(), "type": "webhook_target"}
            for e in await notify_errors(list(planned.notify), settings, ("notify",))
        ]
        for index, cell in enumerate(planned.cells):
            found = await notify_errors(list(cell.request.get("notify") or []), settings, ())
            errors.extend(
                {
                    "loc": ["body", "cells", index, "notify", *e["loc"]],
                    "msg": e["type"].message(),
                    "type": "webhook_target",
                    "cell": cell.key,
                }
                for e in found
            )
        if errors:
            raise SweepRejected(errors)

    async def _admit_all(self, planned: SweepRecord) -> list[tuple[SweepCell, Admitted]]:
        """Each cell parsed and checked like a job (``admission_checks.admit_cells``: the
        same checks, the policy's of all cells in one worker thread, each distinct set of
        tasks checked once); every cell's errors, or the verdicts."""
        sup = self.supervisor
        errors: list[dict[str, Any]] = []
        parsed: list[tuple[int, SweepCell]] = []
        for index, cell in enumerate(planned.cells):
            try:
                request = sup.admission.parse(cell.request)
                sup.admission.check_limits(request)
            except (ValidationError, RequestRejected) as error:
                errors.extend(_cell_errors(index, cell, error))
                continue
            parsed.append((index, SweepCell(cell.key, request)))
        requests = [cell.request for _, cell in parsed]
        verdicts = await admission_checks.admit_cells(sup, requests, sup.gates())
        admitted: list[tuple[SweepCell, Admitted]] = []
        for (index, cell), verdict in zip(parsed, verdicts, strict=True):
            if isinstance(verdict, Exception):
                errors.extend(_cell_errors(index, cell, verdict))
            else:
                admitted.append((cell, verdict))
        if errors:
            raise SweepRejected(sorted(errors, key=lambda e: e["loc"][2]))
        return admitted

    async def _queue(
        self, sweep: SweepRecord, records: list[JobRecord], verdicts: list[Admitted]
    ) -> None:
        """Write each cell's folder, then queue them all at once; on any failure the sweep
        and its jobs are removed again (nothing half-submitted stays)."""
        sup = self.supervisor
        events = {record.id: trio.Event() for record in records}
        sup.creating.update(events)
        try:
            for record, verdict in zip(records, verdicts, strict=True):
                await sup.admission.prepare_folder(record, verdict, None)
            for record in records:
                sup.dispatcher.enqueue(record)
        except BaseException:
            with trio.CancelScope(shield=True):
                for record in records:
                    await sup.discard(record)
                await sup.store.delete_sweep(sweep.id)
            raise
        finally:
            for job_id, event in events.items():
                del sup.creating[job_id]
                event.set()

    # -- reads ----------------------------------------------------------------------------

    async def get(self, sweep_id: int) -> SweepRecord:
        sweep = await self.supervisor.store.get_sweep(sweep_id)
        if sweep is None:
            raise SweepNotFound(sweep_id)
        return sweep

    async def settled_jobs(self, sweep: SweepRecord) -> list[JobRecord]:
        """The sweep's jobs once none is still being submitted (stored, not yet queued), so
        that a stop or delete misses none."""
        for record in (await self.jobs([sweep]))[sweep.id]:
            await self.supervisor.wait_created(record.id)
        return (await self.jobs([sweep]))[sweep.id]

    async def jobs(self, sweeps: Sequence[SweepRecord]) -> dict[int, list[JobRecord]]:
        """Every job of these sweeps (live records for active ones), by sweep id."""
        sup = self.supervisor
        found: dict[int, list[JobRecord]] = {sweep.id: [] for sweep in sweeps}
        for record in await sup.store.sweep_jobs(list(found)):
            live = sup.live.jobs.get(record.id)
            if record.sweep_id is not None:
                found[record.sweep_id].append(live.record if live else record)
        return found

    async def view(self, sweep_id: int) -> dict[str, Any]:
        """The sweep with its status counts, progress, ETA and cells."""
        sweep = await self.get(sweep_id)
        jobs = (await self.jobs([sweep]))[sweep.id]
        return self._summary(sweep, jobs, with_cells=True)

    async def page(
        self, *, limit: int | None, offset: int, newest_first: bool
    ) -> tuple[list[dict[str, Any]], int]:
        sweeps, total = await self.supervisor.store.select_sweeps(
            limit=limit, offset=offset, newest_first=newest_first
        )
        jobs = await self.jobs(sweeps)
        return [self._summary(s, jobs[s.id], with_cells=False) for s in sweeps], total

    def _summary(
        self, sweep: SweepRecord, jobs: list[JobRecord], *, with_cells: bool
    ) -> dict[str, Any]:
        newest = newest_jobs(sweep, jobs)
        cells = [self._cell(cell, newest.get(cell.key)) for cell in sweep.cells]
        counts = Counter(c["status"] for c in cells if c["status"] is not None)
        summary: dict[str, Any] = {
            "sweep_id": sweep.id,
            "name": sweep.name,
            "created_at": sweep.created_at,
            "baseline": _public_key(sweep, sweep.baseline),
            "max_parallel": sweep.max_parallel,
            "status": sweep_status(counts, len(cells)),
            "counts": {s.value: counts.get(s.value, 0) for s in JobStatus},
            "total_cells": len(cells),
            "progress_pct": _mean([c["progress_pct"] for c in cells]),
            "eta_s": self._eta_s(sweep, cells, list(newest.values())),
            "job_ids": [record.id for record in jobs],
        }
        if with_cells:
            summary["cells"] = cells
        return summary

    def _cell(self, cell: SweepCell, record: JobRecord | None) -> dict[str, Any]:
        hidden = job_secrets(cell.request)
        shown: dict[str, Any] = {
            "key": mask_text(cell.key, hidden),
            "job_id": None,
            "status": None,
            "progress_pct": 0,
            "eta_s": None,
            "reason": None,
            "request": public_request(cell.request, hidden),
        }
        if record is None:
            shown["reason"] = DELETED_REASON
            return shown
        progress = self.supervisor.progress_dict(record)
        done = record.status is JobStatus.COMPLETED
        shown.update(
            job_id=record.id,
            status=record.status.value,
            progress_pct=100 if done else int(progress.get("percent") or 0),
            eta_s=progress.get("eta_s") if record.status in ACTIVE else None,
            reason=None if record.reason is None else mask_text(record.reason, hidden),
        )
        return shown

    def _eta_s(
        self, sweep: SweepRecord, cells: list[dict[str, Any]], newest: list[JobRecord]
    ) -> float | None:
        """Seconds until every cell has ended, estimated from the running cells' own ETAs
        and, for queued ones, the mean run time of the cells that completed."""
        waiting = [c for c in cells if c["status"] == JobStatus.QUEUED.value]
        running = [c for c in cells if c["status"] == JobStatus.RUNNING.value]
        if not waiting and not running:
            return 0.0
        durations = [_duration_s(r) for r in newest if r.status is JobStatus.COMPLETED]
        mean_s = _mean_float([d for d in durations if d is not None])
        if mean_s is None and (waiting or any(c["eta_s"] is None for c in running)):
            return None
        work_s = sum(
            c["eta_s"] if c["eta_s"] is not None else (mean_s or 0.0) for c in running
        ) + len(waiting) * (mean_s or 0.0)
        slots = self.supervisor.slots.total or 1
        width = max(1, min(slots, sweep.max_parallel or slots, len(waiting) + len(running)))
        return round(work_s / width, 1)

    # -- operations -----------------------------------------------------------------------

    async def stop(self, sweep_id: int) -> list[int]:
        """Stop the sweep's queued and running jobs; the ids stopped."""
        sweep = await self.get(sweep_id)
        active = [r.id for r in await self.settled_jobs(sweep) if r.status in ACTIVE]
        async with trio.open_nursery() as nursery:
            for job_id in active:
                nursery.start_soon(self.supervisor.stop, job_id)
        return active

    async def delete(self, sweep_id: int) -> list[int]:
        """Stop and delete every job of the sweep (their files too), then the sweep."""
        sup = self.supervisor
        sweep = await self.get(sweep_id)
        records = await self.settled_jobs(sweep)
        await sup.delete_records(records)
        await sup.store.delete_sweep(sweep.id)
        sup.dispatcher.sweep_limits.pop(sweep.id, None)
        return [record.id for record in records]

    async def resume(self, sweep_id: int) -> list[int]:
        """Run again, in cell order, each cell whose newest job failed or was stopped (a job
        resume: its cache copied) and each cell whose job was deleted (its request submitted
        afresh into the cell: nothing is left to copy); the new job ids. Cells that completed
        or are active stay as they are."""
        sup = self.supervisor
        sweep = await self.get(sweep_id)
        newest = newest_jobs(sweep, (await self.jobs([sweep]))[sweep.id])
        again = [c for c in sweep.cells if c.key not in newest or newest[c.key].status in RESUMABLE]
        if not again:
            raise NothingToResume(
                f"sweep {sweep_id} has no failed, stopped or deleted cell to resume"
            )
        resumed = []
        for cell in again:
            old = newest.get(cell.key)
            if old is None:
                record = await sup.submit(cell.request, in_sweep=(sweep.id, cell.key))
            else:
                record = await sup.resume(old.id)
            resumed.append(record.id)
        return resumed

    async def results(self, sweep_id: int) -> dict[str, Any]:
        """One table of every completed cell's metrics: rows task/metric/filter, columns
        the cells (a cell without results has nulls)."""
        sup = self.supervisor
        sweep = await self.get(sweep_id)
        newest = newest_jobs(sweep, (await self.jobs([sweep]))[sweep.id])
        columns: list[results.Column] = []
        for cell in sweep.cells:
            record = newest.get(cell.key)
            metrics = await _metrics(record) if record is not None else None
            hidden = () if record is None else await sup.output_secrets(record)
            columns.append(
                results.Column(
                    key=_public_key(sweep, cell.key) or cell.key,
                    job_id=None if record is None else record.id,
                    status=None if record is None else record.status.value,
                    metrics=None if metrics is None else mask_json(metrics, hidden),
                )
            )
        return {
            "sweep_id": sweep.id,
            "name": sweep.name,
            "baseline": _public_key(sweep, sweep.baseline),
            **results.sweep_table(columns),
        }


class NothingToResume(Conflict, ValueError):
    """A sweep resume found no failed or stopped cell (409)."""


async def _metrics(record: JobRecord) -> list[dict[str, Any]] | None:
    """A completed job's metrics table; None for other jobs and unreadable results."""
    if record.status is not JobStatus.COMPLETED:
        return None
    try:
        data = await trio.to_thread.run_sync(results.load_results, record)
    except results.ResultsUnavailable:
        return None
    metrics: list[dict[str, Any]] = data["metrics"]
    return metrics


def newest_jobs(sweep: SweepRecord, jobs: Iterable[JobRecord]) -> dict[str, JobRecord]:
    """Each cell's newest job (a resumed cell has older ones), by cell key."""
    keys = {cell.key for cell in sweep.cells}
    newest: dict[str, JobRecord] = {}
    for record in sorted(jobs, key=lambda r: r.id):
        if record.sweep_cell in keys:
            newest[record.sweep_cell] = record
    return newest


def sweep_status(counts: Mapping[str, int], cells: int) -> str:
    """Running while any cell runs, Queued while cells wait, then how it ended: Completed
    if every cell completed, else Failed if one failed, else Stopped."""
    for status in (JobStatus.RUNNING, JobStatus.QUEUED):
        if counts.get(status.value):
            return status.value
    if counts.get(JobStatus.COMPLETED.value) == cells:
        return JobStatus.COMPLETED.value
    if counts.get(JobStatus.FAILED.value):
        return JobStatus.FAILED.value
    return JobStatus.STOPPED.value


def _public_key(sweep: SweepRecord, key: str | None) -> str | None:
    if key is None:
        return None
    cell = next((c for c in sweep.cells if c.key == key), None)
    return key if cell is None else mask_text(key, job_secrets(cell.request))


def _cell_errors(index: int, cell: SweepCell, error: Exception) -> list[dict[str, Any]]:
    """A cell's refusal as FastAPI-shaped items naming the cell and its field."""
    where: list[Any] = ["body", "cells", index]
    named = {"cell": cell.key}
    if isinstance(error, ValidationError):
        return [
            {"loc": [*where, *item["loc"]], "msg": item["msg"], "type": item["type"], **named}
            for item in error.errors(include_url=False, include_input=False)
        ]
    if isinstance(error, PolicyViolation):
        return [
            {
                "loc": [*where, error.field],
                "msg": str(error),
                "type": "policy_violation",
                "rule": error.rule,
                **named,
            }
        ]
    if isinstance(error, MissingPath):
        return [
            {"loc": [*where, error.field], "msg": error.message, "type": "missing_path", **named}
        ]
    if isinstance(error, TaskRefused):
        return [
            {
                "loc": [*where, error.field],
                "msg": error.message,
                "type": error.kind,
                **named,
                **error.extra,
            }
        ]
    if not isinstance(error, RequestRejected):
        return [{"loc": where, "msg": str(error), "type": "refused", **named}]
    loc = [*where, error.field] if error.field else where
    msg = f"lm-eval rejects this: {error.message}"
    return [{"loc": loc, "msg": msg, "type": "lm_eval_rejected", **named}]


def _duration_s(record: JobRecord) -> float | None:
    if not record.started_at or not record.finished_at:
        return None
    delta = datetime.fromisoformat(record.finished_at) - datetime.fromisoformat(record.started_at)
    return max(0.0, delta.total_seconds())


def _mean(values: list[int]) -> int:
    return 0 if not values else math.floor(sum(values) / len(values))


def _mean_float(values: list[float]) -> float | None:
    return None if not values else sum(values) / len(values)
