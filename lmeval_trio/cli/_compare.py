"""``lmeval-trio compare 1 2 [--baseline 1] [--alpha 0.05]``: jobs (or a sweep's cells)
against a baseline as a table of values, deltas, p-values and marks, then the mismatches and
the paired comparisons; ``--report FILE`` saves the self-contained HTML report instead."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmeval_trio.cli._commands import EXIT_OK, Output
from lmeval_trio.cli._render import table
from lmeval_trio.cli._request import RequestError
from lmeval_trio.client import Client
from lmeval_trio.http.schemas import Comparison

LEGEND = (
    "* significant at alpha (two-sided z test on lm-eval's stderrs); "
    "! not comparable (see mismatches): never marked significant"
)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    text = "compare jobs against a baseline: deltas, p-values, mismatches (README 'Compare runs')"
    parser: argparse.ArgumentParser = sub.add_parser(
        "compare", parents=[common], help=text, description=text
    )
    parser.set_defaults(handler=compare)
    parser.add_argument("job_ids", type=int, nargs="*", metavar="ID", help="two or more jobs")
    parser.add_argument("--baseline", type=int, metavar="ID", help="default: the first job")
    parser.add_argument("--alpha", type=float, help="significance level (default 0.05)")
    parser.add_argument("--sweep", type=int, metavar="ID", help="compare a sweep's cells instead")
    parser.add_argument("--report", metavar="FILE", help="save the HTML report to FILE")


def compare(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.sweep is None and len(args.job_ids) < 2:
        raise RequestError("name two or more job ids (or --sweep ID)")
    if args.report:
        if args.sweep is not None:
            raise RequestError("--report takes job ids, not --sweep")
        page = client.compare_report(args.job_ids, baseline=args.baseline, alpha=args.alpha)
        Path(args.report).write_text(page, encoding="utf-8")
        out.data({"report": args.report}, f"Report written to {args.report}")
        return EXIT_OK
    found = client.compare(
        args.job_ids, baseline=args.baseline, alpha=args.alpha, sweep_id=args.sweep
    )
    out.data(found, render_comparison(found))
    return EXIT_OK


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool | int) or not isinstance(value, float):
        return "-" if value is None else str(value)
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"


def render_comparison(found: Comparison) -> str:
    """The rows table (a value, delta, p and mark per job), then mismatches and pairs."""
    headers = ["TASK", "METRIC", "FILTER"]
    for job_id in found.jobs:
        suffix = " (BASELINE)" if job_id == found.baseline else ""
        headers += [f"JOB {job_id}{suffix}", "DELTA", "P", ""]
    rows = []
    for row in found.rows:
        cells = [row.task, row.metric, row.filter]
        for cell in row.jobs:
            value = _num(cell.value) + ("" if cell.stderr is None else f" ±{_num(cell.stderr)}")
            mark = "*" if cell.significant else ("!" if cell.mismatches else "")
            cells += [value, _num(cell.delta), _num(cell.p_value), mark]
        rows.append(cells)
    parts = [f"Baseline: job {found.baseline}; alpha = {found.alpha}", table(headers, rows), LEGEND]
    notes = sorted({c.note for r in found.rows for c in r.jobs if c.note})
    parts += [f"note: {note}" for note in notes]
    parts.append(_mismatches(found))
    if found.paired:
        parts.append(_paired(found))
    return "\n".join(parts)


def _mismatches(found: Comparison) -> str:
    if not found.mismatches:
        return "\nMismatches: none (the runs are comparable on every shared task)"
    rows = [
        [str(m.job_id), m.task or "(whole run)", m.kind, str(m.baseline), str(m.value)]
        for m in found.mismatches
    ]
    return "\nMismatches:\n" + table(["JOB", "TASK", "KIND", "BASELINE", "THIS JOB"], rows)


def _paired(found: Comparison) -> str:
    rows = [
        [
            str(p.job_id),
            p.task,
            p.metric,
            p.filter,
            str(p.matched),
            _num(p.correct_to_wrong),
            _num(p.wrong_to_correct),
            _num(p.p_value),
            "*" if p.significant else ("!" if p.mismatches else ""),
        ]
        for p in found.paired
    ]
    headers = ["JOB", "TASK", "METRIC", "FILTER", "MATCHED", "1->0", "0->1", "MCNEMAR P", ""]
    return "\nPaired (from samples, McNemar's exact test):\n" + table(headers, rows)
