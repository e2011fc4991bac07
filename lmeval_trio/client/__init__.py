"""A typed HTTP client for lmeval-trio: ``Client`` (blocking) and ``AsyncClient`` (trio or asyncio).

Both cover every route and return the server's own pydantic models
(:mod:`lmeval_trio.http.schemas`), so a script sees exactly the shapes the server documents.
Failures come in two kinds a caller can act on: :class:`ServerUnreachable` (no usable answer)
and :class:`ApiError` (the server said no, and ``detail`` says why)::

    with Client("http://127.0.0.1:8080") as client:
        job_id = client.submit({"model": "dummy", "tasks": "my_task"}).job_id
        for event in client.events(job_id):  # status, progress, log lines, then the end
            ...
        final = client.get_job(job_id)

The URL and API key default to ``LMEVAL_URL`` and ``LMEVAL_API_KEY``. Route logic lives in
small I/O-free helpers (``Call``, ``Follow``, ``LogPager``) so the two clients differ only
in how they wait. When leaving an async follow helper early, close it
(``contextlib.aclosing``) so its connection is released at once.
"""

from __future__ import annotations

from lmeval_trio.client._async import AsyncClient
from lmeval_trio.client._protocol import API_KEY_ENV, DEFAULT_URL, URL_ENV, Stream
from lmeval_trio.client._sync import Client
from lmeval_trio.client._types import (
    ApiError,
    ClientError,
    EndEvent,
    JobEvent,
    JobsChanged,
    LogEvent,
    LogLine,
    Phase,
    Progress,
    ProgressEvent,
    ServerUnreachable,
    StatusEvent,
    describe_detail,
)

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_URL",
    "URL_ENV",
    "ApiError",
    "AsyncClient",
    "Client",
    "ClientError",
    "EndEvent",
    "JobEvent",
    "JobsChanged",
    "LogEvent",
    "LogLine",
    "Phase",
    "Progress",
    "ProgressEvent",
    "ServerUnreachable",
    "StatusEvent",
    "Stream",
    "describe_detail",
]
