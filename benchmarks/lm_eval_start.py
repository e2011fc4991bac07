"""Benchmark 6: lm-eval start overhead. Dispatch → lm-eval's first model request.

Real lm-eval, the tiny ``tiny_mc`` task from ``tests/support/tasks`` (``include_path``), model
``local-completions`` against the stub OpenAI server of ``tests/support/stub_openai.py``, run
in this process with a handler that timestamps every request (``time.monotonic``, the clock
the benchmark reads just before ``POST /job``). Four modes, interleaved in each repetition:

* ``stock``: ``LMEVAL_FAST_START=false``, the server runs ``python -m lm_eval`` (after one
  stock job left out of the statistics, so its bytecode cache is as warm as it is in service;
  that first job's figures are in the context, as the stock counterpart of ``cold``);
* ``cold``: fast start without warm runners (``LMEVAL_FORK_SERVERS=0``), the server's cache
  dir (``LMEVAL_CACHE_DIR``: the task index and the jobs' compiled bytecode) emptied just
  before the job, as after an install or upgrade;
* ``index``: the same server again, the caches now built: a fresh Python per job that reads
  the task index from its cache;
* ``warm``: the default server (fast start, ``LMEVAL_FORK_SERVERS=2``), with its own cache
  dir, measured once its warm runner has reported ready (the server's log line), as for any
  job that does not follow the previous one within ~3 s: lm_eval already imported, the index
  already loaded; the job's arguments reach a waiting process;
* ``warm_next``: the same server, a job submitted as soon as the ``warm`` job ended (a
  sequential sweep): it takes the runner started when the previous job started, still
  importing.

Reported: dispatch → first ``/v1`` request ("first request", the moment evaluation starts),
dispatch → first request of any kind (the remote tokenizer's, at model set-up), and the job's
``started_at`` → ``finished_at``; plus stock/warm and stock/cold ratios of the first request,
per repetition. For scale, each repetition also times ``python -c "import lm_eval.evaluator,
lm_eval.models.openai_completions"`` with a warm bytecode cache, as the server gives its jobs
("import floor": what any runner that starts a fresh Python per job pays before it can send
a request). Target (issue 5): warm fast start
evaluates within 3 s of dispatch.

    uv run python -m benchmarks.lm_eval_start [--reps 3] [--modes stock,cold,warm]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks._report import Metric, Report, Target, run
from benchmarks._server import (
    SUPPORT,
    Server,
    ServerFactory,
    hypercorn_server,
    submit,
    wait_idle,
)
from tests.support.stub_openai import (
    DEFAULT_TASKS_DIR,
    StubHandle,
    StubHandler,
    StubServer,
    StubState,
    load_facts,
)

MODES = ("stock", "cold", "index", "warm", "warm_next")
#: The server each mode runs on.
SERVER_OF = {"stock": "stock", "cold": "fast", "index": "fast", "warm": "warm", "warm_next": "warm"}
IMPORT_FLOOR = "import lm_eval.evaluator, lm_eval.models.openai_completions"


class TimedHandler(StubHandler):
    """The stub's handler, noting each request's arrival before handling it."""

    server: TimedStub

    def do_GET(self) -> None:
        self.server.note(f"GET {self.path}")
        super().do_GET()

    def do_POST(self) -> None:
        self.server.note(f"POST {self.path}")
        super().do_POST()


class TimedStub(StubServer):
    """The stub OpenAI server with a log of (time.monotonic(), "METHOD path") arrivals."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), StubState(facts=load_facts(DEFAULT_TASKS_DIR)))
        self.RequestHandlerClass = TimedHandler
        self.arrivals: list[tuple[float, str]] = []  # list.append is atomic

    def note(self, route: str) -> None:
        self.arrivals.append((time.monotonic(), route))

    def first_since(self, since: float, prefix: str = "") -> float | None:
        times = [
            at for at, route in list(self.arrivals) if at >= since and route.startswith(prefix)
        ]
        return min(times, default=None)

    @property
    def completions_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/completions"


@contextmanager
def timed_stub() -> Iterator[TimedStub]:
    server = TimedStub()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        StubHandle(server, thread).close()


def tiny_job(completions_url: str) -> dict[str, Any]:
    return {
        "model": "local-completions",
        "model_args": {
            "model": "stub-model",
            "base_url": completions_url,
            "tokenizer_backend": "remote",
        },
        "tasks": "tiny_mc",
        "include_path": str(SUPPORT / "tasks"),
    }


class JobFailed(RuntimeError):
    pass


async def one_run(client: httpx.AsyncClient, stub: TimedStub) -> dict[str, float]:
    """Submit the tiny job, wait for its end; seconds to each milestone."""
    before = time.monotonic()
    job_id = await submit(client, tiny_job(stub.completions_url))
    await wait_idle(client)
    job = (await client.get(f"/job/{job_id}")).json()
    first_v1, first_any = stub.first_since(before, "POST /v1/"), stub.first_since(before)
    if job["status"] != "Completed" or first_v1 is None or first_any is None:
        raise JobFailed(f"job {job_id}: {job['status']}: {job['reason']}")
    started = datetime.fromisoformat(job["started_at"])
    return {
        "first_request_s": first_v1 - before,
        "first_contact_s": first_any - before,
        "job_s": (datetime.fromisoformat(job["finished_at"]) - started).total_seconds(),
    }


