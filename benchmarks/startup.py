"""Benchmark 5: server start-up time and idle RSS.

Starts the README's command, ``hypercorn --config hypercorn.toml --bind 127.0.0.1:0
lmeval_trio.asgi:app``, with a fresh data dir, and times (from just before the spawn) until the
worker logs ``Running on`` (the app's start-up is done by then) and until the first ``GET
/healthz`` answers 200. RSS (VmRSS) of the hypercorn parent and of the worker, which is the
server (the app, supervisor and store), is read once ready and again after a warm-up: one
job (the shell child) run to its end, then ``GET /jobs``, ``GET /job/1``, ``/metrics``,
``/openapi.json``. Target: idle RSS <= 80 MB (judged on the worker after the warm-up; the
parent's RSS is reported beside it).

The start is timed twice: with the environment as inherited (where ``PYTHONDONTWRITEBYTECODE=1``
and a venv without ``.pyc`` files, as on the development machine, mean every start compiles
its imports), and as "cached" with a warm bytecode cache (``PYTHONPYCACHEPREFIX``, filled by
one start left out), which is what the Docker image (``UV_COMPILE_BYTECODE=1``) or any
environment that may write ``__pycache__`` gets.

    uv run python -m benchmarks.startup [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks._child import Fifo, child_job, io_folder, open_fifo, write_child
from benchmarks._report import Metric, Report, Target, run
from benchmarks._server import MB, Server, hypercorn_server, rss_bytes, submit, wait_idle

TIMES = ("time_to_running_s", "time_to_healthz_s")  # per variant
MEMORY = ("worker_rss_ready_MB", "worker_rss_idle_MB", "parent_rss_MB", "total_rss_idle_MB")
WARMUP_ROUTES = ("/jobs", "/job/1", "/metrics", "/openapi.json")


class Starts:
    """Start-up times per variant ("" = inherited, "cached "), memory from every start."""

    def __init__(self) -> None:
        self.metrics = {f"{v}{n}": Metric(f"{v}{n}", "s") for v in ("", "cached ") for n in TIMES}
        self.metrics |= {name: Metric(name, "MB") for name in MEMORY}

    def add(self, variant: str, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.metrics[variant + name if name in TIMES else name].add(value)


async def measure(
    runs: int = 5, inherited: bool = True, cached: bool = True, pycache: Path | None = None
) -> Report:
    """``runs`` starts per variant; ``pycache`` (default: a temp dir, filled by one start
    left out) holds the cached variant's bytecode."""
    starts = Starts()
    with tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp:
        folder = io_folder(Path(tmp))
        child = write_child(folder)
        fill = 1 if pycache is None else 0
        pyc = {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(pycache or folder / "pyc")}
        async with open_fifo(folder / "announce") as fifo:
            for run in range(runs if inherited else 0):
                starts.add("", await one_start(fifo, child, folder.parent / f"data{run}"))
            for run in range(runs + fill if cached else 0):
                values = await one_start(fifo, child, folder.parent / f"c{run}", **pyc)
                if run >= fill:
                    starts.add("cached ", values)
    return Report(
        "startup",
        "hypercorn subprocess: start-up time and RSS of the idle server",
        list(starts.metrics.values()),
        [Target("worker_rss_idle_MB", "median", 80)],
        {
            "runs": runs,
            "command": "hypercorn --config hypercorn.toml lmeval_trio.asgi:app",
            "inherited_PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
        },
    )


async def one_start(fifo: Fifo, child: Path, data_dir: Path, **env: str) -> dict[str, float]:
    settings = {
        "LMEVAL_ALLOWED_LM_EVAL_PATHS": str(child),
        "LMEVAL_ALLOWED_PATH_ROOTS": str(child.parent),
        **env,
    }
    # Made before the spawn (it is not part of the start), closed before the server stops
    # (an open keep-alive connection would hold hypercorn's graceful shutdown).
    client = httpx.AsyncClient(timeout=60)
    async with hypercorn_server(data_dir, **settings) as server, client:
        health = await client.get(server.url + "/healthz")
        healthy_at = time.monotonic()
        if health.status_code != 200:
            raise RuntimeError(f"/healthz: {health.status_code} {health.text}")
        ready = rss_bytes(server.worker_pid)
        await warm_up(client, fifo, child, server)
        worker, parent = rss_bytes(server.worker_pid), rss_bytes(server.parent_pid)
    return {
        "time_to_running_s": server.running_at - server.spawned_at,
        "time_to_healthz_s": healthy_at - server.spawned_at,
        "worker_rss_ready_MB": ready / MB,
        "worker_rss_idle_MB": worker / MB,
        "parent_rss_MB": parent / MB,
        "total_rss_idle_MB": (worker + parent) / MB,
    }


async def warm_up(client: httpx.AsyncClient, fifo: Fifo, child: Path, server: Server) -> None:
    """One job to its end and a few reads, as a server that has done some work."""
    job = child_job(child, "warm", BENCH_FIFO=str(fifo.path))
    client.base_url = httpx.URL(server.url)
    await submit(client, job)
    await fifo.expect("start warm")
    await wait_idle(client)
    for route in WARMUP_ROUTES:
        response = await client.get(route)
        if response.status_code != 200:
            raise RuntimeError(f"GET {route}: {response.status_code}")


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-inherited", action="store_true", help="only cached-bytecode starts")
    parser.add_argument("--no-cached", action="store_true", help="only inherited-env starts")
    args = parser.parse_args(argv)
    return run(measure, args.runs, not args.no_inherited, not args.no_cached)


if __name__ == "__main__":
    main()
