"""The app hypercorn serves, built when hypercorn needs it: importing this module does nothing.

Two launch forms, the same app::

    hypercorn --config hypercorn.toml 'lmeval_trio.asgi:create_app()'  # built as hypercorn loads it
    hypercorn --config hypercorn.toml lmeval_trio.asgi:app             # built at lifespan startup

Settings come from the environment (see README). An invalid setting stops the start with one
line naming the variable, and so does an lm-eval that lacks an internal the request model is
derived from (naming the internal): ``lmeval-trio: <why>`` on stderr, exit code 2, either form.
Nothing starts until hypercorn's lifespan startup, when the app starts its supervisor.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from quart_trio import QuartTrio

from lmeval_trio import gc_tuning
from lmeval_trio.config import Settings, SettingsError
from lmeval_trio.harness.versions import LmEvalUnsupported, require_internals
from lmeval_trio.http import access_log
from lmeval_trio.http import app as http_app
from lmeval_trio.logging_setup import configure_logging

EXIT_CANNOT_START = 2


def create_app() -> QuartTrio:
    """The served app, from the environment; exits 2 with the reason if it cannot start."""
    try:
        settings = Settings.from_env()
        require_internals()  # the request model (cached for the app's routes) and the rest
    except (SettingsError, LmEvalUnsupported) as error:
        print(f"lmeval-trio: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CANNOT_START) from None
    configure_logging(settings)
    access_log.install()  # the worker's access log: the same lines, cheaper (access_log.py)
    app = http_app.create_app(settings)
    gc_tuning.install(app)  # long-lived objects out of the collector's full passes
    return app


class LazyApp:
    """An ASGI app that builds :func:`create_app`'s on its first call (hypercorn's lifespan
    startup), so that ``lmeval_trio.asgi:app`` costs nothing to import."""

    def __init__(self) -> None:
        self.built: QuartTrio | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.built is None:
            self.built = _create_or_exit()  # no await: one call builds it
        await self.built(scope, receive, send)


def _create_or_exit() -> QuartTrio:
    """create_app(), exiting the process as create_app's SystemExit does at load time.

    Here the call runs inside hypercorn's lifespan task, where a SystemExit would come out of
    its nursery as an exception group with a traceback (exit code 1). Nothing has started yet
    (no supervisor, no job), so leaving at once loses nothing and keeps the one-line refusal.
    """
    try:
        return create_app()
    except SystemExit as refused:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(refused.code if isinstance(refused.code, int) else EXIT_CANNOT_START)


#: For existing launch commands (``lmeval_trio.asgi:app``); built on first use.
app = LazyApp()
