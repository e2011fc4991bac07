"""SMOKE TEST of benchmarks/ (not a performance test): each benchmark runs once with minimal
sizes so its code does not rot. No timing or memory figure is asserted (the machine may be
busy); only that every benchmark reaches its report with the expected number of samples.
The servers are in-process here (the benchmarks themselves default to a hypercorn subprocess),
except for the start-up benchmark, whose subject is that subprocess.
"""

from __future__ import annotations

import pytest

from benchmarks import (
    api,
    catalog,
    dispatch,
    flood,
    fork_servers,
    handoff,
    hf_start,
    lm_eval_start,
    samples_page,
    stack_floor,
    startup,
    submit_throughput,
    sweep_overhead,
    sweep_submit,
)
from benchmarks._report import Metric, Report, Target
from benchmarks._server import inprocess_server
from tests.conftest import CACHE_DIR


def _samples(report: Report) -> dict[str, int]:
    return {m.name: int(m.stats()["n"]) for m in report.metrics}


async def test_dispatch_smoke() -> None:
    report = await dispatch.measure(runs=2, warmup=0, server_factory=inprocess_server)
    assert _samples(report) == {"dispatch_ms": 2, "post_response_ms": 2}


async def test_handoff_smoke() -> None:
    report = await handoff.measure(runs=2, warmup=0, server_factory=inprocess_server)
    assert _samples(report) == {"handoff_ms": 2}


async def test_flood_smoke() -> None:
    report = await flood.measure(megabytes=2, runs=1, warmup_mb=1, server_factory=inprocess_server)
    assert set(_samples(report).values()) == {1}


async def test_api_smoke() -> None:
    report = await api.measure(
        jobs=30, runs=2, full_runs=1, log_sample=2, server_factory=inprocess_server
    )
    assert list(_samples(report).values()) == [2, 2, 2, 1]
    assert report.context["jobs"] == 30


async def test_startup_smoke() -> None:
    """One start, with the tests' shared bytecode cache (no compiling after the first)."""
    report = await startup.measure(runs=1, inherited=False, pycache=CACHE_DIR / "pycache")
    samples = _samples(report)
    assert samples["cached time_to_healthz_s"] == samples["worker_rss_idle_MB"] == 1


async def test_lm_eval_start_smoke() -> None:
    """Fast start from the index cache only (the tests' shared caches), one job: the cheapest
    real run (fork servers are covered by tests/test_fork_server.py)."""
    report = await lm_eval_start.measure(
        reps=1,
        modes=("index",),
        cache_dir=CACHE_DIR,
        server_factory=inprocess_server,
        floor=False,
    )
    assert report.context["failures"] == []
    assert _samples(report)["index first_request_s"] == 1


def test_report_statistics() -> None:
    latency = Metric("x", "ms", [5.0, 1.0, 3.0])
    assert latency.stats() == {
        "n": 3,
        "median": 3.0,
        "p90": 5.0,
        "p99": 5.0,
        "best": 1.0,
        "worst": 5.0,
    }
    rate = Metric("y", "MB/s", [5.0, 1.0, 3.0], higher_is_better=True)
    assert rate.stats()["worst"] == 1.0
    assert Target("y", "median", 2).check(rate)["met"]


async def test_catalog_smoke() -> None:
    report = await catalog.measure(runs=2, cache_dir=CACHE_DIR, server_factory=inprocess_server)
    assert _samples(report) == {"GET /tasks search ms": 2}
    assert report.context["entries"] > 14_000


async def test_sweep_submit_smoke() -> None:
    report = await sweep_submit.measure(runs=2, warmup=0, cells=4, server_factory=inprocess_server)
    assert list(_samples(report).values()) == [2]
    assert report.context["cells"] == 4


async def test_sweep_overhead_smoke() -> None:
    """One real dummy job each way, no stock run (the lm_eval_start smoke covers lm-eval)."""
    report = await sweep_overhead.measure(jobs=1, stock_jobs=0, server_factory=inprocess_server)
    assert _samples(report) == {
        "separate jobs wall s": 1,
        "one sweep wall s": 1,
        "stock lm_eval wall s": 0,
        "sweep / separate": 1,
    }


async def test_submit_throughput_smoke() -> None:
    report = await submit_throughput.measure(
        submissions=6, clients=3, warmup=1, server_factory=inprocess_server, cache_dir=CACHE_DIR
    )
    samples = _samples(report)
    assert samples["3 clients latency ms"] == samples["1 client latency ms"] == 6
    assert samples["3 clients submissions/s"] == samples["1 client submissions/s"] == 1


async def test_stack_floor_smoke() -> None:
    """Both apps on the README's hypercorn command, 16 and 1 client(s), one round."""
    report = await stack_floor.measure(
        submissions=6, rounds=1, clients=3, cache_dir=CACHE_DIR, warmup=2
    )
    samples = _samples(report)
    for app in ("bare stack", "lmeval-trio"):
        assert samples[f"{app}, 3 clients: latency ms"] == 6
        assert samples[f"{app}, 1 client: submissions/s"] == 1


async def test_samples_page_smoke() -> None:
    report = await samples_page.measure(
        runs=2, warmup=0, samples=200, server_factory=inprocess_server
    )
    assert _samples(report) == {
        "first request (builds the index) ms": 1,
        "first page ms": 2,
        "deep cursor page ms": 2,
        "correct=false page ms": 2,
        "q= search page ms": 2,
    }


async def test_fork_servers_smoke() -> None:
    """One forked dummy job each way and one API job, no stock run; in process, so the
    fork server is whatever the first job finds (it may run cold: no timing is asserted)."""
    report = await fork_servers.measure(
        jobs=1, stock_jobs=0, sequence=1, server_factory=inprocess_server
    )
    samples = _samples(report)
    assert samples["separate per job s"] == samples["sweep per job s"] == 1
    assert samples["first request s"] == samples["idle PSS ready MB"] == 1


async def test_hf_start_smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    """One hf job per preload setting and one stock run on the tiny local GPT-2, in process
    (the jobs inherit this environment, so it says offline), with the tests' shared caches:
    every run's results equal stock's; no timing is asserted."""
    for module in ("torch", "tokenizers", "transformers"):
        pytest.importorskip(module)
    for name, value in hf_start.OFFLINE.items():
        monkeypatch.setenv(name, value)
    report = await hf_start.measure(
        runs=1, warmup=0, server_factory=inprocess_server, cache_dir=CACHE_DIR
    )
    samples = _samples(report)
    assert samples.pop(hf_start.UNLIKE) == 3  # one per run: on, off and stock
    assert set(samples.values()) == {1}
    assert report.context["identical"] is True
