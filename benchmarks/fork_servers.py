"""Benchmark 12: every job warm (fork servers, issue 21). Three measurements on one server
(the default settings: fast start, ``LMEVAL_FORK_SERVERS=2``), side by side with stock:

* **many jobs**: N tiny real lm-eval jobs (the dummy model on ``tiny_mc`` and ``tiny_gen``)
  with ``MAX_CONCURRENCY=2``, from the first submission to the last end, as N separate
  ``POST /job`` and as one N-cell sweep; beside them stock ``python -m lm_eval`` with the same
  arguments, two at a time (M jobs). Per job = wall time / jobs. Target: stock per job /
  forked per job >= 10 (separate and sweep).
* **back to back**: 10 ``local-completions`` jobs against the timed stub OpenAI server, one
  slot, each submitted when the previous one ended (the first one once the server has logged
  "ready for jobs": the fork server preloaded, the task catalog loaded): ``POST /job`` -> the
  first ``/v1/`` model request. Target: p90 <= 0.3 s.
* **idle cost**: PSS (``/proc/PID/smaps_rollup``) of the hypercorn parent, its worker and
  every fork server, summed, once the fork server is ready and before any job, and again
  once idle after all jobs. Target: <= 350 MB before jobs.

    uv run python -m benchmarks.fork_servers [--jobs 20] [--stock-jobs 20] [--sequence 10]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks import sweep_overhead
from benchmarks._report import Metric, Report, Target, run
from benchmarks._server import SUPPORT, ServerFactory, hypercorn_server
from benchmarks.lm_eval_start import one_run, timed_stub

TASKS = "tiny_mc,tiny_gen"
JOB: dict[str, Any] = {"model": "dummy", "tasks": TASKS, "include_path": str(SUPPORT / "tasks")}
MB = 1024 * 1024


async def timed_separate(client: httpx.AsyncClient, jobs: int) -> float:
    return await sweep_overhead.timed_separate(client, jobs, JOB)


async def timed_sweep(client: httpx.AsyncClient, jobs: int) -> float:
    return await sweep_overhead.timed_sweep(client, jobs, JOB)


async def timed_stock(jobs: int, folder: Path) -> float:
    return await sweep_overhead.timed_stock(jobs, folder, JOB)


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages (a fork server's, with its children) split fairly."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


async def idle_pss(client: httpx.AsyncClient, parent: int, worker: int) -> tuple[float, int]:
    """MB of PSS of the server's two processes and its fork servers; how many fork servers."""
    health = (await client.get("/healthz")).json()
    pids = [parent, worker, *(s["pid"] for s in health["fork_servers"] if s["pid"])]
    return sum(pss_bytes(pid) for pid in pids) / MB, len(pids) - 2


async def measure(
    jobs: int = 20,
    stock_jobs: int = 20,
    sequence: int = 10,
    server_factory: ServerFactory = hypercorn_server,
    cache_dir: Path | None = None,
) -> Report:
    names = ("separate per job s", "sweep per job s", "stock per job s", "first request s")
    separate, sweep, stock, first = (Metric(name, "s") for name in names)
    pss_ready, pss_after = Metric("idle PSS ready MB", "MB"), Metric("idle PSS after MB", "MB")
    details: dict[str, Any] = {"jobs": jobs, "stock_jobs": stock_jobs, "sequence": sequence}
    # A fresh cache dir: the server compiles site-packages and rebuilds the task index in
    # the background while the first jobs run (as after an install); an existing one: not.
    settings = {"LMEVAL_CACHE_DIR": str(cache_dir)} if cache_dir else {}
    details["cache_dir"] = str(cache_dir) if cache_dir else "fresh"
    with (
        tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp,
        timed_stub() as stub,
    ):
        async with (
            server_factory(
                Path(tmp) / "data", MAX_CONCURRENCY="2", LMEVAL_FORK_SERVERS="2", **settings
            ) as server,
            httpx.AsyncClient(base_url=server.url, timeout=600) as client,
        ):
            if server.log is not None:
                with trio.fail_after(600):  # the first fork server may build the task index
                    await server.log.wait_warm_ready(1)
                    await server.log.jobs_ready.wait()  # and the task catalog be built
            mb, count = await idle_pss(client, server.parent_pid, server.worker_pid)
            pss_ready.add(mb)
            details["fork_servers_when_ready"] = count
            for _ in range(sequence):
                first.add((await one_run(client, stub))["first_request_s"])
            await timed_separate(client, 2)  # warm-up: the dummy job's own first-run costs
            separate.add(await timed_separate(client, jobs) / jobs)
            sweep.add(await timed_sweep(client, jobs) / jobs)
            mb, count = await idle_pss(client, server.parent_pid, server.worker_pid)
            pss_after.add(mb)
            details["fork_servers_after"] = count
            details["health"] = (await client.get("/healthz")).json()
        if stock_jobs:
            stock.add(await timed_stock(stock_jobs, Path(tmp)) / stock_jobs)
    ratios = []
    for forked in (separate, sweep):
        ratio = Metric(f"stock / {forked.name.split()[0]} per job", "x", higher_is_better=True)
        if stock.samples:
            ratio.add(stock.samples[0] / forked.samples[0])
        ratios.append(ratio)
    return Report(
        "fork_servers",
        f"{jobs} tiny dummy jobs on 2 slots (separate, sweep) vs stock lm_eval; {sequence} "
        "back-to-back API jobs; idle PSS",
        [separate, sweep, stock, *ratios, first, pss_ready, pss_after],
        [
            *(Target(ratio.name, "median", 10) for ratio in ratios),
            Target(first.name, "p90", 0.3),
            Target(pss_ready.name, "median", 350),
        ],
        details,
    )


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--stock-jobs", type=int, default=20)
    parser.add_argument("--sequence", type=int, default=10)
    parser.add_argument("--cache-dir", type=Path, help="an existing LMEVAL_CACHE_DIR")
    args = parser.parse_args(argv)
    return run(measure, args.jobs, args.stock_jobs, args.sequence, hypercorn_server, args.cache_dir)


if __name__ == "__main__":
    main()
