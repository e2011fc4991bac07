"""Self-contained HTML reports of a job's results and of a comparison: one file with inline
CSS and inline SVG bar charts (error bars from lm-eval's standard errors), no script and no
reference to anything outside it, to attach to a pull request or a mail.

Every value shown is escaped: task names, model arguments and metric names are user data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from html import escape
from typing import Any

from lmeval_trio.jobs.record import JobRecord

MAX_CHART_BARS = 60
_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;max-width:1100px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #d4d8e0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.sig{background:#e3f6e6;font-weight:600}.warn{color:#9a3b00}.muted{color:#667}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px}dt{font-weight:600}
svg text{font:11px system-ui,sans-serif}
"""
_COLOURS = ("#4a6fa5", "#d1803f", "#5a9e6f", "#a25ca8", "#b84a4a", "#7b8794")


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )


def _text(value: Any) -> str:
    """Any value as escaped text (structures as compact JSON)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return escape(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str))
    return escape(str(value))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``header`` is escaped here; cells arrive as markup (escaped by their builder)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(value: Any, css: str = "") -> str:
    numeric = _number(value) is not None
    classes = " ".join(c for c in (css, "num" if numeric else "") if c)
    attribute = f" class='{classes}'" if classes else ""
    return f"<td{attribute}>{_text(value)}</td>"


def bar_chart(
    labels: Sequence[str], series: Sequence[tuple[str, Sequence[Any], Sequence[Any]]]
) -> str:
    """Horizontal grouped bars, one group per label, one bar per series (name, values,
    stderrs), each with a ±stderr error bar; non-numeric values are left out."""
    labels = list(labels)[:MAX_CHART_BARS]
    numbers = [
        abs(v) + abs(s or 0)
        for _, values, errors in series
        for v, s in zip(map(_number, values), map(_number, errors), strict=False)
        if v is not None
    ]
    scale = max(numbers, default=0.0) or 1.0
    bar_h, gap, left, width = 12, 10, 260, 420
    group_h = bar_h * len(series) + gap
    height = group_h * len(labels) + 30
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{left + width + 80}' "
        f"height='{height}' role='img'>"
    ]
    for row, label in enumerate(labels):
        y0 = row * group_h + 4
        parts.append(f"<text x='4' y='{y0 + bar_h}'>{escape(label[:48])}</text>")
        for index, (_, values, errors) in enumerate(series):
            value = _number(values[row]) if row < len(values) else None
            if value is None:
                continue
            stderr = _number(errors[row]) if row < len(errors) else None
            parts.append(_bar(value, stderr, scale, left, width, y0 + index * bar_h, bar_h, index))
    parts.append(_legend(series, height - 12, left))
    parts.append("</svg>")
    return "".join(parts)


def _bar(
    value: float, stderr: float | None, scale: float, left: int, width: int, y: int, h: int, i: int
) -> str:
    w = max(0.5, abs(value) / scale * width)
    colour = _COLOURS[i % len(_COLOURS)]
    out = f"<rect x='{left}' y='{y}' width='{w:.1f}' height='{h - 2}' fill='{colour}'/>"
    out += f"<text x='{left + w + 4:.1f}' y='{y + h - 3}'>{value:.4g}</text>"
    if stderr:
        lo = left + max(0.0, abs(value) - stderr) / scale * width
        hi = left + (abs(value) + stderr) / scale * width
        mid = y + (h - 2) / 2
        out += (
            f"<path d='M{lo:.1f} {mid:.1f}H{hi:.1f}M{lo:.1f} {y + 1}V{y + h - 3}"
            f"M{hi:.1f} {y + 1}V{y + h - 3}' stroke='#111' fill='none'/>"
        )
    return out


def _legend(series: Sequence[tuple[str, Sequence[Any], Sequence[Any]]], y: int, left: int) -> str:
    parts = []
    for i, (name, _, _) in enumerate(series):
        x = left + i * 140
        colour = _COLOURS[i % len(_COLOURS)]
        parts.append(f"<rect x='{x}' y='{y - 9}' width='10' height='10' fill='{colour}'/>")
        parts.append(f"<text x='{x + 14}' y='{y}'>{escape(name[:20])}</text>")
    return "".join(parts)


def _label(row: dict[str, Any]) -> str:
    return f"{row['task']} {row['metric']} ({row['filter']})"


# -- a job ---------------------------------------------------------------------------------


def job_report(record: JobRecord, data: dict[str, Any]) -> str:
    """One job's report: what ran, its metrics table and a chart of them."""
    config = data.get("config") or {}
    facts = {
        "Job": record.id,
        "Status": record.status.value,
        "Model": config.get("model"),
        "Model arguments": config.get("model_args"),
        "Limit": config.get("limit"),
        "lm-eval": data.get("lm_eval_version"),
        "Finished": record.finished_at,
    }
    listing = "".join(f"<dt>{escape(k)}</dt><dd>{_text(v)}</dd>" for k, v in facts.items())
    metrics = data.get("metrics") or []
    rows = [
        [_td(m["task"]), _td(m["metric"]), _td(m["filter"]), _td(m["value"]), _td(m["stderr"])]
        for m in metrics
    ]
    chart = bar_chart(
        [_label(m) for m in metrics],
        [(f"job {record.id}", [m["value"] for m in metrics], [m["stderr"] for m in metrics])],
    )
    body = (
        f"<dl>{listing}</dl><h2>Results</h2>"
        + _table(["Task", "Metric", "Filter", "Value", "Stderr"], rows)
        + f"<h2>Chart</h2><p class=muted>Bars: value; whiskers: ± stderr.</p>{chart}"
    )
    return _page(f"lm-eval results: job {record.id}", body)


