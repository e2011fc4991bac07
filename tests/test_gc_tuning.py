"""The served app freezes its long-lived objects out of the collector's full passes: once it
serves, and again once lm-eval's task catalog is built (asgi.create_app, as hypercorn runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import CACHE_DIR, SUPPORT

# The served app (asgi.create_app) on a real hypercorn in a fresh interpreter, so that the
# freezing happens in its own process, not in pytest's.
SCRIPT = """
import gc, json, sys
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio import serve
from lmeval_trio import asgi
from lmeval_trio.http.params import SUPERVISOR_KEY

async def main():
    app = asgi.create_app()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve(
            app, config, shutdown_trigger=shutdown.wait, task_status=task_status))
        serving = gc.get_freeze_count()
        supervisor = app.extensions[SUPERVISOR_KEY]
        with trio.fail_after(120):
            await supervisor.catalogs.builtin_built.wait()
            await trio.testing.wait_all_tasks_blocked()  # the freezing task has run
        catalog = len(supervisor.catalogs._builtin)
        print(json.dumps({"serving": serving, "built": gc.get_freeze_count(), "catalog": catalog}))
        shutdown.set()

trio.run(main)
"""


def test_served_app_freezes_long_lived_objects(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMEVAL_")}
    env.update(
        LMEVAL_DATA_DIR=str(tmp_path / "data"),
        LMEVAL_ALLOWED_PATH_ROOTS=str(SUPPORT),
        LMEVAL_CACHE_DIR=str(CACHE_DIR),
        LMEVAL_CHECK_TASKS="true",
        LMEVAL_FORK_SERVERS="0",
        MAX_CONCURRENCY="0",
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["serving"] > 10_000  # lm-eval's request model, the app, the supervisor
    assert found["catalog"] > 1000
    assert found["built"] > found["serving"] + found["catalog"]  # the catalog's objects too
