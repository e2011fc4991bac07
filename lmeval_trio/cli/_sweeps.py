"""``lmeval-trio sweep ...``: submit a sweep from a JSON file (and follow it), show it, its
results table (or CSV), stop, resume or delete it. Each handler takes the blocking client,
the parsed flags and the output, and returns the exit code, like the job commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

from lmeval_trio.cli import _render as render
from lmeval_trio.cli._commands import (
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    Output,
)
from lmeval_trio.cli._request import RequestError
from lmeval_trio.client import Client
from lmeval_trio.http.schemas import SweepDetail
from lmeval_trio.jobs.status import ACTIVE, JobStatus


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``sweep`` and its commands, each with the client options of ``common``."""
    sweep = sub.add_parser("sweep", help="run many jobs as one sweep (README 'Sweeps')")
    commands = sweep.add_subparsers(dest="sweep_command", required=True, metavar="COMMAND")

    def add(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, parents=[common], help=help_text, description=help_text
        )
        parser.set_defaults(handler=handler)
        return parser

    submit_parser = add("submit", submit, "queue a sweep from a JSON file ('-': stdin)")
    submit_parser.add_argument("sweep_file", metavar="FILE")
    submit_parser.add_argument(
        "-f", "--follow", action="store_true", help="show progress until it ends, then results"
    )
    add("list", list_sweeps, "list sweeps, newest first")
    _sweep_id(add("show", show, "one sweep: its cells, their jobs and statuses"))
    results_parser = add("results", results, "the sweep's results table (tasks x cells)")
    _sweep_id(results_parser)
    results_parser.add_argument("--csv", action="store_true", help="print CSV")
    _sweep_id(add("stop", stop, "stop the sweep's queued and running jobs"))
    _sweep_id(add("resume", resume, "run the sweep's failed and stopped cells again"))
    _sweep_id(add("delete", delete, "delete the sweep, its jobs and their files"))


def _sweep_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_id", type=int, metavar="ID")


def _read(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        body = json.loads(text)
    except (OSError, ValueError) as error:
        raise RequestError(f"cannot read the sweep from {path}: {error}") from None
    if not isinstance(body, dict):
        raise RequestError(f"{path}: a sweep is a JSON object (name, base, matrix or cells)")
    return body


def submit(client: Client, args: argparse.Namespace, out: Output) -> int:
    submitted = client.submit_sweep(_read(args.sweep_file))
    if not args.follow:
        out.data(submitted, submitted.message)
        return EXIT_OK
    out.note(submitted.message)
    return follow_sweep(client, submitted.sweep_id, out)


def follow_sweep(client: Client, sweep_id: int, out: Output) -> int:
    """Redraw the sweep (a bar per running cell, one overall) at every change of any job
    (``GET /events``, no polling) until no cell is queued or running; then its results."""
    view = render.SweepView(out.err, live=not out.json and out.err.isatty())
    changes = client.jobs_events()
    try:
        sweep = client.get_sweep(sweep_id)
        while _active(sweep):
            view.show(sweep)
            next(changes)
            sweep = client.get_sweep(sweep_id)
    except KeyboardInterrupt:
        out.note(f"\nstopped following; sweep {sweep_id} goes on")
        return EXIT_INTERRUPTED
    finally:
        if isinstance(changes, Generator):
            changes.close()  # the event stream's connection, at once
    view.show(sweep)
    table = client.sweep_results(sweep_id)
    out.data({"sweep": sweep, "results": table}, render.sweep_results_table(table))
    if sweep.status is JobStatus.COMPLETED:
        return EXIT_OK
    out.error(f"sweep {sweep_id} {sweep.status.value.lower()}", sweep_id=sweep_id)
    return EXIT_JOB_FAILED


def _active(sweep: SweepDetail) -> bool:
    return any(cell.status in ACTIVE for cell in sweep.cells)


def list_sweeps(client: Client, args: argparse.Namespace, out: Output) -> int:
    listing = client.list_sweeps(newest_first=True)
    out.data(listing, render.sweeps_table(listing.sweeps) if listing.sweeps else "No sweeps.")
    return EXIT_OK


def show(client: Client, args: argparse.Namespace, out: Output) -> int:
    sweep = client.get_sweep(args.sweep_id)
    out.data(sweep, render.sweep_details(sweep))
    return EXIT_OK


def results(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.csv:
        print(client.sweep_results_csv(args.sweep_id), file=out.out, end="")
        return EXIT_OK
    table = client.sweep_results(args.sweep_id)
    out.data(table, render.sweep_results_table(table))
    return EXIT_OK


def stop(client: Client, args: argparse.Namespace, out: Output) -> int:
    outcome = client.stop_sweep(args.sweep_id)
    out.data(outcome, outcome.message)
    return EXIT_OK


def resume(client: Client, args: argparse.Namespace, out: Output) -> int:
    outcome = client.resume_sweep(args.sweep_id)
    out.data(outcome, outcome.message)
    return EXIT_OK


def delete(client: Client, args: argparse.Namespace, out: Output) -> int:
    outcome = client.delete_sweep(args.sweep_id)
    out.data(outcome, outcome.message)
    return EXIT_OK
