"""A finished job's outputs: its lm-eval results file, a flat metrics table, its artifacts."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmeval_trio.records import JobRecord

MAX_RESULTS_BYTES = 64 * 1024 * 1024


class ResultsUnavailable(Exception):
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
    """
    requested = record.request.get("output_path")
    if isinstance(requested, str) and requested.endswith(".json"):
        stem = Path(requested).stem
        candidates = list(record.output_dir.glob(f"{stem}_*.json"))
    else:
        candidates = list(record.output_dir.glob("**/results_*.json"))
    stamped = [(c.name.rsplit("_", 1)[-1], mtime, c) for c in candidates if (mtime := _mtime(c))]
    return max(stamped)[2] if stamped else None


def _mtime(path: Path) -> int | None:
    """A regular file's mtime; None for anything else, or a file removed meanwhile."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns if stat.S_ISREG(info.st_mode) else None


def load_results(record: JobRecord) -> dict[str, Any]:
    """The parsed results plus a flat metrics table (runs in a worker thread)."""
    path = find_results_file(record)
    if path is None:
        raise ResultsUnavailable(f"job {record.id} wrote no results file")
    try:
        if path.stat().st_size > MAX_RESULTS_BYTES:
            raise ResultsUnavailable(f"job {record.id}: results file is too large to parse")
        data = json.loads(path.read_text(encoding="utf-8"))
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


def list_artifacts(record: JobRecord) -> list[Artifact]:
    """Every file of the job: logs and outputs in its folder, and a custom output folder."""
    roots = {"": record.job_dir}
    if not _inside(record.output_dir, record.job_dir):
        roots["output-path/"] = record.output_dir
    found = []
    for prefix, root in roots.items():
        for path, size in sorted(_walk(root)):
            found.append(Artifact(prefix + str(path.relative_to(root)), path, size))
    return found


def resolve_artifact(record: JobRecord, name: str) -> Artifact | None:
    """The artifact called ``name``; None for anything else (including traversal tricks)."""
    return next((a for a in list_artifacts(record) if a.name == name), None)


def _walk(root: Path) -> list[tuple[Path, int]]:
    """Regular files under ``root`` (symlinks not followed) with their sizes. The job may
    create and remove files meanwhile: one that vanishes between listing and stat is left
    out, never an error."""
    if not root.is_dir():
        return []
    files = []
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            try:
                info = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                files.append((path, info.st_size))
    return files


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
