"""Admission: everything decided about a job before it is stored, done once, and its folder.

A request is parsed the way lm-eval parses it, held to the queue bound, judged by the policy
(its work bounded), checked against the GPUs this server has, then drafted for the id it
will get (argv, environment and output folder name that id) and stored.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from lmeval_trio.config import Settings
from lmeval_trio.engine.live import log
from lmeval_trio.engine.slots import Slots
from lmeval_trio.harness.request_model import RequestRejected, request_model
from lmeval_trio.jobs.record import JobRecord, SweepCell, SweepRecord, utc_now
from lmeval_trio.policy import budget, webhook_targets
from lmeval_trio.policy.rules import CONFIG_COPY, Admitted, MissingPath, Policy, PolicyViolation
from lmeval_trio.runners import job_command as command
from lmeval_trio.store.sqlite import Draft, IdTaken, JobStore, StoreError

MAX_SKIPPED_IDS = 1000  # ids in a row whose folders exist before a submission gives up


class Admission:
    """Turns a request into a stored job, or refuses it with the field and the reason."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        policy: Policy,
        slots: Slots,
        launcher: command.Launcher,
        backend: str,
    ) -> None:
        self.settings = settings
        self.store = store
        self.policy = policy
        self.slots = slots
        self.launcher = launcher
        self.backend = backend
        self._submitting = 0  # submissions past the queue-bound check, not yet queued
        self._drafting = trio.Lock()  # one id drafted at a time: no two drafts for one id
        self._waiting: list[_Pending] = []  # submissions waiting to be stored (store_job)

    @staticmethod
    def parse(body: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
        """The request as lm-eval would read it (pydantic's ValidationError if it cannot)."""
        model = request_model()
        if isinstance(body, model):
            request = body
        else:
            data = body.model_dump(exclude_unset=True) if isinstance(body, BaseModel) else body
            request = model.model_validate(dict(data))
        return command.normalise(request.model_dump(exclude_unset=True))

    def check_limits(self, request: Mapping[str, Any]) -> None:
        """What the request model cannot know: this server's bound on ``max_attempts``
        (a 422 naming the field, like any other value out of range)."""
        attempts = request.get("max_attempts")
        limit = self.settings.max_attempts_limit
        if attempts is not None and attempts > limit:
            error = PydanticCustomError(
                "less_than_equal",
                "Input should be less than or equal to {le} on this server "
                "(LMEVAL_MAX_ATTEMPTS_LIMIT)",
                {"le": limit},
            )
            raise ValidationError.from_exception_data(
                "JobRequest", [{"type": error, "loc": ("max_attempts",), "input": attempts}]
            )

    async def check_notify(self, request: Mapping[str, Any]) -> None:
        """Every webhook URL resolved and judged (no SSRF: policy/webhook_targets.py); a
        refused one is a 422 naming ``notify.<i>.url``. Judged again at each delivery."""
        errors = await notify_errors(request.get("notify") or [], self.settings, ("notify",))
        if errors:
            raise ValidationError.from_exception_data("JobRequest", errors)

    def queue_full(self, waiting: int, count: int = 1) -> bool:
        """Whether ``waiting`` queued jobs and the submissions under way leave no room for
        ``count`` more."""
        return waiting + self._submitting + count > self.settings.max_queued_jobs

    @contextmanager
    def queue_place(self, count: int = 1) -> Iterator[None]:
        """Hold ``count`` places in the bounded queue across the awaits of a submission, so
        that concurrent submissions cannot overshoot LMEVAL_MAX_QUEUED_JOBS."""
        self._submitting += count
        try:
            yield
        finally:
            self._submitting -= count

    async def admit(
        self, request: dict[str, Any], then: Callable[[Admitted], None] | None = None
    ) -> Admitted:
        """The policy's verdict, its work bounded (see admission) and cancelled with the
        request; a bound passed is a refusal naming the field being checked. ``then`` is
        called with the verdict in the same worker thread (a later check's file-system
        work, done without a thread hop of its own)."""

        def judge() -> Admitted:
            verdict = self.policy.admit(request)
            if then is not None:
                then(verdict)
            return verdict

        try:
            return await budget.run_bounded(judge, self.settings.admission_timeout_s)
        except budget.AdmissionExceeded as error:
            raise PolicyViolation(error.field, error.message) from None

    async def admit_many(
        self, requests: list[dict[str, Any]]
    ) -> list[Admitted | PolicyViolation | MissingPath | RequestRejected]:
        """The policy's verdict on each of a sweep's requests, or its refusal: one worker
        thread and one budget for them all (a sweep is one request: its folders are walked
        once, and its checks share the deadline and the entry cap)."""

        def judge_all() -> list[Admitted | PolicyViolation | MissingPath | RequestRejected]:
            verdicts: list[Admitted | PolicyViolation | MissingPath | RequestRejected] = []
            for request in requests:
                try:
                    verdicts.append(self.policy.admit(request))
                except (PolicyViolation, MissingPath, RequestRejected) as refusal:
                    verdicts.append(refusal)
            return verdicts

        try:
            return await budget.run_bounded(judge_all, self.settings.admission_timeout_s)
        except budget.AdmissionExceeded as error:
            raise PolicyViolation(error.field, error.message) from None

    def check_gpus(self, requested: int | None) -> None:
        wanted = self.slots.gpus_for(requested)
        if wanted > len(self.settings.gpus):
            raise RequestRejected(
                "num_gpus",
                f"asks for {wanted} GPUs; this server has {len(self.settings.gpus)} (LMEVAL_GPUS)",
            )

    async def store_job(
        self,
        request: dict[str, Any],
        admitted: Admitted,
        resumed_from: JobRecord | None,
        claim: Callable[[JobRecord], None],
        in_sweep: tuple[int, str] | None = None,
    ) -> JobRecord:
        """Store the job as Queued under a fresh id whose folder does not exist: an id whose
        folder exists (left by an older database) is skipped, never handed out, so no job
        inherits another's files. ``claim`` is called with the record the moment it exists,
        before any checkpoint (whoever stores the batch calls it). ``in_sweep`` (sweep id, cell
        key): a sweep cell run again after its job was deleted.

        Group commit: concurrent submissions wait for the drafting lock together, and
        whoever gets it stores every waiting one in one transaction (one commit, one thread
        hop); each is answered only once its row is committed. A submission cancelled while
        it waits is dropped, unless a batch has taken it: then its outcome is awaited and a
        stored record returned (the caller's next checkpoint raises, and it discards it)."""
        pending = _Pending(request, admitted, resumed_from, claim, in_sweep)
        self._waiting.append(pending)
        try:
            async with self._drafting:
                if not pending.taken:
                    await self._store_waiting()
        except trio.Cancelled:
            if not pending.taken:
                self._waiting.remove(pending)
                raise
            with trio.CancelScope(shield=True):  # bounded: one store call under way
                await pending.done.wait()
            if pending.record is None:
                raise
        return pending.outcome()

    async def _store_waiting(self) -> None:
        """Store every waiting submission in one transaction; if that fails, each alone
        (one bad draft must not refuse the others)."""
        batch, self._waiting = self._waiting, []
        for pending in batch:
            pending.taken = True
        try:
            await self._store_batch(batch)
            if len(batch) > 1 and any(p.error is not None for p in batch):
                for pending in [p for p in batch if p.error is not None]:
                    pending.error = None
                    await self._store_batch([pending])
        finally:
            for pending in batch:
                pending.done.set()

    async def _store_batch(self, batch: list[_Pending]) -> None:
        try:
            records = await self.store.create_drafted(partial(self._drafts, batch), utc_now())
        except Exception as error:
            for pending in batch:
                pending.error = error
            return
        drafted = [p for p in batch if p.error is None]
        for pending, record in zip(drafted, records, strict=True):
            pending.record = record
            pending.claim(record)

    def _drafts(self, batch: list[_Pending], job_id: int) -> list[Draft]:
        """Drafts under consecutive fresh ids from ``job_id`` (the store's thread); one that
        cannot be drafted gets its error and no id."""
        drafts = []
        for pending in batch:
            try:
                draft = self._fresh_draft(job_id, pending)
            except Exception as error:
                pending.error = error
                continue
            drafts.append(draft)
            job_id = (draft.job_id or job_id) + 1
        return drafts

    def _fresh_draft(self, job_id: int, pending: _Pending) -> Draft:
        """The draft for the first id from ``job_id`` whose folder does not exist."""
        for _ in range(MAX_SKIPPED_IDS):
            draft = self._draft(
                job_id,
                pending.request,
                pending.admitted,
                pending.resumed_from,
                in_sweep=pending.in_sweep,
            )
            if not os.path.lexists(draft.job_dir):
                return draft
            log.warning("job id %s skipped: its folder %s already exists", job_id, draft.job_dir)
            job_id += 1
        raise StoreError(f"{MAX_SKIPPED_IDS} new ids in a row name existing job folders")

    async def store_sweep(
        self, sweep: SweepRecord, admitted: list[tuple[SweepCell, Admitted]]
    ) -> tuple[SweepRecord, list[JobRecord]]:
        """Store a sweep and one Queued job per cell in one transaction, under fresh ids
        whose folders do not exist (skipped like ``store_job`` skips them)."""
        async with self._drafting:
            for _ in range(MAX_SKIPPED_IDS):
                drafts = await self._sweep_drafts(admitted, await self.store.next_id())
                try:
                    return await self.store.create_sweep(sweep, drafts, utc_now())
                except IdTaken:  # another writer of the database took one: draft afresh
                    continue
        raise StoreError(f"{MAX_SKIPPED_IDS} attempts to draft a sweep's ids failed")

    async def _sweep_drafts(
        self, admitted: list[tuple[SweepCell, Admitted]], job_id: int
    ) -> list[Draft]:
        """One draft per cell under consecutive fresh ids, skipping ids whose folder exists
        (the folders are looked up in one worker thread, not one per cell)."""
        drafts: list[Draft] = []
        for skipped in range(MAX_SKIPPED_IDS + 1):
            drafts = [
                self._draft(job_id + i, cell.request, verdict, None, cell.key)
                for i, (cell, verdict) in enumerate(admitted)
            ]
            paths = [draft.job_dir for draft in drafts]
            taken = await trio.to_thread.run_sync(_first_existing, paths)
            if taken is None:
                return drafts
            log.warning("job id %s skipped: its folder %s exists", job_id + taken, paths[taken])
            job_id += taken + 1
            if skipped == MAX_SKIPPED_IDS:
                break
        raise StoreError(f"{MAX_SKIPPED_IDS} new ids name existing job folders")

    def _draft(
        self,
        job_id: int,
        request: dict[str, Any],
        admitted: Admitted,
        resumed_from: JobRecord | None,
        sweep_cell: str | None = None,
        *,
        in_sweep: tuple[int, str] | None = None,
    ) -> Draft:
        """The stored request stays as submitted; the argv, environment and output folder
        carry its paths as the policy resolved them, absolute for this job's folder. A
        resumed sweep cell stays in its sweep, under its cell's key."""
        if in_sweep is not None:
            return replace(
                self._draft(job_id, request, admitted, resumed_from),
                sweep_id=in_sweep[0],
                sweep_cell=in_sweep[1],
            )
        job_dir = command.job_dir_for(self.settings.data_dir, job_id)
        built = command.build(admitted.apply(request, job_dir), job_dir, self.launcher)
        return Draft(
            request=request,
            argv=built.argv,
            env=built.env,
            job_dir=job_dir,
            output_dir=built.output_dir,
            resumed_from=None if resumed_from is None else resumed_from.id,
            backend=self.backend,
            job_id=job_id,
            sweep_id=None if resumed_from is None else resumed_from.sweep_id,
            sweep_cell=sweep_cell if resumed_from is None else resumed_from.sweep_cell,
        )

    async def prepare_folder(
        self, record: JobRecord, admitted: Admitted, resumed_from: JobRecord | None
    ) -> None:
        """What the job's folder holds before it is queued: the --config the policy judged,
        and a resumed job's copy of the earlier job's response cache."""
        if admitted.config_bytes is not None:
            await trio.to_thread.run_sync(_write_config, record.job_dir, admitted.config_bytes)
        if resumed_from is not None:
            await trio.to_thread.run_sync(_copy_cache, resumed_from.job_dir, record.job_dir)


@dataclass(eq=False)
class _Pending:
    """A submission waiting to be stored, and what came of it."""

    request: dict[str, Any]
    admitted: Admitted
    resumed_from: JobRecord | None
    claim: Callable[[JobRecord], None]
    in_sweep: tuple[int, str] | None = None
    taken: bool = False  # a batch holds it: its outcome comes, whatever the caller does
    record: JobRecord | None = None
    error: Exception | None = None
    done: trio.Event = field(default_factory=trio.Event)

    def outcome(self) -> JobRecord:
        if self.error is not None:
            raise self.error
        assert self.record is not None
        return self.record


def _first_existing(paths: list[Path]) -> int | None:
    """The index of the first path that exists (even as a dangling link), or None."""
    return next((i for i, path in enumerate(paths) if os.path.lexists(path)), None)


def _write_config(job_dir: Path, content: bytes) -> None:
    """The job reads the --config bytes the policy judged, not the file as it is later."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / CONFIG_COPY).write_bytes(content)


def _copy_cache(old_dir: Path, new_dir: Path) -> None:
    """Copy the earlier job's response cache: regular files and folders only, never
    following a symlink (the earlier job could have planted one to read someone else's)."""
    _copy_tree_nofollow(old_dir / "cache", new_dir / "cache")


def _copy_tree_nofollow(source: Path, target: Path) -> None:
    try:
        info = os.lstat(source)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        return
    target.mkdir(parents=True, exist_ok=True)
    with os.scandir(source) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _copy_tree_nofollow(Path(entry.path), target / entry.name)
            elif entry.is_file(follow_symlinks=False):
                _copy_file_nofollow(Path(entry.path), target / entry.name)


def _copy_file_nofollow(source: Path, target: Path) -> None:
    """Open with O_NOFOLLOW, so a file swapped for a link meanwhile is skipped, not read."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    with open(fd, "rb") as reader, open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer)


async def notify_errors(
    entries: list[Any], settings: Settings, loc: tuple[str | int, ...]
) -> list[Any]:
    """pydantic error entries for the webhook URLs in ``entries`` the server will not send
    to (each URL resolved once, whatever the entries repeat)."""
    exemptions = settings.webhook_exemptions
    verdicts: dict[str, str | None] = {}
    errors: list[Any] = []
    for index, entry in enumerate(entries):
        url = entry.get("url") if isinstance(entry, Mapping) else getattr(entry, "url", None)
        if not isinstance(url, str):
            continue  # not an entry yet: parsing the request names what is wrong with it
        if url not in verdicts:
            try:
                await webhook_targets.resolve(url, exemptions)
                verdicts[url] = None
            except webhook_targets.Unresolvable:
                verdicts[url] = None  # not known to be private: judged at each delivery
            except webhook_targets.TargetRefused as error:
                verdicts[url] = str(error)
        why = verdicts[url]
        if why is not None:
            error_type = PydanticCustomError("webhook_target", "{why}", {"why": why})
            errors.append({"type": error_type, "loc": (*loc, index, "url"), "input": url})
    return errors
