"""Benchmark 13: hf jobs forked from a fork server that preloaded torch (issue 21).

The benchmark builds its own model first (``tests/support/hf_model.py``: a randomly
initialised one-layer GPT-2 with a tokenizer trained on the task's text; nothing downloaded),
then runs the ``tiny_mc`` task (``tests/support/tasks``, ``include_path``) on it with
``--model hf`` three ways, interleaved in each repetition, one job at a time:

* ``on``: a server (the README's launch command, ``MAX_CONCURRENCY=1``, one fork server)
  with ``LMEVAL_FORK_PRELOAD_HF=on``: the fork server has imported torch, transformers and
  lm-eval's hf model module, so the forked job goes straight to loading its model;
* ``off``: a second such server with ``LMEVAL_FORK_PRELOAD_HF=off``: its fork server has
  imported lm-eval only, so the job imports torch and transformers after dispatch (what the
  warm runner did before the preload);
* ``stock``: ``python -m lm_eval`` with the same arguments.

Timed: ``POST /job`` (stock: the launch) -> lm-eval's ``Running loglikelihood requests``
progress bar in the job's log, read from the job's ``/events`` stream (which coalesces
changes for up to 0.25 s, so ``on`` and ``off`` read late by up to that much; stock's stderr
is read directly). Each server is measured once it has logged "ready for jobs" and its fork
server "ready", and each mode runs ``warmup`` untimed jobs first (bytecode and page caches
as in service). Every run's ``results`` (the results file's ``"results"`` key) must equal
the first stock run's. Target: off / on >= 2 (medians); stock / on is reported beside it.

    uv run python -m benchmarks.hf_start [--runs 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks._report import Metric, Report, Target, run
from benchmarks._server import SUPPORT, Server, ServerFactory, hypercorn_server, submit
from tests.support.hf_model import build_tiny_hf_model

NEEDLE = b"Running loglikelihood requests"
MODES = ("on", "off")
UNLIKE = "runs with results unlike stock"  # 0 or 1 per run (warm-up and stock included)
#: transformers 5 fetches hub kernels unless told not to (or the kernels package is in);
#: nothing here may reach the network.
OFFLINE = {"USE_HUB_KERNELS": "0", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


class JobFailed(RuntimeError):
    pass


def job_body(model: Path) -> dict[str, Any]:
    return {
        "model": "hf",
        "model_args": {"pretrained": str(model)},
        "tasks": "tiny_mc",
        "include_path": str(SUPPORT / "tasks"),
    }


def stock_argv(model: Path, output: Path) -> list[str]:
    """``python -m lm_eval`` with the job's arguments."""
    argv = [sys.executable, "-m", "lm_eval", "--model", "hf"]
    argv += ["--model_args", f"pretrained={model}", "--tasks", "tiny_mc"]
    return [*argv, "--include_path", str(SUPPORT / "tasks"), "--output_path", str(output)]


async def forked_run(client: httpx.AsyncClient, model: Path) -> tuple[float, dict[str, Any]]:
    """Submit one hf job; seconds from ``POST /job`` to the needle in its log, and its results."""
    before = time.monotonic()
    job_id = await submit(client, job_body(model))
    seen: float | None = None
    text = b""
    async with client.stream("GET", f"/job/{job_id}/events") as stream:
        async for chunk in stream.aiter_bytes():  # the stream ends when the job has ended
            text += chunk
            if seen is None and NEEDLE in text:
                seen = time.monotonic()
    response = await client.get(f"/job/{job_id}/results")
    if seen is None or response.status_code != 200:
        raise JobFailed(f"job {job_id}: {response.status_code} {response.text[-2000:]}")
    results: dict[str, Any] = response.json()["results"]["results"]
    return seen - before, results


