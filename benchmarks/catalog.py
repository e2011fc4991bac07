"""Benchmark 7: task catalog search over lm-eval's full catalog (~14,700 tasks, groups, tags).

The server is started with the tests' shared cache folder (``--cache-dir``), so the catalog's
first build (lm-eval's task index, then the catalog file) is paid once per machine; the first
request, which loads the catalog into the server's memory, is reported apart
(``first_ms``). Then ``--runs`` searches cycle through typical queries (a substring, a kind
filter, an output type, a query matching nothing, the unfiltered first page), each timed
from the request to the last body byte. Target: p50 <= 20 ms.

    uv run python -m benchmarks.catalog [--runs 200] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks._report import Metric, Report, Target, run
from benchmarks._server import ServerFactory, cpu_seconds, hypercorn_server

QUERIES = (
    "/tasks?q=arc",
    "/tasks?q=mmlu&kind=group",
    "/tasks?output_type=generate_until&q=math",
    "/tasks?q=no-such-task-anywhere",
    "/tasks",
    "/tasks?kind=tag&limit=1000",
    "/tasks?q=hellaswag&offset=0&limit=10",
)
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lmeval-trio-tests-cache"


async def measure(
    runs: int = 200,
    cache_dir: Path = DEFAULT_CACHE,
    server_factory: ServerFactory = hypercorn_server,
) -> Report:
    search = Metric("GET /tasks search ms", "ms")
    with tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        async with (
            server_factory(data_dir, LMEVAL_CACHE_DIR=str(cache_dir)) as server,
            httpx.AsyncClient(base_url=server.url, timeout=600) as client,
        ):
            before = time.monotonic()
            first = await client.get("/tasks?limit=1")
            first_ms = 1000 * (time.monotonic() - before)
            if first.status_code != 200:
                raise RuntimeError(f"GET /tasks: {first.status_code} {first.text[:500]}")
            cpu_before = cpu_seconds(server.worker_pid)
            for index in range(runs):
                url = QUERIES[index % len(QUERIES)]
                started = time.monotonic()
                response = await client.get(url)
                search.add(1000 * (time.monotonic() - started))
                if response.status_code != 200:
                    raise RuntimeError(f"GET {url}: {response.status_code}")
            cpu_ms = 1000 * (cpu_seconds(server.worker_pid) - cpu_before) / max(runs, 1)
    return Report(
        "catalog",
        "GET /tasks searches over lm-eval's full task catalog",
        [search],
        [Target(search.name, "median", 20)],
        {
            "entries": first.json()["total"],
            "first_ms": round(first_ms, 1),
            "runs": runs,
            "queries": list(QUERIES),
            "server_cpu_ms": round(cpu_ms, 2),
        },
    )


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    return run(measure, args.runs, args.cache_dir)


if __name__ == "__main__":
    main()
