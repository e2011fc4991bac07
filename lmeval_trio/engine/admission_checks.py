"""Every check a job request passes before it is queued, in one order, with a report.

A submission runs them until the first refusal, which is raised with the report so far
attached (``checks``: the answer shows what passed and what did not); a dry run runs them all
and returns the report, queuing nothing. Order: the queue bound (dry runs; a submission
holds its place first), the execution policy, lm-eval's parser, GPUs, the task names and the
output types they need; dry runs end with the endpoint pre-flight (preflight.py), which real
jobs pass at dispatch. A sweep's cells (``admit_cells``) go through the same checks, with the
work of many done once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import trio

from lmeval_trio.engine import preflight, task_checks
from lmeval_trio.engine.catalog_builds import FoundFolders
from lmeval_trio.engine.task_checks import TaskRefused
from lmeval_trio.errors import QueueFull
from lmeval_trio.harness import argv
from lmeval_trio.harness.effective import EffectiveRun, effective_run
from lmeval_trio.harness.request_model import RequestRejected
from lmeval_trio.policy.rules import Admitted, MissingPath, PolicyViolation

if TYPE_CHECKING:
    from lmeval_trio.engine.supervisor import Supervisor

#: Refusals a check may raise; anything else is a server fault, not a verdict.
REFUSALS: tuple[type[Exception], ...] = (
    RequestRejected,
    MissingPath,
    PolicyViolation,
    TaskRefused,
    preflight.EndpointDown,
)
#: Attribute a raised refusal carries the report in (read by the HTTP error mapper).
REPORT_ATTRIBUTE = "checks"


@dataclass
class Report:
    """``{"checks": [{"name", "ok", "detail"}, ...], "ok": bool}``."""

    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check["ok"] for check in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"name": name, "ok": ok, "detail": detail})

    def to_json(self) -> dict[str, Any]:
        return {"checks": list(self.checks), "ok": self.ok}


async def _parse(request: dict[str, Any]) -> None:
    await trio.to_thread.run_sync(argv.check, request)


async def _run_of(request: dict[str, Any], admitted: Admitted) -> EffectiveRun:
    return await trio.to_thread.run_sync(_effective, request, admitted)


async def _run_judged(request: dict[str, Any], admitted: Admitted) -> EffectiveRun:
    """The run the policy judged (parsed again only if it kept none)."""
    return admitted.run if admitted.run is not None else await _run_of(request, admitted)


@dataclass(frozen=True)
class Gates:
    """The supervisor's own checks: the policy's verdict (bounded), the GPU count, and the
    queue bound (a context that holds a place while it is open). The rest default to one
    job's: lm-eval's parser and the run it makes each in a worker thread, no task checks
    shared (a sweep's cells bring what the policy's batch worked out, see ``admit_cells``).
    A policy verdict that kept the run lm-eval's parser made (``Admitted.run``) stands for
    both: the flags are not parsed again in two more thread hops."""

    #: The policy's verdict; its second argument runs with the verdict in the policy's
    #: worker thread (the task check's folder fingerprints: one thread hop fewer).
    admit: Callable[[dict[str, Any], Callable[[Admitted], None] | None], Awaitable[Admitted]]
    gpus: Callable[[int | None], None]
    queue_place: Callable[[], AbstractContextManager[None]]
    parse: Callable[[dict[str, Any]], Awaitable[None]] = _parse
    effective: Callable[[dict[str, Any], Admitted], Awaitable[EffectiveRun]] = _run_judged
    task_verdicts: dict[str, str | Exception] | None = None


class _Run:
    """One pass over the checks; ``keep_going`` (dry run) records refusals and goes on."""

    def __init__(self, keep_going: bool) -> None:
        self.keep_going = keep_going
        self.report = Report()

    async def step(self, name: str, check: Callable[[], Awaitable[str]]) -> bool:
        try:
            detail = await check()
        except REFUSALS as error:
            self.report.add(name, False, describe(error))
            if not self.keep_going:
                setattr(error, REPORT_ATTRIBUTE, self.report.to_json())
                raise
            return False
        self.report.add(name, True, detail)
        return True


async def admit(supervisor: Supervisor, request: dict[str, Any], gates: Gates) -> Admitted:
    """Run every check (the caller holds a queue place); raise the first refusal."""
    run = _Run(keep_going=False)
    admitted = await _checks(supervisor, request, gates, run)
    assert admitted is not None  # a refusal raised
    return admitted


async def admit_cells(
    supervisor: Supervisor, requests: list[dict[str, Any]], gates: Gates
) -> list[Admitted | Exception]:
    """A sweep's requests, each through the checks of ``admit`` (the caller holds their queue
    places), with the work of many done once: the policy's verdicts, lm-eval's parser and
    the runs it makes in one worker thread under one budget (``Admission.admit_many``), and
    each distinct set of tasks judged against the catalog once, not once per cell. Each
    request's verdict, or its first refusal."""
    verdicts = await supervisor.admission.admit_many(requests)
    shared: dict[str, str | Exception] = {}
    outcomes: list[Admitted | Exception] = []
    for request, verdict in zip(requests, verdicts, strict=True):
        cell = replace(
            gates,
            admit=_given(verdict),
            parse=_parsed_by_policy,
            effective=_run_judged,
            task_verdicts=shared,
        )
        try:
            outcomes.append(await admit(supervisor, request, cell))
        except REFUSALS as refusal:
            outcomes.append(refusal)
    return outcomes


