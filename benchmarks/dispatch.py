"""Benchmark 1: dispatch latency. ``POST /job`` on an idle server → the job's process has started.

The job is the FIFO-reporting shell child (``benchmarks/_child.py``): the time runs from just
before the POST to the moment its ``start`` line is read from the FIFO, so it includes the
HTTP request, validation, the store insert, the dispatch, the spawn and ``/bin/sh`` starting.
Between runs the benchmark waits (on ``/events``) until the job has ended, so every dispatch
finds an idle server. Targets: p50 <= 20 ms, p99 <= 100 ms.

    uv run python -m benchmarks.dispatch [--runs 200] [--warmup 5]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import httpx
import trio

from benchmarks._child import Fifo, child_job, io_folder, open_fifo, write_child
from benchmarks._report import Metric, Report, Target, run
from benchmarks._server import ServerFactory, hypercorn_server, submit, wait_idle


async def measure(
    runs: int = 200, warmup: int = 5, server_factory: ServerFactory = hypercorn_server
) -> Report:
    metric = Metric("dispatch_ms", "ms")
    response = Metric("post_response_ms", "ms")  # the POST's answer, for comparison
    with tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp:
        folder = io_folder(Path(tmp))
        child = write_child(folder)
        async with (
            open_fifo(folder / "announce") as fifo,
            server_factory(
                folder.parent / "data",
                LMEVAL_ALLOWED_LM_EVAL_PATHS=str(child),
                LMEVAL_ALLOWED_PATH_ROOTS=str(folder),
            ) as server,
            httpx.AsyncClient(base_url=server.url, timeout=60) as client,
        ):
            for run in range(warmup + runs):
                latency, answered = await one_dispatch(client, fifo, child, str(run))
                if run >= warmup:
                    metric.add(latency * 1000)
                    response.add(answered * 1000)
            spawn_ms = await mean_spawn_ms(client)
    return Report(
        "dispatch",
        "POST /job on an idle server -> the job's process has started",
        [metric, response],
        [Target("dispatch_ms", "median", 20), Target("dispatch_ms", "p99", 100)],
        {"runs": runs, "warmup_runs_excluded": warmup, "server_spawn_mean_ms": spawn_ms},
    )


async def one_dispatch(
    client: httpx.AsyncClient, fifo: Fifo, child: Path, tag: str
) -> tuple[float, float]:
    """Seconds from just before the POST to the child's first action, and to the answer."""
    body = child_job(child, tag, BENCH_FIFO=str(fifo.path))
    answered: list[float] = []

    async def post() -> None:
        await submit(client, body)
        answered.append(time.monotonic())

    async with trio.open_nursery() as nursery:
        before = time.monotonic()
        nursery.start_soon(post)
        started = await fifo.expect(f"start {tag}")
    await wait_idle(client)
    return started - before, answered[0] - before


async def mean_spawn_ms(client: httpx.AsyncClient) -> float | None:
    """The server's own mean of slot granted -> process running (all runs, warm-ups too)."""
    text = (await client.get("/metrics")).text
    found = dict(re.findall(r"^lmeval_dispatch_latency_seconds_(sum|count) (\S+)$", text, re.M))
    if float(found.get("count", 0)) == 0:
        return None
    return round(1000 * float(found["sum"]) / float(found["count"]), 2)


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    return run(measure, args.runs, args.warmup)


if __name__ == "__main__":
    main()