async def stock_run(model: Path, output: Path) -> tuple[float, dict[str, Any]]:
    """Launch stock lm-eval; seconds to the needle on its stderr, and its results."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMEVAL_")} | OFFLINE
    before = time.monotonic()
    seen: float | None = None
    text = b""
    argv = stock_argv(model, output)
    proc = await trio.lowlevel.open_process(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        async for chunk in proc.stderr:
            text += chunk
            if seen is None and NEEDLE in text:
                seen = time.monotonic()
    finally:
        await proc.wait()
    files = await trio.to_thread.run_sync(lambda: sorted(output.rglob("results_*.json")))
    if seen is None or proc.returncode != 0 or len(files) != 1:
        raise JobFailed(f"stock lm_eval: exit {proc.returncode}: {text[-2000:].decode()}")
    results: dict[str, Any] = json.loads(files[0].read_text())["results"]
    return seen - before, results


async def open_server(
    stack: AsyncExitStack,
    factory: ServerFactory,
    folder: Path,
    preload: str,
    cache: Path | None,
    model_root: Path,
) -> httpx.AsyncClient:
    """A server whose one fork server preloads torch or not, ready (its log says so); a
    fresh cache dir shared by both servers unless ``cache`` names an existing one. Its jobs
    may read ``model_root`` (beside the data dir: confined jobs read no root holding it)."""
    settings = {"MAX_CONCURRENCY": "1", "LMEVAL_FORK_SERVERS": "1", **OFFLINE}
    cache_dir = str(cache or folder / "cache")  # the first server builds it, the next reads
    settings |= {"LMEVAL_FORK_PRELOAD_HF": preload, "LMEVAL_CACHE_DIR": cache_dir}
    settings["LMEVAL_ALLOWED_PATH_ROOTS"] = f"{SUPPORT},{model_root}"
    server: Server = await stack.enter_async_context(
        factory(folder / f"data-{preload}", **settings)
    )
    if server.log is not None:
        with trio.fail_after(600):  # the fork server may build the task index first
            await server.log.wait_warm_ready(1)
            await server.log.jobs_ready.wait()
    return await stack.enter_async_context(httpx.AsyncClient(base_url=server.url, timeout=600))


async def measure(
    runs: int = 3,
    warmup: int = 1,
    server_factory: ServerFactory = hypercorn_server,
    cache_dir: Path | None = None,
) -> Report:
    seconds = {mode: Metric(f"{mode} first loglikelihood s", "s") for mode in (*MODES, "stock")}
    unlike = Metric(UNLIKE, "runs")
    details: dict[str, Any] = {"runs": runs, "warmup": warmup, "identical": True}
    with tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp:
        folder = Path(tmp)
        model = await trio.to_thread.run_sync(build_tiny_hf_model, folder / "model" / "tiny-gpt2")
        reference: dict[str, Any] | None = None
        async with AsyncExitStack() as stack:
            clients = {
                m: await open_server(stack, server_factory, folder, m, cache_dir, model.parent)
                for m in MODES
            }
            for rep in range(warmup + runs):
                stock_s, stock_results = await stock_run(model, folder / f"stock-{rep}")
                reference = reference or stock_results
                outcomes = {"stock": (stock_s, stock_results)}
                for mode in MODES:
                    outcomes[mode] = await forked_run(clients[mode], model)
                for mode, (elapsed, results) in outcomes.items():
                    unlike.add(float(results != reference))  # warm-up runs too
                    if rep >= warmup:
                        seconds[mode].add(elapsed)
            for mode, client in clients.items():  # jobs forked, not sent cold
                details[f"fork_servers_{mode}"] = (
                    (await client.get("/healthz")).json().get("fork_servers")
                )
        details["identical"] = not any(unlike.samples)
        details["reference_results"] = reference
    ratios = [
        Metric(f"{name} / on medians", "x", higher_is_better=True) for name in ("off", "stock")
    ]
    for ratio, name in zip(ratios, ("off", "stock"), strict=True):
        if seconds["on"].samples:
            ratio.add(seconds[name].stats()["median"] / seconds["on"].stats()["median"])
    return Report(
        "hf_start",
        f"hf job (tiny local GPT-2, tiny_mc) submission -> first loglikelihood request: "
        f"preload on / off / stock lm_eval, {runs} runs each",
        [*seconds.values(), *ratios, unlike],
        [Target(ratios[0].name, "median", 2), Target(unlike.name, "worst", 0)],
        details,
    )


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, help="an existing LMEVAL_CACHE_DIR")
    args = parser.parse_args(argv)
    return run(measure, args.runs, args.warmup, hypercorn_server, args.cache_dir)


if __name__ == "__main__":
    main()
