"""The client commands: each takes the blocking client, the parsed flags and the output, and
returns the exit code. Data goes to stdout (JSON with ``--json``); progress and notes to
stderr, so ``lmeval-trio results 7 --format csv > scores.csv`` captures only the scores."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from lmeval_trio.cli import _render as render
from lmeval_trio.cli._request import build_request
from lmeval_trio.client import ApiError, Client, EndEvent, Stream
from lmeval_trio.http.schemas import JobDetail, Sample, Submitted
from lmeval_trio.jobs.status import JobStatus

EXIT_OK = 0
EXIT_JOB_FAILED = 1  # a followed job ended Failed or Stopped, or was deleted
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4  # the server answered with an error
EXIT_INTERRUPTED = 130


@dataclass
class Output:
    json: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def data(self, value: Any, text: str) -> None:
        """``value`` as JSON in --json mode, else ``text``."""
        print(render.dumps(value) if self.json else text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def error(self, message: str, **details: Any) -> None:
        if self.json:
            print(json.dumps({"error": message, **details}), file=self.err, flush=True)
        else:
            print(f"lmeval-trio: error: {message}", file=self.err, flush=True)


def submit(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.dry_run:
        report = client.submit(build_request(args), dry_run=True)
        out.data(report, render.checks_table(report))
        return EXIT_OK if report.ok else EXIT_REFUSED
    return _queued(client, client.submit(build_request(args)), args.follow, out)


def tasks(client: Client, args: argparse.Namespace, out: Output) -> int:
    found = client.tasks(
        args.query,
        kind=args.kind,
        output_type=args.output_type,
        limit=args.limit,
        offset=args.offset,
        include_path=args.include_path,
    )
    out.data(found, render.tasks_table(found))
    return EXIT_OK


def resume(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _queued(client, client.resume(args.job_id), args.follow, out)


def _queued(client: Client, submitted: Submitted, follow: bool, out: Output) -> int:
    if not follow:
        out.data(submitted, submitted.message)
        return EXIT_OK
    out.note(submitted.message)
    return follow_job(client, submitted.job_id, out)


def follow(client: Client, args: argparse.Namespace, out: Output) -> int:
    return follow_job(client, args.job_id, out)


def follow_job(client: Client, job_id: int, out: Output) -> int:
    """Show progress until the job ends; then its results (exit 0) or why it failed (exit 1)."""
    view = render.ProgressView(out.err, live=not out.json and out.err.isatty())
    end: EndEvent | None = None
    try:
        for event in client.events(job_id):
            view.show(event)
            end = event if isinstance(event, EndEvent) else end
    except KeyboardInterrupt:
        out.note(f"\nstopped following; job {job_id} goes on (`lmeval-trio stop {job_id}`)")
        return EXIT_INTERRUPTED
    if end is not None and end.status is None:
        out.error(f"job {job_id} was deleted while running")
        return EXIT_JOB_FAILED
    return _report_end(client, client.get_job(job_id), out)


def _report_end(client: Client, job: JobDetail, out: Output) -> int:
    if job.status is not JobStatus.COMPLETED:
        return _report_failure(job, out)
    try:
        results = client.results(job.job_id)
    except ApiError as error:  # e.g. --predict_only writes no results file
        out.note(f"job {job.job_id} completed without results: {error}")
        out.data({"job": job, "results": None}, f"Job {job.job_id} completed.")
        return EXIT_OK
    out.data({"job": job, "results": results}, render.results_table(results))
    return EXIT_OK


def _report_failure(job: JobDetail, out: Output) -> int:
    if out.json:
        out.data({"job": job, "results": None}, "")
    elif job.stderr:
        tail = [line.rstrip("\r\n") for line in job.stderr[-20:]]
        out.note("\n".join(["--- stderr (last lines) ---", *tail]))
    reason = f": {job.reason}" if job.reason else ""
    out.error(f"job {job.job_id} {job.status.value.lower()}{reason}", job_id=job.job_id)
    return EXIT_JOB_FAILED


def jobs(client: Client, args: argparse.Namespace, out: Output) -> int:
    listing = client.list_jobs(
        args.status,
        active_only=args.active,
        limit=args.limit,
        offset=args.offset,
        newest_first=not args.oldest_first,  # as the dashboard lists them
    )
    if not listing.jobs and not out.json:
        out.note("No jobs.")
        return EXIT_OK
    text = render.jobs_table(listing.jobs)
    if len(listing.jobs) < listing.total:
        text += f"\n({len(listing.jobs)} of {listing.total} jobs; see --limit/--offset)"
    out.data(listing, text)
    return EXIT_OK


def show(client: Client, args: argparse.Namespace, out: Output) -> int:
    job = client.get_job(args.job_id)
    text = render.job_details(job)
    try:
        deliveries = client.deliveries(args.job_id).deliveries
    except ApiError as error:  # a server from before webhooks (404), or the job just deleted
        if error.status_code != 404:
            raise
        deliveries = []
    if deliveries:
        text += "\n" + render.deliveries_table(deliveries)
    out.data(job, text)
    return EXIT_OK


def logs(client: Client, args: argparse.Namespace, out: Output) -> int:
    streams: tuple[Stream, ...] = ("stdout", "stderr") if args.stream == "all" else (args.stream,)
    if args.follow:
        for line in client.follow_logs(args.job_id, streams):
            _print_line(out, line.stream, line.text)
        return EXIT_OK
    for stream in streams:
        lines = client.read_log(args.job_id, stream)
        first = next(lines, None)  # a missing job fails here, before any header
        if len(streams) > 1 and not out.json:
            print(f"==> {stream} <==", file=out.out)
        if first is not None:
            _print_line(out, stream, first)
        for text in lines:
            _print_line(out, stream, text)
    return EXIT_OK


def _print_line(out: Output, stream: str, text: str) -> None:
    if out.json:
        print(json.dumps({"stream": stream, "line": text}), file=out.out, flush=True)
    else:
        out.out.write(text if text.endswith("\n") else text + "\n")
        out.out.flush()


def results(client: Client, args: argparse.Namespace, out: Output) -> int:
    found = client.results(args.job_id)
    if out.json or args.format == "json":
        print(render.dumps(found), file=out.out)
    elif args.format == "csv":
        print(render.results_csv(found), file=out.out)
    else:
        print(render.results_table(found), file=out.out)
    return EXIT_OK


def samples(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Up to --limit samples, fetched page by page along the cursors."""
    correct = False if args.wrong else True if args.right else None
    found: list[Sample] = []
    cursor: str | None = None
    total = 0
    while len(found) < args.limit:
        page = client.samples(
            args.job_id,
            args.task,
            correct=correct,
            q=args.grep,
            filter=args.filter,
            metric=args.metric,
            limit=min(200, args.limit - len(found)),
            cursor=cursor,
        )
        found += page.samples
        total, cursor = page.total, page.next_cursor
        if cursor is None:
            break
    if out.json:
        print(render.dumps({"total": total, "samples": found}), file=out.out)
    else:
        print(render.samples_text(found, total), file=out.out)
    return EXIT_OK


def stop(client: Client, args: argparse.Namespace, out: Output) -> int:
    outcome = client.stop_all() if args.all else client.stop(args.job_id)
    out.data(outcome, outcome.message)
    return EXIT_OK


def delete(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.all and not args.yes and sys.stdin.isatty():
        answer = input("Delete every job, its logs and results? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            out.note("Nothing deleted.")
            return EXIT_OK
    outcome = client.delete_all() if args.all else client.delete(args.job_id)
    out.data(outcome, outcome.message)
    return EXIT_OK
