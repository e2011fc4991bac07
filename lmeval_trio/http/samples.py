"""GET /job/{id}/samples: pages of a finished job's per-sample records (lm-eval's
``log_samples``), filtered by correctness, filter name and text. Thin: parse the query, ask
the engine (the supervisor's samples explorer), answer."""

from __future__ import annotations

from pydantic import BaseModel, Field
from quart import Blueprint, Response, jsonify, request
from quart_schema import document_querystring, document_response, tag

from lmeval_trio.engine.samples import MAX_LIMIT, SamplesQuery
from lmeval_trio.errors import InvalidParameter
from lmeval_trio.http import schemas
from lmeval_trio.http.params import bool_arg, int_arg, supervisor, text_arg

MAX_TEXT_CHARS = 200
MAX_CURSOR_CHARS = 40


class SamplesQueryString(BaseModel):
    task: str | None = Field(
        None, max_length=MAX_TEXT_CHARS, description="Required when the job has several tasks."
    )
    limit: int = Field(20, ge=1, le=MAX_LIMIT)
    cursor: str | None = Field(
        None, max_length=MAX_CURSOR_CHARS, description="next_cursor of the previous page."
    )
    offset: int | None = Field(None, ge=0, le=2**62, description="Instead of a cursor.")
    correct: bool | None = Field(None, description="Right (true) or wrong (false) samples.")
    metric: str | None = Field(
        None,
        max_length=MAX_TEXT_CHARS,
        description="The 0/1 metric `correct` judges (default: the task's only one).",
    )
    filter: str | None = Field(None, max_length=MAX_TEXT_CHARS, description="lm-eval filter.")
    q: str | None = Field(
        None, max_length=MAX_TEXT_CHARS, description="Text in prompt, target or responses."
    )


def blueprint() -> Blueprint:
    bp = Blueprint("samples", __name__)

    @bp.get("/job/<int:job_id>/samples")
    @tag(["outputs"])
    @document_querystring(SamplesQueryString)
    @document_response(schemas.SamplesPage, 200)
    @document_response(schemas.Error, 404)
    @document_response(schemas.Error, 409)
    @document_response(schemas.Error, 422)
    async def samples(job_id: int) -> Response:
        """A page of the job's samples (it must have run with log_samples): per sample its
        prompt, target, raw and filtered responses and metric values. Served from an index
        built once per samples file. 409 while the job runs (lm-eval writes samples at its
        end), 404 when it logged none."""
        query = _query()
        page = await supervisor().samples_page(job_id, query)
        return jsonify(page)

    return bp


def _query() -> SamplesQuery:
    cursor = text_arg("cursor", MAX_CURSOR_CHARS)
    offset = int_arg("offset", None, minimum=0, maximum=2**62)
    if cursor is not None and offset is not None:
        raise InvalidParameter("query", "cursor", "give a cursor or an offset, not both")
    correct = bool_arg("correct", False) if request.args.get("correct") else None
    return SamplesQuery(
        task=text_arg("task", MAX_TEXT_CHARS),
        limit=int_arg("limit", 20, minimum=1, maximum=MAX_LIMIT) or 20,
        cursor=cursor,
        offset=offset,
        correct=correct,
        q=text_arg("q", MAX_TEXT_CHARS),
        filter=text_arg("filter", MAX_TEXT_CHARS),
        metric=text_arg("metric", MAX_TEXT_CHARS),
    )
