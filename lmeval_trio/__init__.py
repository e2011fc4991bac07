"""lmeval-trio: lm-evaluation-harness jobs served over HTTP on Trio.

The public API is importable from here, loaded on first use: every job process starts with
``python -m lmeval_trio.harness.fastrun``, which imports this package, so importing it must
stay cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmeval_trio.client import ApiError, AsyncClient, Client, ServerUnreachable
    from lmeval_trio.config import Settings
    from lmeval_trio.embedding import hypercorn_config, serve_app
    from lmeval_trio.engine.supervisor import Supervisor
    from lmeval_trio.errors import LmevalTrioError
    from lmeval_trio.http.app import create_app
    from lmeval_trio.jobs.record import JobRecord
    from lmeval_trio.jobs.status import JobStatus

_EXPORTS = {
    "ApiError": "lmeval_trio.client",
    "AsyncClient": "lmeval_trio.client",
    "Client": "lmeval_trio.client",
    "ServerUnreachable": "lmeval_trio.client",
    "Settings": "lmeval_trio.config",
    "hypercorn_config": "lmeval_trio.embedding",
    "serve_app": "lmeval_trio.embedding",
    "LmevalTrioError": "lmeval_trio.errors",
    "create_app": "lmeval_trio.http.app",
    "JobRecord": "lmeval_trio.jobs.record",
    "JobStatus": "lmeval_trio.jobs.status",
    "Supervisor": "lmeval_trio.engine.supervisor",
}

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "JobRecord",
    "JobStatus",
    "LmevalTrioError",
    "ServerUnreachable",
    "Settings",
    "Supervisor",
    "create_app",
    "hypercorn_config",
    "serve_app",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmeval_trio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