def _given(
    verdict: Admitted | PolicyViolation | MissingPath | RequestRejected,
) -> Callable[[dict[str, Any], Callable[[Admitted], None] | None], Awaitable[Admitted]]:
    """The policy step of a cell the batch judged already (its cells share task verdicts,
    so nothing is fetched for the task check here)."""

    async def judged(request: dict[str, Any], then: Callable[[Admitted], None] | None) -> Admitted:
        if isinstance(verdict, Exception):
            raise verdict
        return verdict

    return judged


async def _parsed_by_policy(request: dict[str, Any]) -> None:
    """Nothing left to do: the policy admits only what lm-eval's parser accepts (it judges
    the run the parser makes), and a cell the policy refused stops before this step."""


async def dry_run(supervisor: Supervisor, request: dict[str, Any], gates: Gates) -> Report:
    """Run every check that can run, queuing nothing; the report says what would happen."""
    run = _Run(keep_going=True)
    try:
        with gates.queue_place():
            pass
        bound = supervisor.settings.max_queued_jobs
        run.report.add("queue", True, f"room in the queue (LMEVAL_MAX_QUEUED_JOBS={bound})")
    except QueueFull as error:
        run.report.add("queue", False, str(error))
    await _checks(supervisor, request, gates, run)
    return run.report


async def _checks(
    supervisor: Supervisor, request: dict[str, Any], gates: Gates, run: _Run
) -> Admitted | None:
    async def parser() -> str:
        if not (admitted and admitted[0].run is not None):  # else its verdict ran the parser
            await gates.parse(request)
        return "lm-eval's parser accepts the flags"

    admitted: list[Admitted] = []
    found: list[FoundFolders | None] = []

    def fetch_folders(verdict: Admitted) -> None:  # in the policy's worker thread
        if verdict.run is not None:
            found.append(task_checks.folders_found(supervisor, request, verdict.run))

    async def policy() -> str:
        admitted.append(await gates.admit(request, fetch_folders))
        return "the execution policy allows every path, variable and setting"

    async def gpus() -> str:
        gates.gpus(request.get("num_gpus"))
        return f"{len(supervisor.settings.gpus)} GPUs on this server (LMEVAL_GPUS)"

    allowed = await run.step("policy", policy)  # first, as before: a 403 stays a 403
    parsed = await run.step("parser", parser)
    await run.step("gpus", gpus)
    if parsed and allowed:
        effective = await gates.effective(request, admitted[0])

        async def tasks() -> str:
            shared = gates.task_verdicts
            folders = found[0] if found and effective is admitted[0].run else None
            return await task_checks.check_tasks(supervisor, request, effective, shared, folders)

        async def endpoint() -> str:
            env = request.get("env_vars") or {}
            return await preflight.check(effective, env, supervisor.settings.preflight_timeout_s)

        await run.step("tasks", tasks)
        if run.keep_going:  # real jobs: at dispatch, before a slot (see preflight.py)
            await run.step("endpoint", endpoint)
    return admitted[0] if admitted else None


def _effective(request: Mapping[str, Any], admitted: Admitted) -> EffectiveRun:
    """What lm-eval will run with (the policy judged the config file's bytes already)."""
    import yaml

    raw = admitted.config_bytes
    config = None if raw is None else yaml.safe_load(raw.decode("utf-8"))
    return effective_run(request, config if isinstance(config, dict) else None)


def describe(error: Exception) -> str:
    """A refusal in one line, naming the field."""
    if isinstance(error, RequestRejected):
        where = f"{error.field}: " if error.field else ""
        return f"{where}lm-eval rejects this: {error.message}"
    return str(error)
