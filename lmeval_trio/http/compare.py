"""Comparison and report routes: /compare (jobs or a sweep), /compare/flips (paged flipped
documents), /compare/report and /job/{id}/report (self-contained HTML). Thin: each parses
its query, calls the supervisor's comparison operations, and shapes the answer."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field
from quart import Blueprint, Response, jsonify, request
from quart_schema import document_querystring, document_response, tag

from lmeval_trio.engine.comparisons import MAX_COMPARE_JOBS, MAX_FLIPS_PAGE
from lmeval_trio.errors import InvalidParameter
from lmeval_trio.http import schemas
from lmeval_trio.http.params import ascii_int, int_arg, supervisor
from lmeval_trio.outputs import reports

DEFAULT_ALPHA = 0.05
JOBS_PATTERN = rf"^[0-9]{{1,20}}(,[0-9]{{1,20}}){{0,{MAX_COMPARE_JOBS - 1}}}$"
_ALPHA = re.compile(r"[0-9]{0,20}\.?[0-9]{1,20}([eE]-?[0-9]{1,3})?")
MAX_ID = 2**62
#: The report's policy: nothing may load (no script, image, font or frame); inline CSS only.
REPORT_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


class CompareQuery(BaseModel):
    jobs: str | None = Field(
        None, pattern=JOBS_PATTERN, description="Job ids, comma-separated (2 to 20)."
    )
    sweep: int | None = Field(None, ge=0, le=MAX_ID, description="Instead of jobs: a sweep.")
    baseline: int | None = Field(None, ge=0, le=MAX_ID, description="Default: the first job.")
    alpha: float = Field(DEFAULT_ALPHA, gt=0, lt=1, description="The significance level.")


class FlipsQuery(BaseModel):
    jobs: str = Field(pattern=JOBS_PATTERN, description="Two job ids: baseline,other.")
    task: str = Field(min_length=1, max_length=500)
    filter: str | None = Field(None, max_length=500, description="Default: the first shared.")
    metric: str | None = Field(None, max_length=500, description="Default: the first 0/1.")
    offset: int = Field(0, ge=0, le=MAX_ID)
    limit: int = Field(50, ge=1, le=MAX_FLIPS_PAGE)


class ReportQuery(BaseModel):
    jobs: str = Field(pattern=JOBS_PATTERN, description="Job ids, comma-separated (2 to 20).")
    baseline: int | None = Field(None, ge=0, le=MAX_ID)
    alpha: float = Field(DEFAULT_ALPHA, gt=0, lt=1)


def blueprint() -> Blueprint:
    bp = Blueprint("compare", __name__)

    @bp.get("/compare")
    @tag(["compare"])
    @document_querystring(CompareQuery)
    @document_response(schemas.Comparison, 200)
    @document_response(schemas.Error, 404)
    @document_response(schemas.Error, 409)
    @document_response(schemas.Error, 422)
    async def compare() -> Response:
        """Each job against the baseline per task/metric/filter (delta, z, p, significant
        at alpha), every comparability mismatch, and paired comparisons from samples.
        ``jobs=1,2,3`` (``baseline`` default the first) or ``sweep=ID`` (its baseline cell,
        else its first, against every completed cell)."""
        return jsonify(await _comparison())

    @bp.get("/compare/flips")
    @tag(["compare"])
    @document_querystring(FlipsQuery)
    @document_response(schemas.FlipsPage, 200)
    @document_response(schemas.Error, 404)
    @document_response(schemas.Error, 422)
    async def flips() -> Response:
        """The documents of ``task`` whose 0/1 metric flipped between two jobs (baseline
        first), paged by ``offset``/``limit``, each with both jobs' records side by side."""
        job_ids = _jobs_arg(required=True)
        task = _text_arg("task", required=True)
        assert task is not None
        page = await supervisor().comparisons.flips(
            job_ids,
            task,
            _text_arg("filter"),
            _text_arg("metric"),
            int_arg("offset", 0, minimum=0, maximum=MAX_ID) or 0,
            int_arg("limit", 50, minimum=1, maximum=MAX_FLIPS_PAGE) or 50,
        )
        return jsonify(page)

    @bp.get("/compare/report")
    @tag(["compare"])
    @document_querystring(ReportQuery)
    @document_response(schemas.Error, 404)
    @document_response(schemas.Error, 422)
    async def compare_report() -> Response:
        """The comparison as one self-contained HTML file (inline CSS and SVG charts; it
        loads nothing), to attach to a pull request or a mail."""
        comparison = await supervisor().comparisons.jobs(
            _jobs_arg(required=True), _id_arg("baseline"), _alpha_arg()
        )
        return _html(reports.compare_report(comparison), "comparison.html")

    @bp.get("/job/<int:job_id>/report")
    @tag(["compare"])
    @document_response(schemas.Error, 404)
    async def job_report(job_id: int) -> Response:
        """The job's results as one self-contained HTML file (table and charts)."""
        record, data = await supervisor().comparisons.report_data(job_id)
        return _html(reports.job_report(record, data), f"job-{job_id}-report.html")

    return bp


async def _comparison() -> dict[str, Any]:
    sup = supervisor()
    alpha = _alpha_arg()
    sweep = _id_arg("sweep")
    if sweep is not None:
        if "jobs" in request.args or "baseline" in request.args:
            raise InvalidParameter("query", "sweep", "give either sweep or jobs, not both")
        return await sup.comparisons.sweep(sweep, alpha)
    return await sup.comparisons.jobs(_jobs_arg(required=True), _id_arg("baseline"), alpha)


def _jobs_arg(*, required: bool) -> list[int]:
    raw = request.args.get("jobs")
    if raw is None or raw == "":
        if required:
            raise InvalidParameter("query", "jobs", "name the jobs, comma-separated: jobs=1,2")
        return []
    parts = raw.split(",")
    if len(parts) > MAX_COMPARE_JOBS:
        raise InvalidParameter("query", "jobs", f"name at most {MAX_COMPARE_JOBS} jobs")
    ids = [ascii_int(part) for part in parts]
    if any(i is None for i in ids):
        raise InvalidParameter("query", "jobs", "expected job ids in ASCII digits, comma-separated")
    return [i for i in ids if i is not None]


def _id_arg(name: str) -> int | None:
    return int_arg(name, None, minimum=0, maximum=MAX_ID)


def _alpha_arg() -> float:
    raw = request.args.get("alpha")
    if raw is None or raw == "":
        return DEFAULT_ALPHA
    value = float(raw) if _ALPHA.fullmatch(raw) else None
    if value is None or not 0 < value < 1:
        raise InvalidParameter("query", "alpha", f"expected a number between 0 and 1, got {raw!r}")
    return value


def _text_arg(name: str, *, required: bool = False) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        if required:
            raise InvalidParameter("query", name, "required")
        return None
    if len(raw) > 500:
        raise InvalidParameter("query", name, "longer than 500 characters")
    return raw


def _html(page: str, filename: str) -> Response:
    response = Response(page, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = REPORT_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Content-Disposition"] = f'inline; filename="{filename}"'
    return response
