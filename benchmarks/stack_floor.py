"""Benchmark 14: the floor under benchmark 10. The same client load (N ``POST /job`` of the
same body, from 16 concurrent keep-alive clients and from one) against a bare Quart-Trio app
on the same hypercorn command and configuration (``benchmarks/_floor_app.py``: read the JSON
body, answer with an id; nothing else), then against lmeval-trio itself with dispatch paused,
alternating, each on a fresh server. What the bare stack reaches bounds what any route on
it can reach on this machine: if the stack alone cannot do benchmark 10's target (>= 500/s,
p99 <= 50 ms with 16 clients), no work inside the route can.

    uv run python -m benchmarks.stack_floor [--submissions 4000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import httpx

from benchmarks._report import Metric, Report, Target, run
from benchmarks._server import hypercorn_server
from benchmarks.catalog import DEFAULT_CACHE
from benchmarks.submit_throughput import _catalogs_ready, job_body, load

FLOOR_APP = "benchmarks._floor_app:app"
SERVER_APP = "lmeval_trio.asgi:app"


async def _one_server(
    app: str, clients: int, submissions: int, cache_dir: Path, warmup: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp:
        settings = {
            "MAX_CONCURRENCY": "0",
            "LMEVAL_MAX_QUEUED_JOBS": "1000000",
            "LMEVAL_CACHE_DIR": str(cache_dir),
        }
        async with hypercorn_server(Path(tmp) / "data", app, **settings) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as first:
                if app == SERVER_APP:
                    await _catalogs_ready(first)
                for index in range(warmup):  # not counted
                    (await first.post("/job", json=job_body(index))).raise_for_status()
            return await load(server.url, server.worker_pid, clients, submissions)


async def measure(
    submissions: int = 4000,
    rounds: int = 2,
    clients: int = 16,
    cache_dir: Path = DEFAULT_CACHE,
    warmup: int = 100,
) -> Report:
    metrics: dict[str, Metric] = {}

    def add(label: str, unit: str, values: list[float], higher: bool = False) -> None:
        metrics.setdefault(label, Metric(label, unit, higher_is_better=higher)).samples += values

    for _ in range(rounds):  # alternated, so that load changes hit both alike
        for name, app in (("bare stack", FLOOR_APP), ("lmeval-trio", SERVER_APP)):
            for count in (clients, 1):
                found = await _one_server(app, count, submissions, cache_dir, warmup)
                label = f"{name}, {count} client{'s' if count > 1 else ''}"
                add(f"{label}: submissions/s", "1/s", [found["rate"]], higher=True)
                add(f"{label}: latency ms", "ms", found["latencies_ms"])
                add(f"{label}: server CPU ms/submission", "ms", [found["server_cpu_ms"]])
                add(f"{label}: client CPU ms/submission", "ms", [found["client_cpu_ms"]])
    many = f"{clients} clients"
    return Report(
        "stack_floor",
        f"{submissions} POST /job per run, {rounds} rounds: the bare Quart-Trio app on the same"
        " hypercorn command against lmeval-trio (dispatch paused)",
        list(metrics.values()),
        [
            Target(f"bare stack, {many}: submissions/s", "median", 500),
            Target(f"bare stack, {many}: latency ms", "p99", 50),
        ],
        {"submissions": submissions, "rounds": rounds, "clients": clients, "warmup": warmup},
    )


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--submissions", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    return run(measure, args.submissions, args.rounds, args.clients, args.cache_dir)


if __name__ == "__main__":
    main()
