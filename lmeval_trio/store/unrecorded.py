"""A job's end the store refused, kept beside the job's logs until the store records it.

When the store cannot be written (a full disk, a read-only database) as a job ends, the
supervisor retries; should the server stop first, the end is also written to
``<job_dir>/unrecorded-end.json``, so that the next start records that end instead of
running a finished job again. Best effort: where the disk is full, this write may fail too,
and the job is then treated like one a crash interrupted.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lmeval_trio.jobs.status import JobStatus

FILENAME = "unrecorded-end.json"
log = logging.getLogger("lmeval_trio.supervisor")


def save(job_dir: Path, status: JobStatus, fields: dict[str, Any]) -> None:
    """Write the end atomically (a temp file renamed over the old one)."""
    path = job_dir / FILENAME
    temp = path.with_suffix(".tmp")
    try:
        temp.write_text(json.dumps({"status": status.value, "fields": fields}), encoding="utf-8")
        os.replace(temp, path)
    except OSError as error:
        log.error("could not keep the end of the job in %s either: %s", job_dir, error)


def load(job_dir: Path) -> tuple[JobStatus, dict[str, Any]] | None:
    """The end kept for this job, if a valid one is there."""
    try:
        data = json.loads((job_dir / FILENAME).read_text(encoding="utf-8"))
        status = JobStatus(data["status"])
        fields = data["fields"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not status.is_terminal or not isinstance(fields, dict):
        return None
    return status, fields


def discard(job_dir: Path) -> None:
    (job_dir / FILENAME).unlink(missing_ok=True)
