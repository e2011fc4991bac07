"""Benchmark 7: submitting a 100-cell sweep. ``POST /sweeps`` with a 10 x 10 matrix of real
lm-eval requests (the dummy model on the tests' tiny tasks), dispatch paused
(``MAX_CONCURRENCY=0``) so that only the submission is measured: every cell parsed the way
lm-eval parses it and judged by the policy, then the sweep and its 100 jobs stored in one
transaction and queued. Timed from the request to the answer. Target: p50 <= 100 ms.

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
            server_factory(Path(tmp) / "data", MAX_CONCURRENCY="0") as server,
            httpx.AsyncClient(base_url=server.url, timeout=60) as client,
        ):
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
