"""Benchmark 8: a sweep costs nothing over separate jobs. The same N tiny real lm-eval jobs
(the dummy model on ``tiny_mc``) with ``MAX_CONCURRENCY=2`` and the default warm runners,
timed from the first submission to the last job's end: once as one sweep (N cells, the same
request), once as N separate ``POST /job``; beside them stock ``lm_eval`` run the same way
(the same command line, two at a time, each a fresh ``python -m lm_eval``). Target: the
sweep's wall time is at most the separate jobs' (with 5 % for noise).

    uv run python -m benchmarks.sweep_overhead [--jobs 40] [--stock-jobs 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks._report import Metric, Report, Target, run
from benchmarks._server import SUPPORT, ServerFactory, hypercorn_server, submit, wait_idle

JOB: dict[str, Any] = {
    "model": "dummy",
    "tasks": "tiny_mc",
    "include_path": str(SUPPORT / "tasks"),
}


async def timed_separate(client: httpx.AsyncClient, jobs: int, job: dict[str, Any] = JOB) -> float:
    """``jobs`` separate ``POST /job`` of ``job``, from the first to the server idle."""
    before = time.monotonic()
    for _ in range(jobs):
        await submit(client, job)
    await wait_idle(client)
    return time.monotonic() - before


async def timed_sweep(client: httpx.AsyncClient, jobs: int, job: dict[str, Any] = JOB) -> float:
    """The same as one sweep of ``jobs`` identical cells."""
    body = {"name": "overhead", "base": job, "cells": [{"key": f"run{i}"} for i in range(jobs)]}
    before = time.monotonic()
    response = await client.post("/sweeps", json=body)
    response.raise_for_status()
    await wait_idle(client)
    return time.monotonic() - before


async def timed_stock(jobs: int, folder: Path, job: dict[str, Any] = JOB) -> float:
    """``python -m lm_eval`` with the jobs' arguments, two at a time, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    limiter = trio.CapacityLimiter(2)

    async def one(index: int) -> None:
        async with limiter:
            argv = [sys.executable, "-m", "lm_eval", "--model", "dummy", "--tasks", job["tasks"]]
            argv += ["--include_path", job["include_path"]]
            argv += ["--output_path", str(folder / f"stock-{index}")]
            await trio.run_process(argv, env=env, stdout=-3, stderr=-3, cwd=folder)

    before = time.monotonic()
    async with trio.open_nursery() as nursery:
        for index in range(jobs):
            nursery.start_soon(one, index)
    return time.monotonic() - before


async def measure(
    jobs: int = 40, stock_jobs: int = 40, server_factory: ServerFactory = hypercorn_server
) -> Report:
    separate, sweep, stock = (
        Metric("separate jobs wall s", "s"),
        Metric("one sweep wall s", "s"),
        Metric("stock lm_eval wall s", "s"),
    )
    with tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp:
        async with (
            server_factory(
                Path(tmp) / "data", MAX_CONCURRENCY="2", LMEVAL_FORK_SERVERS="2"
            ) as server,
            httpx.AsyncClient(base_url=server.url, timeout=600) as client,
        ):
            await timed_separate(client, 2)  # warm-up: the runners ready, caches built
            separate.add(await timed_separate(client, jobs))
            sweep.add(await timed_sweep(client, jobs))
        if stock_jobs:
            stock.add(await timed_stock(stock_jobs, Path(tmp)))
    ratio = sweep.stats()["median"] / separate.stats()["median"]
    ratio_metric = Metric("sweep / separate", "x")
    ratio_metric.add(ratio)
    return Report(
        "sweep_overhead",
        f"{jobs} tiny dummy jobs, 2 slots: one sweep vs separate submissions vs stock lm_eval",
        [separate, sweep, stock, ratio_metric],
        [Target(ratio_metric.name, "median", 1.05)],
        {"jobs": jobs, "stock_jobs": stock_jobs},
    )


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--stock-jobs", type=int, default=40)
    args = parser.parse_args(argv)
    return run(measure, args.jobs, args.stock_jobs)


if __name__ == "__main__":
    main()
