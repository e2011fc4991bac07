"""Run lmeval-trio inside your own Trio program: the supervisor alone, or with its HTTP API.

The supervisor needs no HTTP. It is an async context manager that owns a nursery; every job
(and the job's whole process group) lives inside it::

    async with Supervisor(Settings.from_env(data_dir="evals")) as supervisor:
        record = await supervisor.submit({"model": "dummy", "tasks": "my_task"})
        final = await supervisor.wait(record.id)          # or: await supervisor.stop(record.id)

To serve the HTTP API as well, run :func:`serve_app` in your nursery. The app borrows your
supervisor, so the API and your code see the same jobs, and the server can stop (shutdown
trigger, or cancellation) while the supervisor goes on::

    async with Supervisor(settings) as supervisor, trio.open_nursery() as nursery:
        urls = await nursery.start(
            partial(serve_app, supervisor, bind="127.0.0.1:8080", shutdown_trigger=done.wait)
        )

Structured concurrency holds: when these blocks exit, by return, exception or cancellation,
the server has stopped and every job process is gone. Jobs still running then are requeued in
the job store (like a server shutdown), so the next supervisor on the same data dir resumes
them; set ``requeue_interrupted=False`` to mark them Failed instead. See
``examples/embed_in_trio.py``.

Every error lmeval-trio raises on purpose is an :class:`~lmeval_trio.errors.LmevalTrioError`
(see errors.py for the tree); the supervisor's refusals (JobNotFound, QueueFull, NotAccepting,
NotResumable) are also :class:`SupervisorError` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from lmeval_trio.config import Settings
from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.errors import (
    JobNotFound,
    LmevalTrioError,
    NotAccepting,
    NotResumable,
    QueueFull,
    SupervisorError,
)
from lmeval_trio.http.access_log import install as lazy_access_atoms
from lmeval_trio.http.app import create_app
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import JobStatus

__all__ = [
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "LmevalTrioError",
    "NotAccepting",
    "NotResumable",
    "QueueFull",
    "Settings",
    "Supervisor",
    "SupervisorError",
    "create_app",
    "hypercorn_config",
    "serve_app",
]


def hypercorn_config(
    bind: str | Sequence[str] = "127.0.0.1:0",
    *,
    graceful_timeout_s: float = 5.0,
    access_log: bool = False,
) -> Config:
    """A hypercorn Config for an embedded server.

    ``graceful_timeout_s`` bounds how long open requests (event streams, for one) may delay
    the server's exit once it is told to stop. The access log is off: embedding programs
    usually have logging of their own.
    """
    config = Config()
    config.bind = [bind] if isinstance(bind, str) else list(bind)
    config.graceful_timeout = graceful_timeout_s
    config.accesslog = "-" if access_log else None
    lazy_access_atoms(config)
    return config


async def serve_app(
    supervisor: Supervisor,
    *,
    bind: str | Sequence[str] = "127.0.0.1:0",
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    config: Config | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the HTTP API for ``supervisor`` (which you own) until ``shutdown_trigger``
    returns or the task is cancelled.

    Start it with ``nursery.start``: it reports the bound URLs once it accepts connections
    (``bind="127.0.0.1:0"`` picks a free port). ``config`` overrides ``bind``. The app
    installs no signal handlers and never stops the supervisor.
    """
    if not supervisor.alive:
        raise NotAccepting("serve_app needs a running supervisor: enter `async with` it first")
    app = create_app(supervisor=supervisor)
    await serve(
        app,
        config or hypercorn_config(bind),
        shutdown_trigger=shutdown_trigger,
        task_status=task_status,
    )
