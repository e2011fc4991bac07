"""Task catalog routes: search lm-eval's tasks, groups and tags, or a user's task folders.
Thin by design: parse, ask the engine (task_checks), shape the answer."""

from __future__ import annotations

import trio
from pydantic import BaseModel, Field
from quart import Blueprint, Response, jsonify, request
from quart_schema import document_querystring, document_response, tag

from lmeval_trio.engine import task_checks
from lmeval_trio.errors import InvalidParameter
from lmeval_trio.http import schemas
from lmeval_trio.http.errors import error_response
from lmeval_trio.http.params import int_arg, supervisor, text_arg

MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_QUERY_CHARS = 200
MAX_NAME_CHARS = 500
MAX_FOLDERS = 16
MAX_FOLDER_CHARS = 4096


class TaskQuery(BaseModel):
    q: str | None = Field(None, max_length=MAX_QUERY_CHARS, description="Substring, any case.")
    kind: str | None = Field(
        None, pattern="^(task|group|tag)?$", description="task, group or tag; empty: any."
    )
    output_type: str | None = Field(None, max_length=MAX_QUERY_CHARS)
    include_path: str | None = Field(None, description="A task folder (repeatable).")
    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=2**62)


def blueprint() -> Blueprint:
    bp = Blueprint("tasks", __name__)

    @bp.get("/tasks")
    @tag(["tasks"])
    @document_querystring(TaskQuery)
    @document_response(schemas.TaskList, 200)
    @document_response(schemas.Error, 403)
    @document_response(schemas.Error, 422)
    @document_response(schemas.Error, 503)
    async def list_tasks() -> Response:
        """Search the catalog: lm-eval's own tasks, groups and tags, or (include_path) only
        those of the given task folders, judged by the same path policy as a job."""
        query = text_arg("q", MAX_QUERY_CHARS)
        kind = text_arg("kind", 10)
        if kind is not None and kind not in ("task", "group", "tag"):
            raise InvalidParameter("query", "kind", "expected one of task, group, tag")
        output_type = text_arg("output_type", MAX_QUERY_CHARS)
        limit = int_arg("limit", DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE) or DEFAULT_PAGE
        offset = int_arg("offset", 0, minimum=0, maximum=2**62) or 0
        catalog = await task_checks.listing_catalog(supervisor(), _folders())
        found = await trio.to_thread.run_sync(catalog.search, query, kind, output_type)
        page = found[offset : offset + limit]
        body = {
            "tasks": [e.summary() for e in page],
            "total": len(found),
            "limit": limit,
            "offset": offset,
        }
        return jsonify(body)

    @bp.get("/tasks/<name>")
    @tag(["tasks"])
    @document_response(schemas.TaskDetail, 200)
    @document_response(schemas.Error, 404)
    @document_response(schemas.Error, 503)
    async def get_task(name: str) -> Response:
        """One task, group or tag with its config after includes; a 404 suggests up to five
        close names."""
        if len(name) > MAX_NAME_CHARS:
            raise InvalidParameter("path", "name", f"longer than {MAX_NAME_CHARS} characters")
        catalog = await task_checks.listing_catalog(supervisor(), _folders())
        entry = catalog.get(name)
        if entry is None:
            close = await trio.to_thread.run_sync(catalog.suggestions, name)
            return _not_found(name, close)
        return jsonify(await trio.to_thread.run_sync(entry.detail))

    return bp


def _not_found(name: str, close: list[str]) -> Response:
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    detail = f"no task, group or tag named {_quoted(name)}{hint}"
    return error_response(404, detail, suggestions=close)


def _quoted(name: str) -> str:
    return repr(name if len(name) <= 100 else name[:100] + "...")


def _folders() -> list[str]:
    folders = [f for f in request.args.getlist("include_path") if f]  # "" = absent
    if len(folders) > MAX_FOLDERS:
        raise InvalidParameter("query", "include_path", f"at most {MAX_FOLDERS} folders")
    for folder in folders:
        if len(folder) > MAX_FOLDER_CHARS:
            raise InvalidParameter(
                "query", "include_path", f"longer than {MAX_FOLDER_CHARS} characters"
            )
    return folders
