"""A finished job's outputs: its lm-eval results file, a flat metrics table, its artifacts;
and the table (and CSV) comparing many jobs' metrics, for sweeps."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmeval_trio.errors import NotFound
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.outputs.logs import open_inside
from lmeval_trio.policy.paths import inside

MAX_RESULTS_BYTES = 64 * 1024 * 1024


class ResultsUnavailable(NotFound):
    """The job wrote no (readable) results file."""


@dataclass(frozen=True)
class Artifact:
    name: str  # path relative to its root, with a prefix naming the root ("output/…")
    path: Path
    size_bytes: int


def find_results_file(record: JobRecord) -> Path | None:
    """The newest results JSON lm-eval wrote for this job.

    lm-eval writes ``<dir>/<model>/results_<ts>.json``, or ``<stem>_<ts>.json`` beside a
    requested ``…/<stem>.json``; timestamps sort lexically, and a rerun adds a newer file.
    Only regular files are candidates, found without following a symlink: the job itself
    could have planted one pointing anywhere.
    """
    requested = record.request.get("output_path")
    if isinstance(requested, str) and requested.endswith(".json"):
        stem = Path(requested).stem
        candidates = [
            p
            for p, _size in _walk(record.output_dir, record.job_dir, depth=0)
            if p.name.startswith(f"{stem}_") and p.suffix == ".json"
        ]
    else:
        candidates = [
            p
            for p, _size in _walk(record.output_dir, record.job_dir)
            if p.name.startswith("results_") and p.suffix == ".json"
        ]
    stamped = [(c.name.rsplit("_", 1)[-1], mtime, c) for c in candidates if (mtime := _mtime(c))]
    return max(stamped)[2] if stamped else None


def output_files(record: JobRecord) -> list[Path]:
    """The regular files where lm-eval writes this job's results and samples (found as
    find_results_file finds the results: no symlink followed)."""
    requested = record.request.get("output_path")
    depth = 0 if isinstance(requested, str) and requested.endswith(".json") else None
    return [p for p, _size in _walk(record.output_dir, record.job_dir, depth=depth)]


def _mtime(path: Path) -> int | None:
    """A regular file's mtime; None for anything else, or a file removed meanwhile."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return info.st_mtime_ns if stat.S_ISREG(info.st_mode) else None


