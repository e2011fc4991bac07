"""create_app(): the Quart-Trio app, sharing its nursery with a supervisor.

The app either owns its supervisor (started in the app's nursery at startup, stopped at
shutdown: the hypercorn case) or borrows one the caller owns (embedding: the caller's
``async with Supervisor(...)`` outlives the app, and the app installs no signal handlers).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio
from quart_schema import QuartSchema
from quart_trio import QuartTrio

from lmeval_trio.config import Settings
from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.harness import versions
from lmeval_trio.http import (
    compare,
    dashboard,
    errors,
    jobs,
    ops,
    outputs,
    samples,
    security,
    sweeps,
    tasks,
)
from lmeval_trio.http.params import SUPERVISOR_KEY
from lmeval_trio.http.routing import StrictMap
from lmeval_trio.http.signals import GracefulSigterm
from lmeval_trio.http.strict_json import StrictJSONProvider

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger("lmeval_trio.http")


class App(QuartTrio):
    """QuartTrio on the strict URL map (ASCII ids, no redirects; see routing)."""

    url_map_class = StrictMap

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one ASGI connection; every send is shielded from the app's cancellation.

        Quart cancels its request task as soon as the server reports the client gone, and
        hypercorn 0.18 closes a connection whose request body was not read (a 401 answered
        before the body arrived) from inside that final send: cancelled there, it never
        closed the socket, and the connection stayed open until the client left.
        """
        if scope.get("type") != "http":
            await super().__call__(scope, receive, send)
            return

        async def shielded_send(message: Any) -> None:
            with trio.CancelScope(shield=True):
                await send(message)

        await super().__call__(scope, receive, shielded_send)


def create_app(
    settings: Settings | None = None, *, supervisor: Supervisor | None = None
) -> QuartTrio:
    """Build the app; pass ``supervisor`` to serve one you own, else the app runs its own."""
    settings = settings or (supervisor.settings if supervisor else Settings.from_env())
    app = App(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        BODY_TIMEOUT=settings.body_read_timeout_s,
        BACKGROUND_TASK_SHUTDOWN_TIMEOUT=settings.shutdown_timeout_s,
        QUART_SCHEMA_SWAGGER_JS_URL="/static/swagger-ui/swagger-ui-bundle.js",
        QUART_SCHEMA_SWAGGER_CSS_URL="/static/swagger-ui/swagger-ui.css",
        JSON_SORT_KEYS=False,
    )
    app.extensions["lmeval_trio.settings"] = settings
    untested = versions.untested_warning()
    if untested is not None:
        log.warning("%s", untested)
    QuartSchema(
        app,
        info={"title": "lmeval-trio", "version": _version()},
        redoc_ui_path=None,
        scalar_ui_path=None,
        swagger_ui_path="/docs",
    )
    app.json = _strict_json(app)
    errors.install(app)
    security.install(app, settings)
    app.register_blueprint(jobs.blueprint())
    app.register_blueprint(outputs.blueprint())
    app.register_blueprint(samples.blueprint())
    app.register_blueprint(sweeps.blueprint())
    app.register_blueprint(compare.blueprint())
    app.register_blueprint(ops.blueprint())
    app.register_blueprint(tasks.blueprint())
    app.register_blueprint(dashboard.blueprint())
    if supervisor is not None:
        app.extensions[SUPERVISOR_KEY] = supervisor
    else:
        _own_supervisor(app, settings)
    return app


def _strict_json(app: QuartTrio) -> StrictJSONProvider:
    """No NaN or Infinity out (strict_json.py), with quart-schema's conversions kept."""
    provider = StrictJSONProvider(app)
    provider.default = app.json.default  # type: ignore[attr-defined]
    provider.sort_keys = False  # keep the original's key order
    return provider


def _own_supervisor(app: QuartTrio, settings: Settings) -> None:
    sigterm = GracefulSigterm()

    @app.before_serving
    async def start() -> None:
        supervisor = Supervisor(settings)
        await app.nursery.start(supervisor.run)
        app.extensions[SUPERVISOR_KEY] = supervisor
        if settings.install_signal_handlers:
            await app.nursery.start(sigterm.run)
        log.info(
            "lmeval-trio serving; data in %s, %d slots, jobs %s",
            settings.data_dir,
            supervisor.slots.total,
            "confined" if supervisor.statistics().jobs_confined else "NOT CONFINED",
        )

    @app.after_serving
    async def stop() -> None:
        supervisor: Supervisor | None = app.extensions.pop(SUPERVISOR_KEY, None)
        if supervisor is not None:
            supervisor.shutdown()
            await supervisor.closed.wait()
        sigterm.finish()
        app.nursery.cancel_scope.cancel()  # the signal receiver


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lmeval-trio")
    except PackageNotFoundError:
        return "0+unknown"
