"""What a job's tasks must be, judged against the task catalog before the job is queued:
names lm-eval or the request's include_path defines, on a model that can serve them.

Names are judged as lm-eval's ``run`` reads them (comma-split, fnmatch patterns matched
against every task, group and tag; ``.yaml`` files and folders are paths, judged by the
policy). Folders are judged by the same path policy as a job's ``include_path``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from lmeval_trio.engine.catalog import LOGLIKELIHOOD_TYPES, Catalog, CatalogUnavailable
from lmeval_trio.engine.catalog_builds import FoundFolders, found_fingerprints
from lmeval_trio.errors import InvalidRequest
from lmeval_trio.harness.effective import EffectiveRun
from lmeval_trio.policy import budget
from lmeval_trio.policy.rules import (
    CODE_RULE,
    REMOTE_CODE_TASK_PREFIXES,
    MissingPath,
    PolicyViolation,
)

#: lm-eval's chat-completions models: ``loglikelihood`` raises NotImplementedError (they have
#: no prompt log-probabilities), after the model and every task have loaded.
CHAT_MODELS = frozenset(
    {"local-chat-completions", "openai-chat-completions", "azure-openai-chat-completions"}
)
#: Names a refusal lists before "and N more".
MAX_LISTED = 10


class TaskRefused(InvalidRequest):
    """A job's tasks cannot run as asked (422): unknown names, or an output type the model
    cannot serve. ``extra`` goes into the answer beside ``detail`` (unknown, suggestions)."""

    def __init__(self, field: str, kind: str, message: str, **extra: Any) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.kind = kind
        self.message = message
        self.extra = extra


if TYPE_CHECKING:
    from lmeval_trio.engine.supervisor import Supervisor


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
        return await budget.run_bounded(judge, supervisor.settings.admission_timeout_s)
    except budget.AdmissionExceeded as error:
        raise PolicyViolation(error.field, error.message) from None


async def listing_catalog(supervisor: Supervisor, folders: Sequence[str]) -> Catalog:
    """lm-eval's catalog, or only the given task folders' entries (for ``GET /tasks``)."""
    if not folders:
        return await supervisor.catalogs.builtin()
    return await supervisor.catalogs.folders(await judged_folders(supervisor, folders))


async def check_tasks(
    supervisor: Supervisor,
    request: Mapping[str, Any],
    run: EffectiveRun,
    shared: dict[str, str | Exception] | None = None,
    found: FoundFolders | None = None,
) -> str:
    """Every task name of ``run`` must name something lm-eval (or the job's include_path)
    defines, and the model must be able to serve what those tasks ask. Returns the detail
    for the report; a catalog that cannot be built lets the job through (lm-eval then
    judges, as before), saying so. With ``shared`` (a sweep's cells), requests that agree on
    everything the check reads share one verdict: one catalog look-up, not one per cell.
    ``found``: ``folders_found``'s answer for this request, taken in the policy's thread."""
    if shared is None:
        return await _check_tasks(supervisor, request, run, found)
    key = _verdict_key(request, run)
    if key not in shared:
        try:
            shared[key] = await _check_tasks(supervisor, request, run)
        except (TaskRefused, PolicyViolation, MissingPath) as refusal:
            shared[key] = refusal
    verdict = shared[key]
    if isinstance(verdict, Exception):
        raise verdict.with_traceback(None)
    return verdict


def _verdict_key(request: Mapping[str, Any], run: EffectiveRun) -> str:
    """Everything the task check of a request reads."""
    read = [
        bool(request.get("lm_eval_path")),
        run.values.get("tasks"),
        run.values.get("include_path"),
        run.values.get("model"),
        run.field("tasks"),
        run.field("include_path"),
    ]
    return json.dumps(read, sort_keys=True, default=str)


def folders_found(
    supervisor: Supervisor, request: Mapping[str, Any], run: EffectiveRun
) -> FoundFolders | None:
    """The include_path folders the task check of ``request`` will read, and their stat
    fingerprints, if it will read any (a worker thread: the policy's, which the request
    takes anyway, so the check needs no thread hop of its own). None: no folder to read,
    or finding them failed (the check then does it again, and meets the same error where
    it always did)."""
    if _skipped(supervisor, request, run) is not None or not run.values.get("include_path"):
        return None
    try:
        return found_fingerprints(partial(_include_folders, supervisor, run))
    except Exception:  # raised again by the check itself, in its own place
        return None


def _skipped(supervisor: Supervisor, request: Mapping[str, Any], run: EffectiveRun) -> str | None:
    """Why the task check of ``request`` has nothing to judge, or None if it has."""
    if not supervisor.settings.check_tasks:
        return "not checked: LMEVAL_CHECK_TASKS is off"
    if request.get("lm_eval_path"):
        return "not checked: the request runs its own lm-eval (lm_eval_path)"
    if not [n for n in task_names(run.values.get("tasks")) if not is_path_entry(n)]:
        return "no task names to check (files and folders are judged as paths)"
    return None


async def _check_tasks(
    supervisor: Supervisor,
    request: Mapping[str, Any],
    run: EffectiveRun,
    found: FoundFolders | None = None,
) -> str:
    """The check itself (see ``check_tasks``)."""
    skipped = _skipped(supervisor, request, run)
    if skipped is not None:
        return skipped
    names = [n for n in task_names(run.values.get("tasks")) if not is_path_entry(n)]
    folders = partial(_include_folders, supervisor, run) if run.values.get("include_path") else None
    wait_s = supervisor.settings.task_check_wait_s
    try:
        with trio.move_on_after(wait_s):  # the build goes on, owned by the supervisor
            catalog = await supervisor.catalogs.for_request(folders, found)
            return await _check_names(supervisor, catalog, run, names)
    except CatalogUnavailable as error:
        return f"not checked: {error}"
    return (
        f"not checked: the task catalog is still being built (LMEVAL_TASK_CHECK_WAIT_S={wait_s:g})"
    )


async def _check_names(
    supervisor: Supervisor, catalog: Catalog, run: EffectiveRun, names: list[str]
) -> str:
    if all(catalog.get(name) is not None for name in names):  # names, no patterns: lookups
        chosen = list(dict.fromkeys(names))
    else:  # patterns match against every name; unknown ones get suggestions (difflib)
        chosen = await trio.to_thread.run_sync(_known, catalog, run, names)
    if not supervisor.settings.allow_code_execution:
        _check_remote_code(catalog, run, chosen)
    return _check_output_types(catalog, run, chosen)


def _check_remote_code(catalog: Catalog, run: EffectiveRun, names: list[str]) -> None:
    """The policy's remote-code task rule, on the tasks a group or tag really runs (the
    policy itself sees names only: ``longcxt`` is a tag of RULER tasks)."""
    for name in names:
        for leaf in catalog.leaves(name):
            if leaf.name.startswith(REMOTE_CODE_TASK_PREFIXES):
                via = "" if leaf.name == name else f" (in {name!r})"
                raise PolicyViolation(
                    run.field("tasks"),
                    f"task {leaf.name!r}{via} loads its tokenizer with trust_remote_code=True, "
                    f"and {CODE_RULE}",
                )


def _known(catalog: Catalog, run: EffectiveRun, names: list[str]) -> list[str]:
    """The names ``names`` select (lm-eval's fnmatch); raises naming the unknown ones."""
    chosen: dict[str, None] = {}
    unknown = []
    for name in dict.fromkeys(names):
        found = catalog.matches(name)
        if not found:
            unknown.append(name)
        chosen.update(dict.fromkeys(found))
    if unknown:
        suggestions = {name: catalog.suggestions(name) for name in unknown[:MAX_LISTED]}
        hints = "; ".join(_hinted(name, close) for name, close in suggestions.items())
        where = "lm-eval nor include_path" if run.values.get("include_path") else "lm-eval"
        raise TaskRefused(
            run.field("tasks"),
            "unknown_task",
            f"neither {where} defines {hints}{_more(unknown)}",
            unknown=unknown,
            suggestions=suggestions,
        )
    return list(chosen)


def _check_output_types(catalog: Catalog, run: EffectiveRun, names: list[str]) -> str:
    model = str(run.values.get("model") or "")
    summary = f"{len(names)} tasks, groups or tags, all known"
    if model not in CHAT_MODELS:
        return summary
    refused = sorted(
        {
            f"{leaf.name} ({leaf.output_type})"
            for name in names
            for leaf in catalog.leaves(name)
            if leaf.output_type in LOGLIKELIHOOD_TYPES
        }
    )
    if refused:
        raise TaskRefused(
            run.field("tasks"),
            "output_type",
            f"model {model!r} cannot serve loglikelihood or multiple_choice tasks (lm-eval's "
            "chat-completions models have no prompt log-probabilities; use local-completions "
            f"or generate_until tasks): {', '.join(refused[:MAX_LISTED])}{_more(refused)}",
            tasks=refused,
        )
    return summary + f"; every task's output type suits {model!r}"


def _include_folders(supervisor: Supervisor, run: EffectiveRun) -> list[Path]:
    """The job's include_path folders as the policy resolved them (it judged them already);
    run in a worker thread (it resolves paths)."""
    value = run.values.get("include_path")
    items = value if isinstance(value, list) else [value] if value else []
    folders = []
    for item in items:
        where = supervisor.policy.resolve(run.field("include_path"), str(item))
        if where.path is not None and where.path.is_dir():
            folders.append(where.path)
    return folders


def task_names(tasks: Any) -> list[str]:
    """lm-eval's reading of ``--tasks``: comma-separated, each name stripped."""
    items = tasks if isinstance(tasks, list) else [tasks] if isinstance(tasks, str) else []
    return [t.strip() for item in items if isinstance(item, str) for t in item.split(",")]


def _hinted(name: str, close: list[str]) -> str:
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"{_short(name)}{hint}"


def _more(items: list[str]) -> str:
    return f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""


def _short(value: str) -> str:
    return repr(value if len(value) <= 200 else value[:200] + "...")


def is_path_entry(task: str) -> bool:
    """A task entry lm-eval reads from disk (a YAML file, glob of them, or a folder)."""
    return "/" in task or task.startswith(("~", ".")) or task.endswith((".yaml", ".yml"))
