"""Human output: tables, job details, results, and the live per-phase progress display."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic import BaseModel

from lmeval_trio.client import JobEvent, Phase, Progress, ProgressEvent, StatusEvent
from lmeval_trio.http.schemas import (
    CheckReport,
    DeliveryOut,
    JobDetail,
    JobResults,
    JobSummary,
    MetricRow,
    Sample,
    SweepDetail,
    SweepResults,
    SweepSummary,
    TaskList,
)
from lmeval_trio.jobs.status import JobStatus

BAR_WIDTH = 24
MAX_CELL = 48


def jsonable(value: Any) -> Any:
    """Models and containers of models as plain JSON data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(jsonable(value), indent=2)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned table (no box drawing: it has to survive CI logs and pipes)."""
    cells = [[_clip(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def clock(seconds: float | None) -> str:
    """tqdm-style duration: m:ss or h:mm:ss; '?' when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _rate(rate: float | None) -> str:
    if not rate:
        return "? it/s"
    return f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.2f} s/it"


def phase_line(phase: Phase, name_width: int = 16) -> str:
    """``loglikelihood  [######----]  60%  12/20  3.40 it/s  0:03<0:02``"""
    if not phase.total:  # no bar yet, or a count whose end lm-eval does not say: no "0/0"
        done = f"{phase.n} done" if phase.n else "starting"
        return (
            f"{phase.name:<{name_width}} [{'-' * BAR_WIDTH}]    ?  {done}"
            f"  {_rate(phase.rate_per_s)}  {clock(phase.elapsed_s)}"
        )
    fraction = phase.n / phase.total
    filled = int(BAR_WIDTH * min(fraction, 1.0))
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    percent = int(f"{100 * min(fraction, 1.0):.0f}")  # as tqdm shows it
    return (
        f"{phase.name:<{name_width}} [{bar}] {percent:3d}%  {phase.n}/{phase.total}"
        f"  {_rate(phase.rate_per_s)}  {clock(phase.elapsed_s)}<{clock(phase.eta_s)}"
    )


def _timestamp(iso: str | None) -> str:
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(job: JobSummary) -> str:
    if not job.started_at:
        return "-"
    start = datetime.fromisoformat(job.started_at)
    end = datetime.fromisoformat(job.finished_at) if job.finished_at else datetime.now(UTC)
    return clock((end - start).total_seconds())


