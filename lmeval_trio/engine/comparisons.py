"""The supervisor's comparison operations: check the jobs named, read their results and
samples (in worker threads), and hand them to the pure comparison (engine/compare.py).

Every refusal names its query field (``jobs``, ``baseline``, ``alpha``, ``task``, ...), and
what a job wrote is masked with its secrets before anyone sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from lmeval_trio.engine import compare
from lmeval_trio.errors import Conflict, InvalidParameter, JobNotFound
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import TERMINAL
from lmeval_trio.outputs import results, sample_outcomes
from lmeval_trio.outputs.sample_outcomes import Outcomes
from lmeval_trio.policy.secrets import mask_json

if TYPE_CHECKING:
    from lmeval_trio.engine.supervisor import Supervisor

#: At most this many jobs in one comparison (each is a results file, maybe samples to read).
MAX_COMPARE_JOBS = 20
#: At most this many flipped documents per page.
MAX_FLIPS_PAGE = 200


@dataclass(frozen=True)
class Loaded:
    """A job ready to compare: its record, its (masked) results, and its secrets."""

    record: JobRecord
    results: dict[str, Any]
    hidden: tuple[str, ...]


class Comparisons:
    """See the module docstring."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    async def jobs(
        self, job_ids: Sequence[int], baseline: int | None, alpha: float, *, field: str = "jobs"
    ) -> dict[str, Any]:
        """Compare ``job_ids`` with ``baseline`` (default: the first)."""
        check_alpha(alpha)
        chosen = check_jobs(job_ids, baseline, field)
        loaded = [await self.load(job_id, field) for job_id in job_ids]
        samples = await self._samples(loaded)
        runs = [compare.Run(item.record.id, item.results) for item in loaded]
        answer = compare.compare(runs, chosen, alpha, samples)
        answer["runs"] = [_run_info(item, samples) for item in loaded]
        return answer

    async def sweep(self, sweep_id: int, alpha: float) -> dict[str, Any]:
        """Every completed cell of a sweep against its baseline cell (or its first)."""
        table = await self.supervisor.sweeps.results(sweep_id)  # cell keys already masked
        columns = [
            c for c in table["columns"] if c["job_id"] is not None and c["status"] == "Completed"
        ]
        columns.sort(key=lambda c: c["key"] != table["baseline"])  # the baseline first
        if len(columns) < 2:
            raise Conflict(f"sweep {sweep_id} has fewer than two completed cells to compare")
        job_ids = [c["job_id"] for c in columns][:MAX_COMPARE_JOBS]
        answer = await self.jobs(job_ids, job_ids[0], alpha, field="sweep")
        answer["sweep_id"] = sweep_id
        answer["cells"] = {str(c["job_id"]): c["key"] for c in columns[:MAX_COMPARE_JOBS]}
        return answer

    async def flips(
        self,
        job_ids: Sequence[int],
        task: str,
        filter_name: str | None,
        metric: str | None,
        offset: int,
        limit: int,
    ) -> dict[str, Any]:
        """One page of the documents that flipped between two jobs (the first the
        baseline) on ``task``, each with both jobs' records side by side."""
        if len(job_ids) != 2:
            raise InvalidParameter("query", "jobs", "name exactly two jobs: baseline,other")
        check_jobs(job_ids, None, "jobs")
        base, other = [await self.load(job_id, "jobs") for job_id in job_ids]
        a, b = await self._task_outcomes(base, task), await self._task_outcomes(other, task)
        filter_name = filter_name or _first_shared(a, b, "filter")
        metric = _binary_metric(a, b, filter_name, metric)
        found = compare.flips(a, b, filter_name, metric)
        page = found[offset : offset + limit]
        ids = {item["doc_id"] for item in page}
        docs = [
            await sample_outcomes.documents(x.record, task, filter_name, ids) for x in (base, other)
        ]
        for item in page:
            item["documents"] = {
                str(x.record.id): mask_json(d.get(item["doc_id"]), x.hidden)
                for x, d in zip((base, other), docs, strict=True)
            }
        return {
            "jobs": list(job_ids),
            "task": task,
            "filter": filter_name,
            "metric": metric,
            "total": len(found),
            "offset": offset,
            "limit": limit,
            "flips": page,
        }

    async def report_data(self, job_id: int) -> tuple[JobRecord, dict[str, Any]]:
        """A job and its (masked) results with their metrics table, for its report: 404
        for an unknown job or one without results."""
        sup = self.supervisor
        record = await sup.get(job_id)
        data = await trio.to_thread.run_sync(results.load_results, record)
        return record, mask_json(data, await sup.output_secrets(record))

    async def load(self, job_id: int, field: str) -> Loaded:
        """The job and its results, or a refusal naming ``field``."""
        sup = self.supervisor
        try:
            record = await sup.get(job_id)
        except JobNotFound:
            raise InvalidParameter("query", field, f"no job with ID={job_id}") from None
        if record.status not in TERMINAL:
            message = f"job {job_id} is {record.status.value}; compare it once it has ended"
            raise InvalidParameter("query", field, message)
        try:
            data = await trio.to_thread.run_sync(results.load_results, record)
        except results.ResultsUnavailable as error:
            raise InvalidParameter(
                "query", field, f"job {job_id} has no results: {error}"
            ) from None
        hidden = await sup.output_secrets(record)
        return Loaded(record, mask_json(data["results"], hidden), hidden)

    async def _samples(self, loaded: list[Loaded]) -> dict[tuple[int, str], Outcomes | None]:
        """Outcomes of every task each job logged samples for."""
        found: dict[tuple[int, str], Outcomes | None] = {}
        for item in loaded:
            files = await trio.to_thread.run_sync(sample_outcomes.samples_files, item.record)
            for task in files:
                found[(item.record.id, task)] = await sample_outcomes.outcomes(item.record, task)
        return found

    async def _task_outcomes(self, item: Loaded, task: str) -> Outcomes:
        found = await sample_outcomes.outcomes(item.record, task)
        if found is None:
            raise InvalidParameter(
                "query", "task", f"job {item.record.id} logged no samples for this task"
            )
        return found


