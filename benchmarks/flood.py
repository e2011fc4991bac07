"""Benchmark 3: output flood. A job writes 200 MB of tqdm-style ``\\r`` redraws, nobody reads.

The producer is ``cat`` of a pre-generated file (into the child's stderr, where lm-eval's bars
go), so the server is what is measured: it drains the pipe to the log file and feeds the
progress parser. Throughput is the file size over the time from the child's ``start`` line to
its ``end`` line (cat returns once all but one pipe buffer, 64 KiB, has been read by the
server); "server" throughput uses the job's own ``started_at``/``finished_at`` instead (spawn
and final drain included). RSS growth is the hypercorn worker's VmHWM (peak, reset through
``/proc/PID/clear_refs`` before the job) and VmRSS after it, minus VmRSS before, after one
unmeasured warm-up flood. The worker's CPU time for the job (user + system, all threads) is
reported too, with the throughput it implies for a server that has a core to itself
("cpu-bound"): on a busy machine that is the steadier figure. Targets: >= 100 MB/s, RSS
growth <= 10 MB.

    uv run python -m benchmarks.flood [--mb 200] [--runs 5]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import trio

from benchmarks._child import Fifo, child_job, io_folder, open_fifo, write_child
from benchmarks._report import Metric, Report, Target, run
from benchmarks._server import (
    MB,
    Server,
    ServerFactory,
    cpu_seconds,
    hypercorn_server,
    reset_peak_rss,
    rss_bytes,
    submit,
    wait_idle,
)

BAR_TOTAL = 100_000
METRICS = (
    ("throughput_MBps", "MB/s"),
    ("server_throughput_MBps", "MB/s"),
    ("rss_peak_growth_MB", "MB"),
    ("rss_retained_growth_MB", "MB"),
    ("server_cpu_s", "s"),
    ("cpu_bound_MBps", "MB/s"),
)


def tqdm_block(size: int = MB) -> bytes:
    """``size`` bytes of ``\\r``-separated "Requesting API" redraws, as tqdm writes them."""
    parts: list[bytes] = []
    length = n = 0
    while True:
        pct = n * 100 // BAR_TOTAL
        bar = ("█" * (pct // 10)).ljust(10)
        redraw = f"\rRequesting API: {pct:3d}%|{bar}| {n}/{BAR_TOTAL} [00:39<01:05,  2.21it/s]"
        data = redraw.encode()
        if length + len(data) > size:
            return b"".join(parts) + b" " * (size - length)
        parts.append(data)
        length += len(data)
        n += 1


def write_flood_file(path: Path, megabytes: int) -> int:
    """Write the file; returns its size in bytes."""
    block = tqdm_block()
    with path.open("wb") as file:
        for _ in range(megabytes):
            file.write(block)
        file.write(b"\n")
    return megabytes * MB + 1


async def measure(
    megabytes: int = 200,
    runs: int = 5,
    warmup_mb: int = 20,
    server_factory: ServerFactory = hypercorn_server,
) -> Report:
    metrics = {name: Metric(name, unit, higher_is_better=unit == "MB/s") for name, unit in METRICS}
    with tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp:
        folder = io_folder(Path(tmp))
        child = write_child(folder)
        flood = folder / "flood.txt"
        warm = folder / "warm.txt"
        size = await trio.to_thread.run_sync(write_flood_file, flood, megabytes)
        warm_size = await trio.to_thread.run_sync(write_flood_file, warm, warmup_mb)
        async with (
            open_fifo(folder / "announce") as fifo,
            server_factory(
                folder.parent / "data",
                LMEVAL_ALLOWED_LM_EVAL_PATHS=str(child),
                LMEVAL_ALLOWED_PATH_ROOTS=str(folder),
            ) as server,
            httpx.AsyncClient(base_url=server.url, timeout=60) as client,
        ):
            flooder = Flooder(server, client, fifo, child)
            await flooder.run(warm, warm_size, "warmup")
            for run in range(runs):
                result = await flooder.run(flood, size, str(run))
                for name, value in result.items():
                    metrics[name].add(value)
    return Report(
        "flood",
        f"a job writes {megabytes} MB of tqdm '\\r' redraws to stderr, nobody polling",
        list(metrics.values()),
        [
            Target("throughput_MBps", "median", 100),
            Target("rss_peak_growth_MB", "worst", 10),
        ],
        {"megabytes": megabytes, "runs": runs, "warmup_flood_mb": warmup_mb},
    )


@dataclass
class Flooder:
    server: Server
    client: httpx.AsyncClient
    fifo: Fifo
    child: Path

    async def run(self, flood: Path, size: int, tag: str) -> dict[str, float]:
        """One flood job; its value for each metric."""
        pid = self.server.worker_pid
        reset_peak_rss(pid)
        before, cpu_before = rss_bytes(pid), cpu_seconds(pid)
        env = {"BENCH_FIFO": str(self.fifo.path), "BENCH_FLOOD": str(flood)}
        job_id = await submit(self.client, child_job(self.child, tag, **env))
        started = await self.fifo.expect(f"start {tag}")
        ended = await self.fifo.expect(f"end {tag}", timeout_s=900)
        await wait_idle(self.client)
        peak, after = rss_bytes(pid, "VmHWM"), rss_bytes(pid)
        cpu = cpu_seconds(pid) - cpu_before
        server_s = await self.server_seconds(job_id, size)
        return {
            "throughput_MBps": size / (ended - started) / MB,
            "server_throughput_MBps": size / server_s / MB,
            "rss_peak_growth_MB": (peak - before) / MB,
            "rss_retained_growth_MB": (after - before) / MB,
            "server_cpu_s": cpu,
            "cpu_bound_MBps": size / max(cpu, 0.01) / MB,
        }

    async def server_seconds(self, job_id: int, size: int) -> float:
        """started_at → finished_at of the job, after checking it completed with every byte."""
        job = (await self.client.get(f"/job/{job_id}")).json()
        logs = await self.client.get(f"/job/{job_id}/logs", params={"stream": "stderr", "tail": 1})
        if job["status"] != "Completed" or logs.json()["size"] != size:
            raise RuntimeError(f"job {job_id}: {job['status']}, stderr {logs.json()['size']} B")
        started = datetime.fromisoformat(job["started_at"])
        return (datetime.fromisoformat(job["finished_at"]) - started).total_seconds()


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=200, help="flood size, MB (10^6 bytes)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup-mb", type=int, default=20)
    args = parser.parse_args(argv)
    return run(measure, args.mb, args.runs, args.warmup_mb)


if __name__ == "__main__":
    main()
