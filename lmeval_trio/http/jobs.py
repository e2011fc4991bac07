"""Job routes: the original server's API (and its aliases) plus resume. Thin by design:
each route parses, calls the supervisor, and shapes the answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from quart import Blueprint, Response, g, jsonify, request
from quart_schema import document_querystring, document_request, document_response, tag

from lmeval_trio.engine.supervisor import StopOutcome
from lmeval_trio.errors import InvalidParameter
from lmeval_trio.harness.request_model import request_model
from lmeval_trio.http import errors, schemas, strict_json
from lmeval_trio.http.listing_encoding import ListingEncoder
from lmeval_trio.http.params import bool_arg, choice_arg, int_arg, supervisor
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import ACTIVE, JobStatus

MAX_PAGE = 1000


class ListQuery(BaseModel):
    include_completed: bool = True
    include_finished: bool = True
    status: str | None = Field(None, description="Statuses, comma-separated (any case).")
    limit: int | None = Field(None, ge=1, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=2**62)
    order: str = Field("asc", pattern="^(asc|desc)$")


class SubmitQuery(BaseModel):
    dry_run: bool = Field(
        False, description="Run every admission check and answer their report; queue nothing."
    )


def blueprint() -> Blueprint:
    """Build the routes (the request model comes from the installed lm-eval)."""
    bp = Blueprint("jobs", __name__)
    job_request = request_model()
    encoder = ListingEncoder()

    @bp.post("/job")
    @tag(["jobs"])
    @document_querystring(SubmitQuery)
    @document_request(job_request)
    @document_response(schemas.SubmitAnswer, 200)
    @document_response(schemas.Error, 422)
    @document_response(schemas.Error, 403)
    @document_response(schemas.Error, 429)
    @document_response(schemas.Error, 503)
    async def submit() -> Response:
        """Queue an lm-eval job; with dry_run=true, run every admission check and answer
        their report ({checks: [{name, ok, detail}], ok}) without queuing anything."""
        body = await json_body()
        if not isinstance(body, dict):
            raise InvalidParameter("body", "body", "expected a JSON object")
        if bool_arg("dry_run", False):
            report = await supervisor().dry_run(job_request.model_validate(body))
            return jsonify(report.to_json())
        record = await supervisor().submit(job_request.model_validate(body))
        return jsonify(
            schemas.Submitted(
                message=f"Job {record.id} successfully queued.", job_id=record.id
            ).model_dump()
        )

    @bp.get("/jobs")
    @tag(["jobs"])
    @document_querystring(ListQuery)
    @document_response(schemas.JobList, 200)
    @document_response(schemas.Error, 422)
    async def list_jobs() -> Response:
        """List jobs. include_completed=false (or include_finished=false) keeps Queued and
        Running ones; status filters by status; limit/offset page; order=desc: newest first.
        Answers of 256 KiB and more are deflated for clients that accept it."""
        statuses = _status_filter()
        limit = int_arg("limit", None, minimum=1, maximum=MAX_PAGE)
        offset = int_arg("offset", 0, minimum=0, maximum=2**62) or 0
        newest_first = choice_arg("order", "asc", ("asc", "desc")) == "desc"
        body = await supervisor().listing.render(
            statuses, limit=limit, offset=offset, newest_first=newest_first
        )
        return await encoder.response(body, request.accept_encodings)

    @bp.get("/job/<int:job_id>")
    @tag(["jobs"])
    @document_response(schemas.JobDetail, 200)
    @document_response(schemas.Error, 404)
    async def get_job(job_id: int) -> Response:
        """One job with the most recent stdout and stderr lines."""
        sup = supervisor()
        record = await sup.get(job_id)
        detail = sup.listing.summary(record)
        detail["attempt_history"] = schemas.attempt_history(record)
        hidden = await sup.output_secrets(record)
        detail["stdout"] = await sup.log_tail(record, "stdout", hidden)
        detail["stderr"] = await sup.log_tail(record, "stderr", hidden)
        return jsonify(detail)

    @bp.get("/job/<int:job_id>/deliveries")
    @tag(["jobs"])
    @document_response(schemas.DeliveryList, 200)
    @document_response(schemas.Error, 404)
    async def job_deliveries(job_id: int) -> Response:
        """The job's webhook deliveries (README: Webhooks), each with its attempts: time,
        status code or error, and when the next attempt is due."""
        deliveries = await supervisor().deliveries(job_id)
        return jsonify(
            {"job_id": job_id, "deliveries": [schemas.delivery_out(d) for d in deliveries]}
        )

    @bp.route("/job/<int:job_id>/stop", methods=["GET", "POST"])
    @bp.route("/job/<int:job_id>/dequeue", methods=["GET", "POST"])
    @tag(["jobs"])
    @document_response(schemas.StopResult, 200)
    @document_response(schemas.Error, 404)
    async def stop_job(job_id: int) -> Response:
        """Stop a job: dequeue it, or end its whole process tree (SIGTERM, grace, SIGKILL)."""
        outcome, record = await supervisor().stop(job_id)
        return jsonify(
            schemas.StopResult(
                message=_stop_message(job_id, outcome, record),
                job_id=job_id,
                job_status=record.status,
            ).model_dump()
        )

    @bp.route("/jobs/stop", methods=["GET", "POST"])
    @bp.route("/jobs/dequeue", methods=["GET", "POST"])
    @tag(["jobs"])
    @document_response(schemas.BulkResult, 200)
    async def stop_all() -> Response:
        """Stop every queued and running job."""
        stopped = await supervisor().stop_all()
        return jsonify(
            schemas.BulkResult(
                message=f"Stopped {len(stopped)} jobs.", job_ids=stopped
            ).model_dump()
        )

    @bp.delete("/job/<int:job_id>")
    @tag(["jobs"])
    @document_response(schemas.BulkResult, 200)
    @document_response(schemas.Error, 404)
    async def delete_job(job_id: int) -> Response:
        """Stop the job if needed, then delete its record and files."""
        await supervisor().delete(job_id)
        return jsonify(
            schemas.BulkResult(message=f"Job {job_id} deleted.", job_ids=[job_id]).model_dump()
        )

    @bp.delete("/jobs")
    @tag(["jobs"])
    @document_response(schemas.BulkResult, 200)
    async def delete_all() -> Response:
        """Stop everything and delete every job's record and files."""
        count = await supervisor().delete_all()
        return jsonify({"status": "success", "message": f"Deleted {count} jobs.", "job_ids": []})

    @bp.post("/job/<int:job_id>/resume")
    @tag(["jobs"])
    @document_response(schemas.Submitted, 200)
    @document_response(schemas.Error, 403)
    @document_response(schemas.Error, 404)
    @document_response(schemas.Error, 409)
    @document_response(schemas.Error, 422)
    @document_response(schemas.Error, 429)
    async def resume_job(job_id: int) -> Response:
        """Queue a new job that repeats a Stopped or Failed one, reusing its response cache
        so requests already answered are not sent to the model again."""
        record = await supervisor().resume(job_id)
        return jsonify(
            schemas.Submitted(
                message=f"Job {record.id} successfully queued (resumes job {job_id}).",
                job_id=record.id,
            ).model_dump()
        )

    return bp


