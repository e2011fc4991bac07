"""Benchmark 4: API latency with 10,000 stored jobs.

The store is filled before the server starts, through ``JobStore.create`` + ``transition``
(Queued → Running → Completed, every tenth Failed), with a realistic request, argv and
progress object; ``--sample`` of the jobs also get lm-eval-like logs (~300 KB of stderr with
tqdm redraws, so ``GET /job/{id}`` reads a full log tail). Then, on the served app:
``GET /jobs?limit=100``, the last page (``limit=100&offset=N-100``), ``GET /job/{id}`` and the
full unpaged ``GET /jobs``, each timed from the request to the last body byte; the server's
CPU time per request (user + system, ``/proc``) is reported beside each. Target: p50 <= 50
ms (for ``GET /jobs`` and ``GET /job/{id}``; the unpaged listing is reported against it too).

The client is httpx as it comes, so it asks for ``gzip, deflate`` and gets the large unpaged
listing deflated. Reported beside it (in ``unpaged``): the very first unpaged listing (which
renders every job), the listing for a client that accepts only ``identity``, the listing
with one job changed before each request (a write by another connection: one row rendered
and one group compressed again), and the worker's RSS at the end.

    uv run python -m benchmarks.api [--jobs 10000] [--runs 100] [--full-runs 10]
"""

from __future__ import annotations

import argparse
import random
import re
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks._report import Metric, Report, Target, run
from benchmarks._server import MB, SUPPORT, ServerFactory, cpu_seconds, hypercorn_server, rss_bytes
from lmeval_trio.jobs.progress import ProgressTracker
from lmeval_trio.jobs.record import utc_now
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.runners import job_command as command
from lmeval_trio.store.sqlite import Draft, JobStore

REQUEST: dict[str, Any] = {
    "model": "local-completions",
    "model_args": {
        "model": "stub-model",
        "base_url": "http://127.0.0.1:8081/v1/completions",
        "tokenizer_backend": "remote",
        "num_concurrent": 4,
    },
    "tasks": ["tiny_mc", "tiny_gen"],
    "include_path": str(SUPPORT / "tasks"),
    "limit": 100.0,
    "log_samples": True,
    "env_vars": {"OPENAI_API_KEY": "sk-benchmark"},
}
FAILED_REASON = "lm-eval exited with code 1: ValueError: Tasks not found: tiny_mcq"


def lm_eval_stderr(total: int = 2000) -> str:
    """An lm-eval-like stderr: log lines and two phases of tqdm redraws (~300 KB)."""
    lines = ["2026-11-27:11:03:51 INFO     [__main__:440] Selected Tasks: ['tiny_mc', 'tiny_gen']"]
    for phase in ("loglikelihood", "generate_until"):
        lines.append(f"2026-11-27:11:03:55 INFO     [evaluator:574] Running {phase} requests")
        redraws = (
            f"Requesting API: {n * 100 // total:3d}%|{'█' * (n * 10 // total):<10}| {n}/{total}"
            f" [00:39<01:05,  2.21it/s]"
            for n in range(total + 1)
        )
        lines.append("\r".join(redraws))
    lines.append("2026-11-27:11:05:01 INFO     [loggers.evaluation_tracker:209] Saving results")
    return "\n".join(lines) + "\n"


def completed_progress(stderr: str) -> dict[str, Any]:
    tracker = ProgressTracker()
    for segment in re.split(r"[\r\n]", stderr):
        tracker.feed(segment)
    tracker.complete()
    return tracker.snapshot().to_dict()


def _draft(data_dir: Path, job_id: int) -> Draft:
    job_dir = command.job_dir_for(data_dir, job_id)
    launcher = command.Launcher((sys.executable, "-m", "lm_eval"))
    built = command.build(REQUEST, job_dir, launcher)
    return Draft(REQUEST, built.argv, built.env, job_dir, built.output_dir, job_id=job_id)


async def fill_store(data_dir: Path, jobs: int, progress: dict[str, Any]) -> None:
    """``jobs`` finished records in the server's database (every tenth Failed)."""
    store = JobStore(data_dir / "jobs.db")
    await store.open()
    try:
        for index in range(jobs):
            record = await store.create(_draft(data_dir, await store.next_id()), utc_now())
            await store.transition(
                record.id, JobStatus.QUEUED, JobStatus.RUNNING, started_at=utc_now(), attempts=1
            )
            failed = index % 10 == 9
            end = {"exit_code": 1, "reason": FAILED_REASON} if failed else {"exit_code": 0}
            await store.transition(
                record.id,
                JobStatus.RUNNING,
                JobStatus.FAILED if failed else JobStatus.COMPLETED,
                finished_at=utc_now(),
                progress=progress,
                progress_pct=progress["percent"],
                **end,
            )
    finally:
        await store.close()


def write_logs(data_dir: Path, job_ids: list[int], stderr: str) -> None:
    for job_id in job_ids:
        job_dir = command.job_dir_for(data_dir, job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "stderr.log").write_text(stderr)
        (job_dir / "stdout.log").write_text("tiny_mc | acc | 1.0\n" * 20)