def load_results(record: JobRecord) -> dict[str, Any]:
    """The parsed results plus a flat metrics table (runs in a worker thread)."""
    path = find_results_file(record)
    if path is None:
        raise ResultsUnavailable(f"job {record.id} wrote no results file")
    try:
        with open(open_inside(path, job_roots(record)), "rb") as file:
            if os.fstat(file.fileno()).st_size > MAX_RESULTS_BYTES:
                raise ResultsUnavailable(f"job {record.id}: results file is too large to parse")
            data = json.loads(file.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise ResultsUnavailable(f"job {record.id}: results file unreadable: {error}") from None
    if not isinstance(data, dict):
        raise ResultsUnavailable(f"job {record.id}: the results file does not hold an object")
    return {
        "job_id": record.id,
        "file": str(path),
        "lm_eval_version": data.get("lm_eval_version"),
        "n_samples": _mapping(data.get("n-samples")),
        "config": _mapping(data.get("config")),
        "metrics": metrics_table(data),
        "results": data,
    }


def metrics_table(data: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{task, metric, filter, value, stderr}]`` from lm-eval's "<metric>,<filter>" keys."""
    rows = []
    for section in ("results", "groups"):
        for task, metrics in _mapping(data.get(section)).items():
            for key, value in _mapping(metrics).items():
                if "," not in key or key.split(",", 1)[0].endswith("_stderr"):
                    continue
                metric, filter_name = key.split(",", 1)
                stderr = metrics.get(f"{metric}_stderr,{filter_name}")
                rows.append(
                    {
                        "task": task,
                        "metric": metric,
                        "filter": filter_name,
                        "value": value,
                        "stderr": stderr if isinstance(stderr, int | float) else None,
                        "is_group": section == "groups",
                    }
                )
    return rows


def _mapping(value: Any) -> dict[str, Any]:
    """``value`` if it is an object with string keys, else empty: a results file of an
    unexpected shape yields fewer rows, never an error."""
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return value
    return {}


def job_roots(record: JobRecord) -> tuple[Path, ...]:
    """Where the job's files really lie: its folder (which only the server can replace, so
    resolving it is safe) and its output folder (stored resolved)."""
    return (Path(os.path.realpath(record.job_dir)), record.output_dir)


def list_artifacts(record: JobRecord) -> list[Artifact]:
    """Every file of the job: logs and outputs in its folder, and a custom output folder.
    Paths start at the resolved folder, so a listed path holds no symlink at all (the
    download checks that the file it opened is at exactly that path)."""
    roots = {"": Path(os.path.realpath(record.job_dir))}
    if not inside(record.output_dir, record.job_dir):  # lexically: both stored absolute
        roots["output-path/"] = record.output_dir
    found = []
    for prefix, root in roots.items():
        for path, size in sorted(_walk(root, record.job_dir)):
            found.append(Artifact(prefix + str(path.relative_to(root)), path, size))
    return found


def resolve_artifact(record: JobRecord, name: str) -> Artifact | None:
    """The artifact called ``name``; None for anything else (including traversal tricks)."""
    return next((a for a in list_artifacts(record) if a.name == name), None)


def _walk(root: Path, job_dir: Path, depth: int | None = None) -> list[tuple[Path, int]]:
    """Regular files under ``root`` (``depth`` levels of folders below it; None: all) with
    their sizes, never through a symlink (see _unmoved), even one swapped in mid-walk. The
    job may create and remove files meanwhile: one that vanishes between listing and stat is
    left out, never an error."""
    if not _unmoved(root, job_dir) or not root.is_dir():
        return []
    files = []
    # fwalk, not walk: it enters each folder through a descriptor and checks it is the
    # folder it listed, so a folder swapped for a symlink meanwhile is never entered.
    try:
        for directory, dirs, names, dir_fd in os.fwalk(root):
            if depth is not None and len(Path(directory).relative_to(root).parts) >= depth:
                dirs.clear()
            for name in names:
                try:
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    files.append((Path(directory) / name, info.st_size))
    except (FileNotFoundError, NotADirectoryError):
        # A folder removed, or replaced by a file, between its listing and fwalk entering
        # it (the job churns its own folder): what was seen so far is the answer.
        pass
    return files


def _unmoved(root: Path, job_dir: Path) -> bool:
    """``root`` still is the folder resolved at submission: no symlink on its way from the
    job's folder (which the job may write), or none at all for a folder elsewhere (stored
    with its symlinks already followed)."""
    real = Path(os.path.realpath(root))
    try:
        below = root.relative_to(job_dir)
    except ValueError:
        return real == root
    return real == Path(os.path.realpath(job_dir)) / below


@dataclass(frozen=True)
class Column:
    """One cell of a sweep in its results table: its job and that job's metrics (None:
    no results, the job has not completed or wrote none)."""

    key: str
    job_id: int | None
    status: str | None
    metrics: list[dict[str, Any]] | None


def sweep_table(columns: list[Column]) -> dict[str, Any]:
    """Rows task/metric/filter (in first-seen order), a value and a stderr per column."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for column in columns:
        for metric in column.metrics or []:
            name = (str(metric["task"]), str(metric["metric"]), str(metric["filter"]))
            row = rows.setdefault(
                name,
                {
                    "task": name[0],
                    "metric": name[1],
                    "filter": name[2],
                    "is_group": bool(metric.get("is_group")),
                    "values": {c.key: None for c in columns},
                    "stderr": {c.key: None for c in columns},
                },
            )
            row["values"][column.key] = metric["value"]
            row["stderr"][column.key] = metric["stderr"]
    shown = [{"key": c.key, "job_id": c.job_id, "status": c.status} for c in columns]
    return {"columns": shown, "rows": list(rows.values())}


def table_csv(table: dict[str, Any]) -> str:
    """The table as CSV: task, metric, filter, then a value and a stderr column per cell.
    A field a spreadsheet would run as a formula (=, +, -, @ first) is quoted with '."""
    keys = [c["key"] for c in table["columns"]]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(
        _inert(["task", "metric", "filter", *(h for k in keys for h in (k, f"{k} stderr"))])
    )
    for row in table["rows"]:
        cells = [(row["values"][k], row["stderr"][k]) for k in keys]
        flat = [_csv_value(v) for pair in cells for v in pair]
        writer.writerow(_inert([row["task"], row["metric"], row["filter"]]) + flat)
    return out.getvalue()


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _inert([str(value)])[0]
    return repr(value)


def _inert(fields: list[str]) -> list[str]:
    return ["'" + f if f[:1] in ("=", "+", "-", "@", "\t", "\r") else f for f in fields]