class Runs:
    """The metrics of every mode, the per-repetition ratios, and failures."""

    def __init__(self, modes: Sequence[str], floor: bool) -> None:
        self.modes = modes
        self.metrics: dict[str, Metric] = {}
        if floor:
            self.metrics["import floor s"] = Metric("import floor s", "s")
        for mode in modes:
            for name in ("first_request_s", "first_contact_s", "job_s"):
                self.metrics[f"{mode} {name}"] = Metric(f"{mode} {name}", "s")
        for fast in MODES[1:]:
            if "stock" in modes and fast in modes:
                name = f"stock/{fast} first_request ratio"
                self.metrics[name] = Metric(name, "x", higher_is_better=True)
        self.failures: list[str] = []
        self.stock_warmups: list[dict[str, float]] = []  # stock's first jobs: cold bytecode

    def add(self, mode: str, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.metrics[f"{mode} {name}"].add(value)

    def add_ratios(self, rep: dict[str, dict[str, float]]) -> None:
        for fast in MODES[1:]:
            if "stock" in rep and fast in rep:
                ratio = rep["stock"]["first_request_s"] / rep[fast]["first_request_s"]
                self.metrics[f"stock/{fast} first_request ratio"].add(ratio)


async def measure(
    reps: int = 3,
    modes: Sequence[str] = MODES,
    cache_dir: Path | None = None,
    server_factory: ServerFactory = hypercorn_server,
    floor: bool = True,
    stock_warmup: int = 1,
) -> Report:
    runs = Runs(modes, floor)
    with tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp, timed_stub() as stub:
        folder = Path(tmp)
        cache = cache_dir or folder / "cache"
        async with AsyncExitStack() as stack:
            clients = await open_servers(stack, server_factory, folder, cache, modes)
            for _ in range(stock_warmup if "stock" in clients else 0):
                runs.stock_warmups.append(await one_run(clients["stock"].client, stub))
            if floor:
                await import_seconds(folder / "pyc")  # fills its bytecode cache
            for _ in range(reps):
                if floor:
                    runs.metrics["import floor s"].add(await import_seconds(folder / "pyc"))
                runs.add_ratios(await one_repetition(clients, stub, cache, runs))
    return Report(
        "lm_eval_start",
        "dispatch -> lm-eval's first model request, tiny include_path task, real lm-eval",
        list(runs.metrics.values()),
        [Target("warm first_request_s", "median", 3)] if "warm" in modes else [],
        {
            "reps": reps,
            "modes": list(modes),
            "stock_warmup_runs_excluded": runs.stock_warmups,
            "task": "tiny_mc",
            "failures": runs.failures,
        },
    )


@dataclass
class ModeServer:
    """A mode's server and client."""

    server: Server
    client: httpx.AsyncClient

    async def before_run(self, mode: str) -> None:
        """``warm`` and ``warm_next``: wait for the fork server's "ready" log line (once: it
        serves every later job; ``warm_next`` then differs from ``warm`` only in following
        another job at once)."""
        if mode not in ("warm", "warm_next"):
            return
        log = self.server.log
        if log is None:
            raise RuntimeError("warm modes need a subprocess server (its log tells readiness)")
        with trio.fail_after(600):  # the first fork server may build the task index
            await log.wait_warm_ready(1)


async def open_servers(
    stack: AsyncExitStack, factory: ServerFactory, folder: Path, cache: Path, modes: Sequence[str]
) -> dict[str, ModeServer]:
    """A server per kind: stock, fast start without warm runners (cold and index), default."""
    settings = {
        "stock": {"LMEVAL_FAST_START": "false"},
        "fast": {
            "LMEVAL_FAST_START": "true",
            "LMEVAL_CACHE_DIR": str(cache),
            "LMEVAL_FORK_SERVERS": "0",
        },
        "warm": {"LMEVAL_CACHE_DIR": str(cache.with_name(cache.name + "-warm"))},
    }
    targets: dict[str, ModeServer] = {}
    for kind, env in settings.items():
        if any(SERVER_OF[m] == kind for m in modes):
            env = {**env, "LMEVAL_FORK_SERVERS": env.get("LMEVAL_FORK_SERVERS", "2")}
            server = await stack.enter_async_context(factory(folder / kind, **env))
            client = httpx.AsyncClient(base_url=server.url, timeout=600)
            targets[kind] = ModeServer(server, await stack.enter_async_context(client))
    return {mode: targets[SERVER_OF[mode]] for mode in modes}


async def one_repetition(
    clients: dict[str, ModeServer], stub: TimedStub, cache: Path, runs: Runs
) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for mode, target in clients.items():
        if mode == "cold":
            await trio.to_thread.run_sync(remove_tree, cache)
        await target.before_run(mode)
        try:
            results[mode] = await one_run(target.client, stub)
        except JobFailed as error:
            runs.failures.append(f"{mode}: {error}")
            continue
        runs.add(mode, results[mode])
    return results


async def import_seconds(pycache: Path) -> float:
    """The import floor, as the server's jobs import: the environment's own bytecode (the
    server compiles it), writing none. ``pycache`` is unused (jobs no longer have a prefix)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    before = time.monotonic()
    await trio.run_process([sys.executable, "-c", IMPORT_FLOOR], env=env)
    return time.monotonic() - before


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES), help="of " + ",".join(MODES))
    parser.add_argument("--cache-dir", type=Path, help="fast start's caches (default: temp dir)")
    parser.add_argument("--stock-warmup", type=int, default=1, help="unmeasured stock jobs")
    parser.add_argument("--no-floor", action="store_true", help="skip the import-floor timing")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes: {sorted(unknown)}")
    return run(
        measure,
        args.reps,
        modes,
        args.cache_dir,
        hypercorn_server,
        not args.no_floor,
        args.stock_warmup,
    )


if __name__ == "__main__":
    main()
