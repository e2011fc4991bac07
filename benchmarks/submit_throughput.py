"""Benchmark 10: ``POST /job`` throughput. N submissions of a real dummy-model request, dispatch
paused (``MAX_CONCURRENCY=0``) so that only the submission is measured, from 16 concurrent
clients and, for comparison, from one; each on a fresh server.

Each client is its own ``httpx.AsyncClient`` (its own keep-alive connection) posting one
request after another; all of them run in this process, one trio run, so the client is a
separate process from the server (the README's launch command as a subprocess) but shares
the machine's cores with it. Throughput = N over the wall time from the first request to the
last answer; latency = each request's own time to its answer. The server's CPU time
(``/proc/PID/stat`` of its worker) per submission tells what a core to itself would reach;
the client's own CPU time per submission is reported beside it. Targets (16 clients):
>= 500 submissions/s, p99 latency <= 50 ms.

    uv run python -m benchmarks.submit_throughput [--submissions 5000] [--clients 16]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks._report import Metric, Report, Target, run
from benchmarks._server import SUPPORT, ServerFactory, cpu_seconds, hypercorn_server, submit
from benchmarks.catalog import DEFAULT_CACHE

MAX_CATALOG_TRIES = 20


def job_body(index: int) -> dict[str, Any]:
    """A realistic request: the dummy model on the tests' tiny tasks, with the usual flags."""
    return {
        "model": "dummy",
        "tasks": ["tiny_mc", "tiny_gen"],
        "include_path": str(SUPPORT / "tasks"),
        "num_fewshot": index % 3,
        "limit": 10,
        "batch_size": "1",
        "seed": "0,1234,1234,1234",
        "log_samples": True,
        "gen_kwargs": "temperature=0,max_gen_toks=16",
    }


def _client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _catalogs_ready(client: httpx.AsyncClient) -> None:
    """Until a dry run reports the job's tasks checked against the catalogs (lm-eval's and
    the include_path folder's, built by child processes): the measured submissions are
    judged in full, and no catalog build competes for the CPU."""
    for _ in range(MAX_CATALOG_TRIES):  # each try waits up to LMEVAL_TASK_CHECK_WAIT_S
        response = await client.post("/job", params={"dry_run": "true"}, json=job_body(0))
        response.raise_for_status()
        tasks = next(c for c in response.json()["checks"] if c["name"] == "tasks")
        if tasks["ok"] and not tasks["detail"].startswith("not checked"):
            return
    raise RuntimeError(f"the task catalogs are not ready: {tasks}")


async def _phase(
    server_url: str, worker_pid: int, clients: int, submissions: int, warmup: int
) -> dict[str, Any]:
    """``submissions`` POSTs spread over ``clients`` concurrent clients (after ``warmup``
    ones from the first client, not counted, once the catalogs are ready)."""
    async with httpx.AsyncClient(base_url=server_url, timeout=120) as first:
        await _catalogs_ready(first)
        for index in range(warmup):
            await submit(first, job_body(index))
    return await load(server_url, worker_pid, clients, submissions)


async def load(server_url: str, worker_pid: int, clients: int, submissions: int) -> dict[str, Any]:
    """``submissions`` POSTs of ``job_body`` from ``clients`` concurrent keep-alive clients:
    the rate, each latency, and the server's and this process's CPU per submission."""
    latencies: list[float] = []
    shares = [submissions // clients + (i < submissions % clients) for i in range(clients)]

    async def one_client(share: int) -> None:
        async with httpx.AsyncClient(base_url=server_url, timeout=120) as client:
            for index in range(share):
                before = time.monotonic()
                await submit(client, job_body(index))
                latencies.append(time.monotonic() - before)

    server_cpu, client_cpu = cpu_seconds(worker_pid), _client_cpu_s()
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for share in shares:
            nursery.start_soon(one_client, share)
    wall_s = time.monotonic() - started
    return {
        "rate": submissions / wall_s,
        "latencies_ms": [x * 1000 for x in latencies],
        "server_cpu_ms": (cpu_seconds(worker_pid) - server_cpu) * 1000 / submissions,
        "client_cpu_ms": (_client_cpu_s() - client_cpu) * 1000 / submissions,
        "wall_s": round(wall_s, 2),
    }


async def measure(
    submissions: int = 5000,
    clients: int = 16,
    warmup: int = 100,
    server_factory: ServerFactory = hypercorn_server,
    cache_dir: Path = DEFAULT_CACHE,
) -> Report:
    metrics: list[Metric] = []
    walls: dict[str, float] = {}
    for count in (clients, 1):
        label = f"{count} client{'s' if count > 1 else ''}"
        with tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp:
            settings = {
                "MAX_CONCURRENCY": "0",  # dispatch paused: the submissions only
                "LMEVAL_MAX_QUEUED_JOBS": "1000000",
                "LMEVAL_CACHE_DIR": str(cache_dir),  # the task index is not rebuilt
            }
            async with server_factory(Path(tmp) / "data", **settings) as server:
                found = await _phase(server.url, server.worker_pid, count, submissions, warmup)
        walls[label] = found["wall_s"]
        metrics += [
            Metric(f"{label} submissions/s", "1/s", [found["rate"]], higher_is_better=True),
            Metric(f"{label} latency ms", "ms", found["latencies_ms"]),
            Metric(f"{label} server CPU ms/submission", "ms", [found["server_cpu_ms"]]),
            Metric(f"{label} client CPU ms/submission", "ms", [found["client_cpu_ms"]]),
        ]
    many = f"{clients} client{'s' if clients > 1 else ''}"
    return Report(
        "submit_throughput",
        f"{submissions} POST /job (dispatch paused) from {clients} concurrent clients and from 1",
        metrics,
        [Target(f"{many} submissions/s", "median", 500), Target(f"{many} latency ms", "p99", 50)],
        {"submissions": submissions, "warmup_excluded": warmup, "wall_s": walls},
    )


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--submissions", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    return run(
        measure, args.submissions, args.clients, args.warmup, hypercorn_server, args.cache_dir
    )


if __name__ == "__main__":
    main()
