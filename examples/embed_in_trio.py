#!/usr/bin/env python3
"""Embed lmeval-trio in a Trio program: a supervisor you own, and its HTTP API in your nursery.

Runs one real lm-eval evaluation (the dummy model on a tiny offline task shipped next to this
file), follows it over HTTP with the async client, prints its score and exits. Leaving the
blocks stops the server, then the supervisor: no task and no process outlives ``main``.

    python examples/embed_in_trio.py [--data-dir DIR] [--port PORT]

The exit code is 0 when the evaluation completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import aclosing
from functools import partial
from pathlib import Path

import trio

from lmeval_trio import AsyncClient, JobStatus, Settings, Supervisor, serve_app
from lmeval_trio.client import ProgressEvent, StatusEvent

TASKS = Path(__file__).resolve().parent / "tasks"
JOB = {"model": "dummy", "tasks": "example_arith", "include_path": str(TASKS)}


async def main(data_dir: Path, port: int) -> int:
    settings = Settings.from_env(data_dir=data_dir, max_concurrency=1, allowed_path_roots=(TASKS,))
    server_done = trio.Event()
    async with Supervisor(settings) as supervisor, trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(
            partial(
                serve_app, supervisor, bind=f"127.0.0.1:{port}", shutdown_trigger=server_done.wait
            )
        )
        print(f"serving the lmeval-trio API on {urls[0]}")
        async with AsyncClient(urls[0]) as client:
            job_id = (await client.submit(JOB)).job_id  # over HTTP ...
            print(f"job {job_id} submitted over HTTP")
            await stop_a_queued_job(supervisor)  # ... and without HTTP, same supervisor
            await show_progress(client, job_id)
            final = await supervisor.wait(job_id)
            if final.status is JobStatus.COMPLETED:
                for row in (await client.results(job_id)).metrics:
                    print(f"{row.task} {row.metric}: {row.value}")
        server_done.set()  # the server stops; leaving the supervisor's block stops the jobs
    print(f"job {job_id}: {final.status.value}")
    return 0 if final.status is JobStatus.COMPLETED else 1


async def stop_a_queued_job(supervisor: Supervisor) -> None:
    """One slot, already taken: this job waits in the queue until we stop it."""
    record = await supervisor.submit(JOB)
    outcome, stopped = await supervisor.stop(record.id)
    print(f"job {record.id} submitted directly, then {outcome.value} ({stopped.status.value})")


async def show_progress(client: AsyncClient, job_id: int) -> None:
    """Print status changes and each phase's progress, from the job's event stream."""
    status, shown = None, set[tuple[str, int]]()
    async with aclosing(client.events(job_id)) as events:
        async for event in events:
            if isinstance(event, StatusEvent) and event.job.status != status:
                status = event.job.status
                print(f"job {job_id}: {status.value}")
            elif isinstance(event, ProgressEvent) and event.progress.phase:
                step = (event.progress.phase, event.progress.percent // 25 * 25)
                if step not in shown:
                    shown.add(step)
                    print(f"  {step[0]}: {event.progress.percent}%")


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="keep the job store here (default: temp)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    if args.data_dir is not None:
        return trio.run(main, args.data_dir, args.port)
    with tempfile.TemporaryDirectory(prefix="lmeval-trio-example-") as tmp:
        return trio.run(main, Path(tmp), args.port)


if __name__ == "__main__":
    sys.exit(run())
