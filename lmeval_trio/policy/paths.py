"""Where a request's path points for its job: resolved once, as the job will use it.

A job runs in its own folder, ``data/jobs/<id>``, which does not exist while its request is
judged (the id comes with the record). A relative path that stays inside that folder is kept
as a part below it (the folder is new, so there is no symlink to follow there); every other
path is made absolute with symlinks followed, relative ones from the job's folder. The policy
judges these values, and the same values become the job's argv, its environment and the
folders the server later reads results from: one answer to "where does this path point",
whatever the server's own working directory.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Where:
    """A resolved request path: below the job's own folder (``own``) or elsewhere (``path``,
    absolute, symlinks followed)."""

    own: PurePosixPath | None = None
    path: Path | None = None

    def at(self, job_dir: Path) -> Path:
        """The absolute path for the job whose folder is ``job_dir``."""
        if self.own is not None:
            return job_dir / self.own
        assert self.path is not None
        return self.path


def resolve(value: str, jobs_dir: Path) -> Where:
    """Where ``value`` points for a job in ``jobs_dir/<id>`` (raises ValueError or OSError
    for a path no process could use: a NUL byte, a name too long)."""
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return Where(path=Path(os.path.realpath(expanded)))
    parts = PurePosixPath(posixpath.normpath(expanded)).parts
    if not parts or parts[0] != "..":
        return Where(own=PurePosixPath(*parts) if parts else PurePosixPath("."))
    # Above the job's folder: the id drops out; from data/jobs on, real folders and links.
    return Where(path=Path(os.path.realpath(os.path.join(jobs_dir, *parts[1:]))))


def inside(path: Path, root: Path) -> bool:
    """``path`` is ``root`` or below it (both already absolute and resolved)."""
    return path == root or root in path.parents
