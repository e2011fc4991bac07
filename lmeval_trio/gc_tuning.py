"""The server process's garbage collector: what lives as long as the server is frozen out of
its full passes.

A full collection walks every tracked object: in a server with lm-eval's request model and
task catalog loaded (~110,000 objects) that was ~80 ms of CPU, 80-230 ms of wall time under
load, once per ~2,000 ``POST /job`` (benchmark 10), during which no request moves: the
submissions in flight were its p99. ``gc.freeze`` moves the objects alive at that moment
out of the collector's generations (they are still freed by reference counting); they are
frozen when the server starts serving and again once the built-in task catalog is built.
Only for the process hypercorn runs (``asgi.create_app``): an embedding program owns its
own collector.
"""

from __future__ import annotations

import gc

from quart_trio import QuartTrio

from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.http.params import SUPERVISOR_KEY


def settle() -> None:
    """Collect what is garbage now, then freeze every survivor (kept for good)."""
    gc.collect()
    gc.freeze()


def install(app: QuartTrio) -> None:
    """Freeze the server's long-lived objects once it serves and once its catalog is built."""

    @app.before_serving
    async def freeze_long_lived() -> None:
        settle()
        app.nursery.start_soon(_after_catalog, app)


async def _after_catalog(app: QuartTrio) -> None:
    supervisor = app.extensions.get(SUPERVISOR_KEY)
    if isinstance(supervisor, Supervisor):  # started by the before_serving before this one
        await supervisor.catalogs.builtin_built.wait()
        settle()
