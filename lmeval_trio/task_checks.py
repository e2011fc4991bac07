"""What a job's tasks must be, judged against the task catalog before the job is queued:
names lm-eval or the request's include_path defines, on a model that can serve them.

Names are judged as lm-eval's ``run`` reads them (comma-split, fnmatch patterns matched
against every task, group and tag; ``.yaml`` files and folders are paths, judged by the
policy). Folders are judged by the same path policy as a job's ``include_path``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lmeval_trio import admission
from lmeval_trio.catalog import Catalog
from lmeval_trio.policy import MissingPath, PolicyViolation

if TYPE_CHECKING:
    from lmeval_trio.supervisor import Supervisor


async def judged_folders(supervisor: Supervisor, folders: Sequence[str]) -> list[Path]:
    """``folders`` as the path policy resolves an ``include_path`` (must exist, be folders
    inside the allowed places, their symlinks too), with the bounds of a submission."""

    def judge() -> list[Path]:
        judged = []
        for folder in folders:
            where = supervisor.policy.check_path("include_path", folder, scan=True, read=True)
            assert where.path is not None  # read=True refuses the job's own (new) folder
            if not where.path.is_dir():
                raise MissingPath("include_path", f"{_short(folder)} is not a folder")
            judged.append(where.path)
        return judged

    try:
        return await admission.run_bounded(judge, supervisor.settings.admission_timeout_s)
    except admission.AdmissionExceeded as error:
        raise PolicyViolation(error.field, error.message) from None


async def listing_catalog(supervisor: Supervisor, folders: Sequence[str]) -> Catalog:
    """lm-eval's catalog, or only the given task folders' entries (for ``GET /tasks``)."""
    if not folders:
        return await supervisor.catalogs.builtin()
    return await supervisor.catalogs.folders(await judged_folders(supervisor, folders))


def _short(value: str) -> str:
    return repr(value if len(value) <= 200 else value[:200] + "...")


def is_path_entry(task: str) -> bool:
    """A task entry lm-eval reads from disk (a YAML file, glob of them, or a folder)."""
    return "/" in task or task.startswith(("~", ".")) or task.endswith((".yaml", ".yml"))
