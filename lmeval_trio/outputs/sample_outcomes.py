"""Per-document outcomes of a job's samples file, for paired comparisons.

With ``log_samples`` lm-eval writes, beside ``results_<date>.json``, one
``samples_<task>_<date>.jsonl`` per task: a record per document and filter with ``doc_id``,
``doc_hash``, ``prompt_hash``, ``target_hash``, ``filter``, ``metrics`` (the names of the
metrics, whose values are top-level keys of the record), ``arguments``, ``target``,
``resps`` and ``filtered_resps`` (lm_eval/evaluator.py, loggers/evaluation_tracker.py).
Files are streamed a line at a time and only the outcome of each document is kept; every
read runs in a worker thread (the async wrappers), never on the event loop.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.outputs.logs import open_inside
from lmeval_trio.outputs.results import find_results_file, job_roots

#: A longer line (one document's record) is skipped: no one document is worth more memory.
MAX_LINE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    """One document's result under one filter: its hash and its numeric metric values."""

    doc_hash: str
    metrics: dict[str, float]


#: filter -> doc_id -> outcome
Outcomes = dict[str, dict[int, Outcome]]


def samples_files(record: JobRecord) -> dict[str, Path]:
    """task -> the samples file written with the job's newest results file (same date)."""
    results_file = find_results_file(record)
    if results_file is None:
        return {}
    date_id = results_file.stem.rsplit("_", 1)[-1]
    suffix = f"_{date_id}.jsonl"
    found: dict[str, Path] = {}
    try:
        entries = list(os.scandir(results_file.parent))
    except OSError:
        return {}
    for entry in entries:
        name = entry.name
        if not (name.startswith("samples_") and name.endswith(suffix)):
            continue
        try:
            if not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                continue
        except OSError:
            continue
        found[name[len("samples_") : -len(suffix)]] = Path(entry.path)
    return found


def _records(record: JobRecord, path: Path) -> Iterator[dict[str, Any]]:
    """The file's records, one line at a time (unparsable or oversized lines skipped: the
    job wrote the file, and a torn last line must not cost the rest)."""
    with open(open_inside(path, job_roots(record)), "rb") as file:
        while line := file.readline(MAX_LINE_BYTES + 1):
            if len(line) > MAX_LINE_BYTES:
                while line and not line.endswith(b"\n"):
                    line = file.readline(MAX_LINE_BYTES)
                continue
            try:
                item = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(item, dict) and _doc_id(item) is not None:
                yield item


def _doc_id(item: dict[str, Any]) -> int | None:
    doc_id = item.get("doc_id")
    return doc_id if isinstance(doc_id, int) and not isinstance(doc_id, bool) else None


def _metric_values(item: dict[str, Any]) -> dict[str, float]:
    names = item.get("metrics")
    values: dict[str, float] = {}
    for name in names if isinstance(names, list) else []:
        value = item.get(name) if isinstance(name, str) else None
        if isinstance(value, int | float):
            values[name] = float(value)
    return values


def read_outcomes(record: JobRecord, task: str) -> Outcomes | None:
    """The task's outcomes per filter; None when the job logged no samples for it."""
    path = samples_files(record).get(task)
    if path is None:
        return None
    outcomes: Outcomes = {}
    try:
        for item in _records(record, path):
            doc_id = _doc_id(item)
            assert doc_id is not None
            by_doc = outcomes.setdefault(str(item.get("filter", "none")), {})
            by_doc[doc_id] = Outcome(str(item.get("doc_hash", "")), _metric_values(item))
    except OSError:
        return None
    return outcomes


def read_documents(
    record: JobRecord, task: str, filter_name: str, doc_ids: set[int]
) -> dict[int, dict[str, Any]]:
    """The records of ``doc_ids`` under ``filter_name``: what a reader compares side by side
    (the prompt as lm-eval recorded its request arguments, the target, the responses)."""
    path = samples_files(record).get(task)
    found: dict[int, dict[str, Any]] = {}
    if path is None or not doc_ids:
        return found
    try:
        for item in _records(record, path):
            doc_id = _doc_id(item)
            if doc_id in doc_ids and str(item.get("filter", "none")) == filter_name:
                assert doc_id is not None
                found[doc_id] = {
                    "arguments": item.get("arguments"),
                    "target": item.get("target"),
                    "resps": item.get("resps"),
                    "filtered_resps": item.get("filtered_resps"),
                    "metrics": _metric_values(item),
                }
    except OSError:
        return found
    return found


async def outcomes(record: JobRecord, task: str) -> Outcomes | None:
    """:func:`read_outcomes` in a worker thread."""
    return await trio.to_thread.run_sync(read_outcomes, record, task)


async def documents(
    record: JobRecord, task: str, filter_name: str, doc_ids: set[int]
) -> dict[int, dict[str, Any]]:
    """:func:`read_documents` in a worker thread."""
    return await trio.to_thread.run_sync(read_documents, record, task, filter_name, doc_ids)
