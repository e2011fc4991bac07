"""Samples, statistics, targets and the printed/JSON report shared by every benchmark."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio


@dataclass
class Metric:
    """Repeated measurements of one quantity; ``worst`` is the max, or the min if higher is
    better."""

    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    higher_is_better: bool = False

    def add(self, value: float) -> None:
        self.samples.append(value)

    def stats(self) -> dict[str, float]:
        values = sorted(self.samples)
        if not values:
            return {"n": 0}
        ordered = values[::-1] if self.higher_is_better else values
        return {
            "n": len(values),
            "median": statistics.median(values),
            "p90": _nearest_rank(ordered, 0.90),
            "p99": _nearest_rank(ordered, 0.99),
            "best": ordered[0],
            "worst": ordered[-1],
        }


def _nearest_rank(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of values ordered best first."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass(frozen=True)
class Target:
    """``metric``'s ``stat`` must be at most (at least, if higher is better) ``limit``."""

    metric: str
    stat: str
    limit: float

    def check(self, metric: Metric) -> dict[str, Any]:
        value = metric.stats().get(self.stat)
        op = ">=" if metric.higher_is_better else "<="
        met = value is not None and (
            value >= self.limit if metric.higher_is_better else value <= self.limit
        )
        return {
            "metric": self.metric,
            "stat": self.stat,
            "target": f"{op} {self.limit:g} {metric.unit}",
            "value": value,
            "met": met,
        }


def machine() -> dict[str, Any]:
    """What the numbers were measured on (load is read again at the end of each run)."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg": _loadavg(),
    }


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@dataclass
class Report:
    """One benchmark's results: metrics, targets, and context (sizes, machine, load)."""

    name: str
    description: str
    metrics: list[Metric]
    targets: list[Target] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine)  # run(): load at the start
    loadavg_end: list[float] = field(default_factory=list)

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    def checks(self) -> list[dict[str, Any]]:
        return [t.check(self.metric(t.metric)) for t in self.targets]

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "description": self.description,
            "machine": self.machine,
            "loadavg_end": self.loadavg_end or _loadavg(),
            "context": self.context,
            "metrics": {m.name: {"unit": m.unit, **m.stats()} for m in self.metrics},
            "targets": self.checks(),
        }

    def print(self) -> None:
        print(f"\n== {self.name}: {self.description}")
        print(f"   machine (load average at the start): {self.machine}")
        print(f"   context: {json.dumps(self.context, default=str)}")
        print(f"   {'metric':<34}{'n':>5}{'median':>11}{'p99':>11}{'worst':>11}  unit")
        for metric in self.metrics:
            s = metric.stats()
            cells = "".join(f"{_fmt(s.get(k)):>11}" for k in ("median", "p99", "worst"))
            print(f"   {metric.name:<34}{s['n']:>5}{cells}  {metric.unit}")
        for check in self.checks():
            verdict = "MET" if check["met"] else "MISSED"
            print(f"   target {check['metric']} {check['stat']} {check['target']}: {verdict}")
        print(f"   load average at the end: {self.loadavg_end or _loadavg()}")
        print("JSON: " + json.dumps(self.to_json(), default=str))


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def run(measure: Callable[..., Awaitable[Report]], *args: Any) -> Report:
    """Run a benchmark's ``measure(*args)`` in trio, noting the load before and after; print."""
    started = machine()
    report = trio.run(measure, *args)
    report.machine, report.loadavg_end = started, _loadavg()
    report.print()
    return report
