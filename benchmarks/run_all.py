"""Run every benchmark, print a summary of the targets, optionally write all reports as JSON.

    uv run python benchmarks/run_all.py [--quick] [--only dispatch,handoff] [--json-out FILE]

``--quick`` uses smaller sizes (minutes instead of ~10 minutes); the README figures come from
the defaults.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

NAMES = (
    "dispatch",
    "handoff",
    "flood",
    "api",
    "startup",
    "lm_eval_start",
    "catalog",
    "sweep_submit",
    "sweep_overhead",
    "submit_throughput",
    "samples_page",
    "fork_servers",
    "hf_start",
    "stack_floor",
)
QUICK = {
    "dispatch": ["--runs", "50"],
    "handoff": ["--runs", "30"],
    "flood": ["--mb", "50", "--runs", "2", "--warmup-mb", "5"],
    "api": ["--jobs", "2000", "--runs", "30", "--full-runs", "3"],
    "startup": ["--runs", "2"],
    "lm_eval_start": ["--reps", "1"],
    "catalog": ["--runs", "50"],
    "sweep_submit": ["--runs", "10"],
    "sweep_overhead": ["--jobs", "6", "--stock-jobs", "2"],
    "submit_throughput": ["--submissions", "1000", "--warmup", "20"],
    "samples_page": ["--runs", "10", "--samples", "10000"],
    "fork_servers": ["--jobs", "6", "--stock-jobs", "2", "--sequence", "5"],
    "hf_start": ["--runs", "1"],
    "stack_floor": ["--submissions", "1000", "--rounds", "1"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--only", default=",".join(NAMES), help="comma-separated benchmarks")
    parser.add_argument("--json-out", type=Path, help="write every report here")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    if unknown := set(names) - set(NAMES):
        parser.error(f"unknown benchmarks: {sorted(unknown)}")
    reports: list[dict[str, Any]] = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        reports.append(module.main(QUICK[name] if args.quick else []).to_json())
    print_summary(reports)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(reports, indent=2, default=str) + "\n")
    return 0 if all(t["met"] for r in reports for t in r["targets"]) else 1


def print_summary(reports: list[dict[str, Any]]) -> None:
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"\n== summary (load average now: {load})")
    for report in reports:
        for target in report["targets"]:
            verdict = "MET" if target["met"] else "MISSED"
            value = target["value"]
            shown = "-" if value is None else f"{value:.3g}"
            print(
                f"   {report['benchmark']:<14} {target['metric']:<36} {target['stat']:<7}"
                f" {shown:>9}  target {target['target']:<12} {verdict}"
            )


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script: make the repository importable
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