# -- a comparison --------------------------------------------------------------------------


def compare_report(comparison: dict[str, Any]) -> str:
    """A comparison's report: the runs, the rows with deltas and verdicts, the mismatches,
    the paired comparisons, and a chart of every job's values."""
    jobs: list[int] = comparison["jobs"]
    baseline = comparison["baseline"]
    body = (
        f"<p>Baseline: job {_text(baseline)}; "
        f"significance level alpha = {_text(comparison['alpha'])}. "
        "Rows marked ✔ differ significantly from the baseline (two-sided z test on lm-eval's "
        "standard errors); a row of a task whose runs are not comparable is never marked.</p>"
        + _runs_table(comparison["runs"])
        + "<h2>Results</h2>"
        + _rows_table(comparison["rows"], jobs)
        + "<h2>Mismatches</h2>"
        + _mismatch_table(comparison["mismatches"])
        + "<h2>Paired comparisons (from samples)</h2>"
        + _paired_table(comparison["paired"])
        + "<h2>Chart</h2><p class=muted>Bars: value; whiskers: ± stderr.</p>"
        + _compare_chart(comparison["rows"], jobs)
    )
    return _page(f"lm-eval comparison: jobs {', '.join(map(str, jobs))}", body)


def _runs_table(runs: list[dict[str, Any]]) -> str:
    rows = [
        [
            _td(r["job_id"]),
            _td(r["model"]),
            _td(r["model_args"]),
            _td(r["lm_eval_version"]),
            _td(", ".join(r["samples_tasks"]) or "none"),
        ]
        for r in runs
    ]
    return _table(["Job", "Model", "Model arguments", "lm-eval", "Samples logged"], rows)


def _rows_table(rows: list[dict[str, Any]], jobs: list[int]) -> str:
    header = ["Task", "Metric", "Filter"]
    for job_id in jobs:
        header += [f"job {job_id}", "Δ", "p", ""]
    out = []
    for row in rows:
        cells = [_td(row["task"]), _td(row["metric"]), _td(row["filter"])]
        for cell in row["jobs"]:
            mark = "✔" if cell["significant"] else ""
            css = "sig" if cell["significant"] else ""
            value = _text(cell["value"])
            if cell["stderr"] is not None:
                value += f" ± {_text(cell['stderr'])}"
            cells += [
                f"<td class=num>{value}</td>",
                _td(cell["delta"], css),
                _td(cell["p_value"], css),
            ]
            cells.append(
                f"<td class='{css}' title='{_text(cell['note'])}'>{mark}{_note(cell)}</td>"
            )
        out.append(cells)
    return _table(header, out)


def _note(cell: dict[str, Any]) -> str:
    return f" <span class='warn muted'>{_text(cell['note'])}</span>" if cell["note"] else ""


def _mismatch_table(mismatches: list[dict[str, Any]]) -> str:
    if not mismatches:
        return "<p>None: the runs are comparable on every shared task.</p>"
    rows = [
        [
            _td(m["job_id"]),
            _td(m["task"] or "(whole run)"),
            _td(m["kind"], "warn"),
            _td(m["baseline"]),
            _td(m["value"]),
        ]
        for m in mismatches
    ]
    return _table(["Job", "Task", "Kind", "Baseline", "This job"], rows)


def _paired_table(paired: list[dict[str, Any]]) -> str:
    if not paired:
        return "<p class=muted>No pair of jobs logged samples of a shared task.</p>"
    rows = []
    for p in paired:
        css = "sig" if p["significant"] else ""
        rows.append(
            [
                _td(p["job_id"]),
                _td(p["task"]),
                _td(p["metric"]),
                _td(p["filter"]),
                _td(p["matched"]),
                _td(p.get("correct_to_wrong")),
                _td(p.get("wrong_to_correct")),
                _td(p["p_value"], css),
                _td(("✔ " if p["significant"] else "") + (p["note"] or ""), css),
            ]
        )
    header = [
        "Job",
        "Task",
        "Metric",
        "Filter",
        "Matched",
        "Correct→wrong",
        "Wrong→correct",
        "McNemar p",
        "",
    ]
    return _table(header, rows)


def _compare_chart(rows: list[dict[str, Any]], jobs: list[int]) -> str:
    series = [
        (
            f"job {job_id}",
            [r["jobs"][i]["value"] for r in rows],
            [r["jobs"][i]["stderr"] for r in rows],
        )
        for i, job_id in enumerate(jobs)
    ]
    return bar_chart([_label(r) for r in rows], series)