async def json_body() -> Any:
    """The request body as strict JSON: NaN, Infinity and numbers beyond a double (1e309)
    are refused here, so no stored request can make a later answer invalid JSON."""
    data = await request.get_data()
    setattr(g, errors.BODY_READ, True)  # read to its end: no drain after the answer
    try:
        return strict_json.loads(data)
    except strict_json.NonFiniteNumber as error:
        raise InvalidParameter("body", "body", f"non-finite number: {error}") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # not JSON, not UTF-8, or nested deeper than the decoder goes


def _status_filter() -> list[JobStatus] | None:
    active_only = not (bool_arg("include_completed", True) and bool_arg("include_finished", True))
    name = request.args.get("status")
    if name:
        wanted = _parse_statuses(name)
        return [s for s in wanted if s in ACTIVE] if active_only else wanted
    return sorted(ACTIVE, key=list(JobStatus).index) if active_only else None


def _parse_statuses(raw: str) -> list[JobStatus]:
    by_name = {s.value.lower(): s for s in JobStatus}
    statuses = []
    for part in raw.split(","):
        status = by_name.get(part.strip().lower())
        if status is None:
            choices = ", ".join(s.value for s in JobStatus)
            raise InvalidParameter("query", "status", f"unknown status {part!r} ({choices})")
        statuses.append(status)
    return statuses


def _stop_message(job_id: int, outcome: StopOutcome, record: JobRecord) -> str:
    if outcome is StopOutcome.DEQUEUED:
        return f"Job {job_id} removed from the queue."
    if outcome is StopOutcome.STOPPED:
        return f"Job {job_id} stopped."
    return f"Job {job_id} already finished ({record.status.value}); nothing to stop."
