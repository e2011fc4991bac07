"""Benchmark 2: hand-off latency with one slot. A job's process exits → the next queued job's
process starts.

``MAX_CONCURRENCY=1``. Job A announces itself and waits at a FIFO gate; job B is submitted and
queues behind it. The benchmark opens the gate (t0: A reads one line and exits) and times until
B's ``start`` line arrives; so the figure also holds A's ``/bin/sh`` waking up and exiting
(well under a millisecond) and B's shell starting. Target: p50 <= 20 ms.

    uv run python -m benchmarks.handoff [--runs 100] [--warmup 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import httpx

from benchmarks._child import Fifo, child_job, io_folder, open_fifo, write_child
from benchmarks._report import Metric, Report, Target, run
from benchmarks._server import ServerFactory, hypercorn_server, submit, wait_idle


async def measure(
    runs: int = 100, warmup: int = 3, server_factory: ServerFactory = hypercorn_server
) -> Report:
    metric = Metric("handoff_ms", "ms")
    with tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp:
        folder = io_folder(Path(tmp))
        child = write_child(folder)
        async with (
            open_fifo(folder / "announce") as fifo,
            open_fifo(folder / "gate") as gate,
            server_factory(
                folder.parent / "data",
                LMEVAL_ALLOWED_LM_EVAL_PATHS=str(child),
                LMEVAL_ALLOWED_PATH_ROOTS=str(folder),
                MAX_CONCURRENCY="1",
            ) as server,
            httpx.AsyncClient(base_url=server.url, timeout=60) as client,
        ):
            for run in range(warmup + runs):
                latency = await one_handoff(client, fifo, gate, child, str(run))
                if run >= warmup:
                    metric.add(latency * 1000)
    return Report(
        "handoff",
        "one slot: a job's process exits -> the next queued job's process starts",
        [metric],
        [Target("handoff_ms", "median", 20)],
        {"runs": runs, "warmup_runs_excluded": warmup, "max_concurrency": 1},
    )


async def one_handoff(
    client: httpx.AsyncClient, fifo: Fifo, gate: Fifo, child: Path, tag: str
) -> float:
    """Seconds from opening A's gate to B's first action."""
    announce, wait_at = str(fifo.path), str(gate.path)
    await submit(client, child_job(child, f"a{tag}", BENCH_FIFO=announce, BENCH_GATE=wait_at))
    await fifo.expect(f"start a{tag}")
    await submit(client, child_job(child, f"b{tag}", BENCH_FIFO=announce))  # queued behind A
    opened = await gate.send_line("go")
    started = await fifo.expect(f"start b{tag}")
    await wait_idle(client)
    return started - opened


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    return run(measure, args.runs, args.warmup)


if __name__ == "__main__":
    main()