def _words(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return "-" if value is None else str(value)


def tasks_table(found: TaskList) -> str:
    """NAME KIND OUTPUT TYPE DESCRIPTION, and which slice of how many matches."""
    rows = [
        (e.name, e.kind, e.output_type or "-", (e.description or "").replace("\n", " "))
        for e in found.tasks
    ]
    shown = f"{found.offset + 1}-{found.offset + len(rows)}" if rows else "none"
    footer = f"{shown} of {found.total}"
    return table(("NAME", "KIND", "OUTPUT TYPE", "DESCRIPTION"), rows) + "\n" + footer


def checks_table(report: CheckReport) -> str:
    """One line per admission check, then the verdict."""
    rows = [(c.name, "ok" if c.ok else "FAILED", c.detail) for c in report.checks]
    verdict = "would be queued" if report.ok else "would be refused"
    return table(("CHECK", "RESULT", "DETAIL"), rows) + "\n" + verdict


def jobs_table(jobs: Sequence[JobSummary]) -> str:
    headers = ("ID", "STATUS", "PROGRESS", "MODEL", "TASKS", "CREATED", "DURATION")
    rows = [
        (
            str(job.job_id),
            job.status.value,
            f"{job.inference_progress_pct}%",
            _words(job.request.get("model")),
            _words(job.request.get("tasks")),
            _timestamp(job.created_at),
            _duration(job),
        )
        for job in jobs
    ]
    return table(headers, rows)


def job_details(job: JobDetail, log_lines: int = 15) -> str:
    """``show``: what happened to a job, and the end of its stderr."""
    exit_code = "" if job.exit_code is None else f" (exit code {job.exit_code})"
    fields = [
        ("model", _words(job.request.get("model"))),
        ("tasks", _words(job.request.get("tasks"))),
        ("command", job.argument),
        ("created", _timestamp(job.created_at)),
        ("started", _timestamp(job.started_at)),
        ("finished", _timestamp(job.finished_at)),
        ("duration", _duration(job)),
        ("attempts", str(job.attempts)),
        ("progress", f"{job.inference_progress_pct}%"),
    ]
    if job.resumed_from is not None:
        fields.append(("resumes", f"job {job.resumed_from}"))
    if job.gpus:
        fields.append(("gpus", ",".join(job.gpus)))
    if job.reason:
        fields.append(("reason", job.reason))
    if job.retry_at:
        fields.append(("next try", f"{_timestamp(job.retry_at)} (after a transient failure)"))
    lines = [f"Job {job.job_id}: {job.status.value}{exit_code}"]
    lines += [f"  {name + ':':<10} {value}" for name, value in fields]
    lines += ["  " + phase_line(p) for p in Progress.model_validate(job.progress).phases]
    lines += _attempt_lines(job)
    if job.stderr:
        lines.append(f"--- stderr (last {min(log_lines, len(job.stderr))} lines) ---")
        lines += [line.rstrip("\r\n") for line in job.stderr[-log_lines:]]
    return "\n".join(lines)


def _attempt_lines(job: JobDetail) -> list[str]:
    """Each attempt: when, how it ended, and where its output begins in the logs (the byte
    offsets ``GET /job/{id}/logs?offset=`` takes), for a job that may run more than once."""
    retrying = int(job.request.get("max_attempts") or 1) > 1 or job.retry_at is not None
    if not job.attempt_history or (len(job.attempt_history) < 2 and not retrying):
        return []
    rows = [
        (
            str(a.attempt),
            _timestamp(a.started_at),
            _timestamp(a.finished_at),
            "running"
            if a.outcome is None
            else a.outcome.value + (", retried" if a.retried else ""),
            "-" if a.exit_code is None else str(a.exit_code),
            f"{a.stdout_offset}/{a.stderr_offset}",
            a.reason or "",
        )
        for a in job.attempt_history
    ]
    headers = ("#", "STARTED", "FINISHED", "OUTCOME", "EXIT", "LOG FROM", "REASON")
    text = table(headers, rows)
    return [
        "--- attempts (LOG FROM: byte offsets in stdout.log/stderr.log) ---",
        *text.splitlines(),
    ]


def deliveries_table(deliveries: Sequence[DeliveryOut]) -> str:
    """``show``: the job's webhook deliveries, each with its last attempt and next try."""
    rows = []
    for d in deliveries:
        last = d.attempts[-1] if d.attempts else None
        outcome = "" if last is None else str(last.status_code or last.error or "")
        rows.append(
            (
                d.event,
                d.target,
                d.status,
                str(len(d.attempts)),
                outcome,
                _timestamp(d.next_attempt_at),
            )
        )
    headers = ("EVENT", "TARGET", "STATUS", "TRIES", "LAST", "NEXT")
    return "--- deliveries ---\n" + table(headers, rows)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _metric_rows(metrics: Sequence[MetricRow]) -> list[tuple[str, ...]]:
    return [
        (
            m.task + (" (group)" if m.is_group else ""),
            m.metric,
            m.filter,
            _number(m.value),
            _number(m.stderr),
        )
        for m in metrics
    ]


def results_table(results: JobResults) -> str:
    if not results.metrics:
        return f"Job {results.job_id}: no metrics in {results.file}"
    return table(("TASK", "METRIC", "FILTER", "VALUE", "STDERR"), _metric_rows(results.metrics))


def samples_text(samples: Sequence[Sample], total: int) -> str:
    """Each sample as a short block: its verdict and metrics, prompt end, target, response."""
    blocks = [f"{len(samples)} of {total} matching samples"]
    for sample in samples:
        marks = " ".join(
            "right" if ok else "wrong" for ok in sample.correct.values() if ok is not None
        )
        values = " ".join(f"{k}={_number(v)}" for k, v in sample.metrics.items())
        head = f"doc {sample.doc_id} [{sample.filter}] {values} {marks}".rstrip()
        blocks.append(
            "\n".join(
                [
                    head,
                    f"  prompt:   {_excerpt(_prompt(sample.prompt), tail=True)}",
                    f"  target:   {_excerpt(str(sample.target))}",
                    f"  response: {_excerpt(json.dumps(sample.filtered_resps))}",
                ]
            )
        )
    return "\n\n".join(blocks)


def _prompt(arguments: Any) -> str:
    """The first request's text (arg_0 of gen_args_0: the context lm-eval sent)."""
    if isinstance(arguments, dict):
        first = next(iter(arguments.values()), None)
        if isinstance(first, dict) and first:
            return str(next(iter(first.values())))
    return json.dumps(arguments)


def _excerpt(text: str, width: int = 160, tail: bool = False) -> str:
    """One line of at most ``width`` characters (the end of it if ``tail``)."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    return "…" + flat[-width + 1 :] if tail else flat[: width - 1] + "…"


def results_csv(results: JobResults) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("task", "metric", "filter", "value", "stderr", "is_group"))
    for m in results.metrics:
        writer.writerow((m.task, m.metric, m.filter, m.value, m.stderr, m.is_group))
    return buffer.getvalue().rstrip("\n")


class ProgressView:
    """Follow output: status changes, and one progress bar per phase.

    On a terminal the bars redraw in place; elsewhere (CI logs, pipes) a phase prints a line
    when it starts, at every tenth and at its end, so logs stay short but show the pace.
    """

    def __init__(self, out: TextIO, *, live: bool) -> None:
        self.out = out
        self.live = live
        self.status: JobStatus | None = None
        self.drawn = 0  # lines of bars on screen (live mode)
        self.phases: Sequence[Phase] = ()
        self.printed: dict[str, int] = {}  # phase -> last tenth printed (line mode)

    def show(self, event: JobEvent) -> None:
        if isinstance(event, StatusEvent) and event.job.status != self.status:
            self.status = event.job.status
            self._message(f"job {event.job.job_id}: {self.status.value}")
        elif isinstance(event, ProgressEvent):
            if self.live:
                self._redraw(event.progress.phases)
            else:
                self._print_steps(event.progress.phases)

    def _message(self, text: str) -> None:
        """Status lines go above the bars, which are drawn again below them."""
        self._clear()
        print(text, file=self.out, flush=True)
        if self.live and self.phases:
            self._redraw(self.phases)

    def _clear(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")  # up to the first bar, erase below
            self.drawn = 0

    def _redraw(self, phases: Sequence[Phase]) -> None:
        self._clear()
        self.phases = phases
        for phase in phases:
            print(phase_line(phase), file=self.out)
        self.drawn = len(phases)
        self.out.flush()

    def _print_steps(self, phases: Sequence[Phase]) -> None:
        for phase in phases:
            tenth = 10 * phase.n // phase.total if phase.total else 0
            if self.printed.get(phase.name, -1) < tenth:
                self.printed[phase.name] = tenth
                print(phase_line(phase), file=self.out, flush=True)


def sweeps_table(sweeps: Sequence[SweepSummary]) -> str:
    headers = ("ID", "NAME", "STATUS", "CELLS", "PROGRESS", "ETA", "CREATED")
    rows = [
        (
            str(s.sweep_id),
            s.name,
            s.status.value,
            _cell_counts(s),
            f"{s.progress_pct}%",
            clock(s.eta_s),
            _timestamp(s.created_at),
        )
        for s in sweeps
    ]
    return table(headers, rows)


def _cell_counts(sweep: SweepSummary) -> str:
    done = sweep.counts.get(JobStatus.COMPLETED.value, 0)
    return f"{done}/{sweep.total_cells} completed"


def sweep_details(sweep: SweepDetail) -> str:
    """``sweep show``: the sweep's state and each cell's job."""
    head = (
        f"Sweep {sweep.sweep_id} ({sweep.name}): {sweep.status.value}, "
        f"{_cell_counts(sweep)}, {sweep.progress_pct}%, ETA {clock(sweep.eta_s)}"
    )
    rows = [
        (
            cell.key + (" (baseline)" if cell.key == sweep.baseline else ""),
            "-" if cell.job_id is None else str(cell.job_id),
            "deleted" if cell.status is None else cell.status.value,
            f"{cell.progress_pct}%",
            cell.reason or "",
        )
        for cell in sweep.cells
    ]
    return head + "\n" + table(("CELL", "JOB", "STATUS", "PROGRESS", "REASON"), rows)


def sweep_results_table(results: SweepResults) -> str:
    """Rows task/metric/filter, a column per cell (value ± stderr)."""
    if not results.rows:
        return f"Sweep {results.sweep_id}: no results yet"
    keys = [c.key for c in results.columns]
    rows = [
        (
            r.task + (" (group)" if r.is_group else ""),
            r.metric,
            r.filter,
            *(_with_stderr(r.values.get(k), r.stderr.get(k)) for k in keys),
        )
        for r in results.rows
    ]
    return table(("TASK", "METRIC", "FILTER", *keys), rows)


def _with_stderr(value: Any, stderr: float | None) -> str:
    return _number(value) + ("" if stderr is None else f" ± {stderr:.4f}")


class SweepView:
    """``sweep submit --follow``: an overall bar and one per running cell; on a terminal
    redrawn in place, elsewhere a line whenever a cell's status or the overall tenth changes."""

    def __init__(self, out: TextIO, *, live: bool) -> None:
        self.out = out
        self.live = live
        self.drawn = 0
        self.seen: tuple[Any, ...] = ()

    def show(self, sweep: SweepDetail) -> None:
        lines = [_bar_line(f"sweep {sweep.sweep_id}", sweep.progress_pct, sweep.eta_s)]
        lines += [
            _bar_line(cell.key, cell.progress_pct, cell.eta_s)
            for cell in sweep.cells
            if cell.status is JobStatus.RUNNING
        ]
        if self.live:
            if self.drawn:
                self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            print("\n".join(lines), file=self.out, flush=True)
            self.drawn = len(lines)
            return
        seen = (sweep.progress_pct // 10, tuple(c.status for c in sweep.cells))
        if seen != self.seen:
            self.seen = seen
            print("\n".join(lines), file=self.out, flush=True)


def _bar_line(name: str, percent: int, eta_s: float | None) -> str:
    filled = BAR_WIDTH * max(0, min(percent, 100)) // 100
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    return f"{_clip(name):<24} [{bar}] {percent:3d}%  ETA {clock(eta_s)}"