def check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise InvalidParameter("query", "alpha", "must be between 0 and 1 (exclusive)")


def check_jobs(job_ids: Sequence[int], baseline: int | None, field: str) -> int:
    """The baseline (default: the first job) once the list itself is acceptable."""
    if len(job_ids) < 2:
        raise InvalidParameter("query", field, "name at least two jobs to compare")
    if len(job_ids) > MAX_COMPARE_JOBS:
        raise InvalidParameter("query", field, f"name at most {MAX_COMPARE_JOBS} jobs")
    if len(set(job_ids)) != len(job_ids):
        raise InvalidParameter("query", field, "a job is named twice")
    if baseline is None:
        return job_ids[0]
    if baseline not in job_ids:
        raise InvalidParameter("query", "baseline", "must be one of the jobs compared")
    return baseline


def _run_info(item: Loaded, samples: dict[tuple[int, str], Outcomes | None]) -> dict[str, Any]:
    config = item.results.get("config")
    config = config if isinstance(config, dict) else {}
    return {
        "job_id": item.record.id,
        "status": item.record.status.value,
        "model": config.get("model"),
        "model_args": config.get("model_args"),
        "lm_eval_version": item.results.get("lm_eval_version"),
        "date": item.results.get("date"),
        "samples_tasks": sorted(t for (j, t), o in samples.items() if j == item.record.id and o),
    }


def _first_shared(a: Outcomes, b: Outcomes, field: str) -> str:
    shared = [name for name in a if name in b]
    if not shared:
        raise InvalidParameter("query", field, "the two jobs logged no common filter")
    return shared[0]


def _binary_metric(a: Outcomes, b: Outcomes, filter_name: str, wanted: str | None) -> str:
    """``wanted`` (default: the first such metric) once both jobs scored it 0 or 1 per
    document under ``filter_name``: flips are defined for 0/1 metrics only."""
    docs_a, docs_b = a.get(filter_name), b.get(filter_name)
    if docs_a is None or docs_b is None:
        raise InvalidParameter("query", "filter", "not a filter both jobs logged")
    names = sorted({m for o in docs_a.values() for m in o.metrics})
    for name in names if wanted is None else [wanted]:
        values = [o.metrics.get(name) for docs in (docs_a, docs_b) for o in docs.values()]
        if values and all(v in (0.0, 1.0) for v in values):
            return name
    if wanted is not None:
        raise InvalidParameter("query", "metric", "not a 0/1 metric both jobs scored")
    raise InvalidParameter("query", "metric", "the jobs share no 0/1 metric for this filter")