async def timed_get(client: httpx.AsyncClient, url: str) -> tuple[float, httpx.Response]:
    before = time.monotonic()
    response = await client.get(url)
    elapsed = time.monotonic() - before
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:500]}")
    return elapsed, response


async def sample(
    client: httpx.AsyncClient, pid: int, metric: Metric, urls: list[str]
) -> dict[str, float]:
    """Time each url (after one untimed warm-up request): the last body's size and the
    server's mean CPU time per request."""
    await timed_get(client, urls[0])
    cpu_before = cpu_seconds(pid)
    for url in urls:
        elapsed, response = await timed_get(client, url)
        metric.add(elapsed * 1000)
    cpu_ms = 1000 * (cpu_seconds(pid) - cpu_before) / len(urls)
    return {
        "body_bytes": len(response.content),
        "wire_bytes": int(response.headers["content-length"]),
        "encoding": response.headers.get("content-encoding", "identity"),
        "server_cpu_ms": round(cpu_ms, 1),
    }


async def measure(
    jobs: int = 10_000,
    runs: int = 100,
    full_runs: int = 10,
    log_sample: int = 50,
    server_factory: ServerFactory = hypercorn_server,
) -> Report:
    with tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        stderr = lm_eval_stderr()
        fill_started = time.monotonic()
        await fill_store(data_dir, jobs, completed_progress(stderr))
        fill_s = time.monotonic() - fill_started
        ids = random.Random(5).sample(range(1, jobs + 1), min(log_sample, jobs))
        await trio.to_thread.run_sync(write_logs, data_dir, ids, stderr)
        async with (
            server_factory(data_dir) as server,
            httpx.AsyncClient(base_url=server.url, timeout=300) as client,
        ):
            first_ms = 1000 * (await timed_get(client, "/jobs"))[0]
            report = await measure_routes(client, server.worker_pid, jobs, ids, runs, full_runs)
            unpaged = await unpaged_variants(client, server.worker_pid, data_dir, full_runs)
            report.context["unpaged"] = {"first_ms": round(first_ms, 1), **unpaged}
    report.context.update(fill_s=round(fill_s, 1), stderr_log_bytes=len(stderr.encode()))
    return report


async def measure_routes(
    client: httpx.AsyncClient, pid: int, jobs: int, ids: list[int], runs: int, full_runs: int
) -> Report:
    paged, last, one, full = (
        Metric("GET /jobs?limit=100 ms", "ms"),
        Metric("GET /jobs?limit=100 (last page) ms", "ms"),
        Metric("GET /job/{id} ms", "ms"),
        Metric("GET /jobs (all) ms", "ms"),
    )
    last_page = f"/jobs?limit=100&offset={max(0, jobs - 100)}"
    per_route = {
        paged.name: await sample(client, pid, paged, ["/jobs?limit=100"] * runs),
        last.name: await sample(client, pid, last, [last_page] * runs),
        one.name: await sample(
            client, pid, one, [f"/job/{ids[i % len(ids)]}" for i in range(runs)]
        ),
        full.name: await sample(client, pid, full, ["/jobs"] * full_runs),
    }
    total = (await client.get("/jobs?limit=1")).json()["total"]
    return Report(
        "api",
        f"GET /jobs and GET /job/{{id}} with {jobs} stored jobs",
        [paged, last, one, full],
        [Target(m.name, "median", 50) for m in (paged, last, one, full)],
        {"jobs": total, "runs": runs, "full_runs": full_runs, "per_route": per_route},
    )


async def unpaged_variants(
    client: httpx.AsyncClient, pid: int, data_dir: Path, runs: int
) -> dict[str, Any]:
    """The unpaged listing uncompressed, and with one job changed before each request."""
    identity = Metric("identity", "ms")
    headers = {"Accept-Encoding": "identity"}
    async with httpx.AsyncClient(base_url=client.base_url, headers=headers, timeout=300) as plain:
        identity_route = await sample(plain, pid, identity, ["/jobs"] * runs)
    changed = Metric("one job changed", "ms")
    total = (await client.get("/jobs?limit=1")).json()["total"]
    for index, job_id in enumerate(random.Random(7).sample(range(1, total + 1), runs)):
        await trio.to_thread.run_sync(_touch, data_dir / "jobs.db", job_id, f"touched {index}")
        changed.add(1000 * (await timed_get(client, "/jobs"))[0])
    return {
        "identity_ms": identity.stats(),
        "identity_server_cpu_ms": identity_route["server_cpu_ms"],
        "one_changed_ms": changed.stats(),
        "worker_rss_MB": round(rss_bytes(pid) / MB, 1),
    }


def _touch(db: Path, job_id: int, reason: str) -> None:
    """Change one job as another connection would (the server notices: data_version)."""
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE jobs SET reason = ? WHERE id = ?", (reason, job_id))


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--full-runs", type=int, default=10)
    parser.add_argument("--log-sample", type=int, default=50)
    args = parser.parse_args(argv)
    return run(measure, args.jobs, args.runs, args.full_runs, args.log_sample)


if __name__ == "__main__":
    main()
