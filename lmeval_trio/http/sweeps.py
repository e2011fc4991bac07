"""Sweep routes: submit, list, show, results (JSON or CSV), stop, delete, resume. Thin:
each parses, calls the supervisor's sweep operations, and shapes the answer."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify, request
from quart_schema import document_request, document_response, tag

from lmeval_trio.engine.sweeps import SweepRequest
from lmeval_trio.errors import InvalidParameter
from lmeval_trio.http import schemas
from lmeval_trio.http.jobs import MAX_PAGE, json_body
from lmeval_trio.http.params import choice_arg, int_arg, supervisor
from lmeval_trio.outputs import results


def blueprint() -> Blueprint:
    bp = Blueprint("sweeps", __name__)

    @bp.post("/sweeps")
    @tag(["sweeps"])
    @document_request(SweepRequest)
    @document_response(schemas.SweepSubmitted, 200)
    @document_response(schemas.Error, 422)
    @document_response(schemas.Error, 429)
    @document_response(schemas.Error, 503)
    async def submit() -> Response:
        """Queue a sweep: every cell admitted like a job, all of them or none."""
        body = await json_body()
        if not isinstance(body, dict):
            raise InvalidParameter("body", "body", "expected a JSON object")
        sweep, records = await supervisor().sweeps.submit(body)
        return jsonify(
            {
                "status": "success",
                "message": f"Sweep {sweep.id} queued with {len(records)} jobs.",
                "sweep_id": sweep.id,
                "job_ids": [record.id for record in records],
            }
        )

    @bp.get("/sweeps")
    @tag(["sweeps"])
    @document_response(schemas.SweepList, 200)
    @document_response(schemas.Error, 422)
    async def list_sweeps() -> Response:
        """List sweeps (without their cells); limit/offset page; order=desc: newest first."""
        limit = int_arg("limit", None, minimum=1, maximum=MAX_PAGE)
        offset = int_arg("offset", 0, minimum=0, maximum=2**62) or 0
        newest_first = choice_arg("order", "asc", ("asc", "desc")) == "desc"
        sweeps, total = await supervisor().sweeps.page(
            limit=limit, offset=offset, newest_first=newest_first
        )
        return jsonify({"sweeps": sweeps, "total": total})

    @bp.get("/sweeps/<int:sweep_id>")
    @tag(["sweeps"])
    @document_response(schemas.SweepDetail, 200)
    @document_response(schemas.Error, 404)
    async def show(sweep_id: int) -> Response:
        """One sweep: status counts, progress, ETA, and its cells with their jobs."""
        return jsonify(await supervisor().sweeps.view(sweep_id))

    @bp.get("/sweeps/<int:sweep_id>/results")
    @tag(["sweeps"])
    @document_response(schemas.SweepResults, 200)
    @document_response(schemas.Error, 404)
    async def sweep_results(sweep_id: int) -> Response:
        """Rows task/metric/filter, columns the cells (value and stderr); CSV with
        ``?format=csv`` or ``Accept: text/csv``."""
        table = await supervisor().sweeps.results(sweep_id)
        if _wants_csv():
            return Response(
                results.table_csv(table),
                content_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="sweep-{sweep_id}.csv"'},
            )
        return jsonify(table)

    @bp.post("/sweeps/<int:sweep_id>/stop")
    @tag(["sweeps"])
    @document_response(schemas.BulkResult, 200)
    @document_response(schemas.Error, 404)
    async def stop(sweep_id: int) -> Response:
        """Stop the sweep's queued and running jobs."""
        stopped = await supervisor().sweeps.stop(sweep_id)
        return _bulk(f"Sweep {sweep_id}: stopped {len(stopped)} jobs.", stopped)

    @bp.delete("/sweeps/<int:sweep_id>")
    @tag(["sweeps"])
    @document_response(schemas.BulkResult, 200)
    @document_response(schemas.Error, 404)
    async def delete(sweep_id: int) -> Response:
        """Stop and delete the sweep's jobs (records and files), then the sweep."""
        deleted = await supervisor().sweeps.delete(sweep_id)
        return _bulk(f"Sweep {sweep_id} deleted with {len(deleted)} jobs.", deleted)

    @bp.post("/sweeps/<int:sweep_id>/resume")
    @tag(["sweeps"])
    @document_response(schemas.BulkResult, 200)
    @document_response(schemas.Error, 404)
    @document_response(schemas.Error, 409)
    async def resume(sweep_id: int) -> Response:
        """Run again the cells that failed or were stopped, each reusing its cache."""
        queued = await supervisor().sweeps.resume(sweep_id)
        return _bulk(f"Sweep {sweep_id}: resumed {len(queued)} cells.", queued)

    return bp


def _wants_csv() -> bool:
    wanted = choice_arg("format", "json", ("json", "csv"))
    if "format" in request.args:
        return wanted == "csv"
    best = request.accept_mimetypes.best_match(["application/json", "text/csv"])
    return best == "text/csv"


def _bulk(message: str, job_ids: list[int]) -> Response:
    body: dict[str, Any] = {"status": "success", "message": message, "job_ids": job_ids}
    return jsonify(body)
