"""Benchmark 7: submitting a 100-cell sweep. ``POST /sweeps`` with a 10 x 10 matrix of real
lm-eval requests (the dummy model on the tests' tiny tasks), dispatch paused
(``MAX_CONCURRENCY=0``) so that only the submission is measured: every cell through a job's
admission checks (parsed the way lm-eval parses it, judged by the policy, its tasks checked
against the task catalog, built before the timed runs from the tests' shared cache folder),
then the sweep and its 100 jobs stored in one transaction and queued. Timed from the request
to the answer. Target: p50 <= 100 ms.

    uv run python -m benchmarks.sweep_submit [--runs 30] [--warmup 3] [--cells 100]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks._report import Metric, Report, Target, run
from benchmarks._server import SUPPORT, ServerFactory, hypercorn_server
from benchmarks.catalog import DEFAULT_CACHE


def sweep_body(cells: int) -> dict[str, Any]:
    """A matrix of about ``cells`` cells (side x side), num_fewshot x limit."""
    side = max(1, math.isqrt(cells))
    return {
        "name": "benchmark",
        "base": {
            "model": "dummy",
            "tasks": ["tiny_mc", "tiny_gen"],
            "include_path": str(SUPPORT / "tasks"),
        },
        "matrix": {"num_fewshot": list(range(side)), "limit": list(range(1, side + 1))},
        "max_parallel": 4,
    }


async def measure(
    runs: int = 30,
    warmup: int = 3,
    cells: int = 100,
    server_factory: ServerFactory = hypercorn_server,
) -> Report:
    metric = Metric("POST /sweeps (100 cells) ms", "ms")
    body = sweep_body(cells)
    with tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp:
        async with (
            server_factory(
                Path(tmp) / "data", MAX_CONCURRENCY="0", LMEVAL_CACHE_DIR=str(DEFAULT_CACHE)
            ) as server,
            httpx.AsyncClient(base_url=server.url, timeout=600) as client,
        ):
            await _catalogs_built(client, body["base"]["include_path"])
            for index in range(warmup + runs):
                before = time.monotonic()
                response = await client.post("/sweeps", json=body)
                elapsed = time.monotonic() - before
                if response.status_code != 200:
                    raise RuntimeError(f"POST /sweeps: {response.status_code} {response.text}")
                if index >= warmup:
                    metric.add(elapsed * 1000)
                sweep_id = response.json()["sweep_id"]
                deleted = await client.delete(f"/sweeps/{sweep_id}")  # keep the queue short
                deleted.raise_for_status()
            count = len(response.json()["job_ids"])
    return Report(
        "sweep_submit",
        f"POST /sweeps with {count} cells (dispatch paused) -> its answer",
        [metric],
        [Target(metric.name, "median", 100)],
        {"runs": runs, "warmup_runs_excluded": warmup, "cells": count},
    )


async def _catalogs_built(client: httpx.AsyncClient, include_path: str) -> None:
    """lm-eval's catalog and the tasks folder's, built (or read from the shared cache) and
    held by the server before anything is timed: the task checks then cost a look-up."""
    for params in ({"limit": "1"}, {"limit": "1", "include_path": include_path}):
        response = await client.get("/tasks", params=params)
        if response.status_code != 200:
            raise RuntimeError(f"GET /tasks: {response.status_code} {response.text[:500]}")


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cells", type=int, default=100)
    args = parser.parse_args(argv)
    return run(measure, args.runs, args.warmup, args.cells)


if __name__ == "__main__":
    main()
