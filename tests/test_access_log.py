"""The access log's lazy atoms: the same lines as hypercorn's own atoms, from a launched
server too (hypercorn.toml's ``accesslog = "-"``), and installed only over hypercorn's Logger."""

from __future__ import annotations

import multiprocessing
import re
import signal
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.logging import AccessLogAtoms, Logger
from hypercorn.statsd import StatsdLogger

from lmeval_trio.http.access_log import LazyAccessLogAtoms, LazyAtomsLogger, install
from lmeval_trio.runners import process
from tests.test_server_process import (
    HYPERCORN,
    ROOT,
    _drain,
    _environment,
    _free_port,
    _wait_until_serving,
)

ATOMS: tuple[str, ...] = ("h", "l", "t", "r", "R", "s", "st", "S", "m", "U", "Uq", "q", "H")
ATOMS += ("b", "B", "f", "a", "T", "D", "L", "p", "{User-Agent}i", "{x-twice}i")
ATOMS += ("{content-type}o", "{LMEVAL_ATOM_TEST}e", "{nope}i", "zz")
EVERY_ATOM = " ".join(f"%({name})s" for name in ATOMS)
FORMATS = (Config.access_log_format, EVERY_ATOM)


def _scope(**changes: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/job",
        "query_string": b"dry_run=true",
        "client": ("127.0.0.1", 50123),
        "headers": [
            (b"host", b"localhost"),
            (b"User-Agent", b"curl/8.0 \xe9"),
            (b"x-twice", b"first"),
            (b"X-Twice", b"second"),
        ],
    }
    scope.update(changes)
    return scope


RESPONSE = {
    "status": 200,
    "headers": [(b"content-length", b"42"), (b"Content-Type", b"application/json")],
}
CASES = {
    "post": (_scope(), RESPONSE),
    "no query, no client": (_scope(query_string=b"", client=None), RESPONSE),
    "unix client": (_scope(client=("/tmp/sock",)), RESPONSE),
    "odd client": (_scope(client=("a", 1, 2)), RESPONSE),
    "no response": (_scope(), None),
    "status without a phrase": (_scope(), {"status": 599, "headers": []}),
    "websocket": (_scope(type="websocket", method="GET"), {"status": 101, "headers": []}),
}


@pytest.mark.parametrize("fmt", FORMATS, ids=("default", "every atom"))
@pytest.mark.parametrize("case", CASES)
def test_lazy_atoms_make_hypercorns_line(
    fmt: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMEVAL_ATOM_TEST", "from the environment")
    request, response = CASES[case]
    for _ in range(5):  # the two lines straddle a second at most once in a row
        ours = fmt % LazyAccessLogAtoms(request, response, 0.0123456)
        theirs = fmt % AccessLogAtoms(request, response, 0.0123456)  # type: ignore[arg-type]
        if ours == theirs:
            break
        time.sleep(0.01)
    assert ours == theirs
    assert "-" in ours


def test_install_replaces_only_hypercorns_own_logger() -> None:
    config = Config()
    config.accesslog = "-"
    made = config.log  # made before install: its class is swapped in place
    assert install(config)
    assert config.log is made and type(made) is LazyAtomsLogger
    assert isinstance(made.atoms(_scope(), RESPONSE, 0.1), LazyAccessLogAtoms)
    statsd = Config()
    statsd.logger_class = StatsdLogger
    assert not install(statsd)
    assert statsd.logger_class is StatsdLogger
    assert not install()  # not a hypercorn worker: nothing to find


def _worker(config: Config, out: Any) -> None:
    """A process started the way hypercorn starts its workers (``config`` keyword)."""
    out.put((install(), type(config.log).__name__))


def test_install_finds_the_hypercorn_workers_config() -> None:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    worker = context.Process(target=_worker, kwargs={"config": Config(), "out": out})
    worker.start()
    installed, logger = out.get(timeout=60)
    worker.join(60)
    assert (installed, logger) == (True, LazyAtomsLogger.__name__)
    assert Logger is not LazyAtomsLogger


async def test_launched_server_writes_the_default_access_line(tmp_path: Path) -> None:
    port = _free_port()
    argv = [str(HYPERCORN), "--config", "hypercorn.toml", "--bind", f"127.0.0.1:{port}"]
    argv.append("lmeval_trio.asgi:app")
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                argv,
                cwd=ROOT,
                env=_environment(tmp_path / "data"),
                stdout=subprocess.PIPE,  # the access log
                stderr=subprocess.PIPE,
                check=False,
                start_new_session=True,
            )
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            await _wait_until_serving(proc.stderr)
            nursery.start_soon(_drain, proc.stderr, bytearray())
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, headers={"User-Agent": "atoms/1"}) as c:
                assert (await c.get("/healthz?x=1")).status_code == 200
            line = b""
            with trio.fail_after(30):
                while b'"GET /healthz 1.1" 200' not in line:
                    line += await proc.stdout.receive_some()
        finally:
            with trio.CancelScope(shield=True):
                proc.send_signal(signal.SIGKILL)
                await process.kill_group(proc.pid, grace_s=1)
    stamp = r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]"
    pattern = rf'127\.0\.0\.1:\d+ - - {stamp} "GET /healthz 1\.1" 200 \d+ "-" "atoms/1"'
    assert re.search(pattern, line.decode()), line.decode()
