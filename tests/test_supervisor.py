"""The supervisor on its own, in milliseconds: the real Supervisor and a real SQLite store in
tmp_path, jobs played by the scripted fake runner (lmeval_trio/runners/fake.py), trio's
autojump clock, no process anywhere. Each test pins a behaviour the real-process tests show
through the server (test_api, test_jobs_processes, test_durability, test_trust_races,
test_operations): every status transition, stop and delete races, shutdown, recovery at
start, GPU hand-back, the queue bound and resume.

Submissions run with the autojump paused: admission bounds the policy's worker thread with a
deadline on trio's clock, and an autojump clock would jump to it while the thread works.
"""

from __future__ import annotations

import math
import random
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from lmeval_trio.config import Settings
from lmeval_trio.engine.supervisor import (
    StopOutcome,
    Supervisor,
)
from lmeval_trio.errors import JobNotFound, NotAccepting, NotResumable, QueueFull
from lmeval_trio.harness.request_model import RequestRejected
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import TRANSITIONS, InvalidTransition, JobStatus, check_transition
from lmeval_trio.runners.fake import (
    Block,
    Crash,
    Exit,
    FakeRunner,
    Killed,
    Refuse,
    Script,
    Sleep,
    Start,
    Step,
    WaitFor,
    stderr,
    stdout,
)
from lmeval_trio.store import unrecorded
from lmeval_trio.store.sqlite import JobStore, StoreError

JOB: dict[str, Any] = {"model": "dummy", "tasks": "tiny"}
SHUTDOWN_REQUEUED = "interrupted: the server shut down while this job ran; requeued"


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a supervisor whose jobs the fake runner plays (no walls to probe)."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "install_signal_handlers": False,
        "job_confinement": "off",
        "fork_servers": 0,
        "fast_start": False,
        "kill_grace_s": 5.0,
        "progress_flush_s": 0.05,
        "check_tasks": False,  # the task catalog is a child process: test_task_checks.py
    }
    values.update(overrides)
    return Settings.from_env({}, **values)


class Rig:
    """A supervisor, its fake runner and the test's clock."""

    def __init__(self, supervisor: Supervisor, runner: FakeRunner, clock: trio.testing.MockClock):
        self.supervisor = supervisor
        self.runner = runner
        self.clock = clock
        self._admitting = 0

    @contextmanager
    def _real_time(self) -> Iterator[None]:
        """No autojump while a submission's admission thread works (see the module doc)."""
        self._admitting += 1
        self.clock.autojump_threshold = math.inf
        try:
            yield
        finally:
            self._admitting -= 1
            if not self._admitting:
                self.clock.autojump_threshold = 0

    async def submit(self, *steps: Step, stop_grace_s: float = 0.0, **fields: Any) -> JobRecord:
        """Submit a job that will follow ``steps`` (scripted under its coming id)."""
        with self._real_time():
            record = await self.supervisor.submit({**JOB, **fields})
        if steps or stop_grace_s:
            self.runner.script(record.id, *steps, stop_grace_s=stop_grace_s)
        return record

    async def resume(self, job_id: int) -> JobRecord:
        with self._real_time():
            return await self.supervisor.resume(job_id)


@asynccontextmanager
async def rig(
    settings: Settings, clock: trio.testing.MockClock, runner: FakeRunner | None = None
) -> AsyncIterator[Rig]:
    runner = runner if runner is not None else FakeRunner()
    async with Supervisor(settings, runner=runner) as supervisor:
        yield Rig(supervisor, runner, clock)


# Scripts are keyed by job id (ids start at 1 in a fresh store). Rig.submit scripts the job
# as submit returns, before any checkpoint, so before the job can start; tests also script
# jobs ahead by id.


def _ordered(*stamps: str | None) -> bool:
    times = [datetime.fromisoformat(s) for s in stamps if s is not None]
    return len(times) == len(stamps) and times == sorted(times)


# -- the status table -------------------------------------------------------------------


@pytest.mark.parametrize("old", list(JobStatus))
@pytest.mark.parametrize("new", list(JobStatus))
def test_the_table_decides_every_pair(old: JobStatus, new: JobStatus) -> None:
    if new in TRANSITIONS[old]:
        check_transition(1, old, new)
    else:
        with pytest.raises(InvalidTransition, match=f"{old.value} -> {new.value}"):
            check_transition(1, old, new)


async def test_queued_running_completed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(settings_for(tmp_path), autojump_clock) as r:
        r.runner.script(1, stdout("{}\n"), Exit(0))
        record = await r.submit()
        assert record.status is JobStatus.QUEUED and record.started_at is None
        final = await r.supervisor.wait(record.id)
    assert final.status is JobStatus.COMPLETED
    assert (final.exit_code, final.reason, final.attempts) == (0, None, 1)
    assert final.progress_pct == 100  # a completed job reports 100 %, as through the API
    assert final.external_id == "fake-1-1" and final.backend == "fake"  # it names its run
    assert _ordered(final.created_at, final.queued_at, final.started_at, final.finished_at)
    assert final.stdout_path.read_text() == "{}\n"  # the output went through the log pumps
    assert r.runner.last_run(1).argv == tuple(final.argv)


@pytest.mark.parametrize(
    ("ending", "exit_code", "reason"),
    [
        (
            (stderr("Traceback ...\nValueError: fake failure for the test\n"), Exit(3)),
            3,
            "lm-eval exited with code 3: ValueError: fake failure for the test",
        ),
        ((Exit(2),), 2, "lm-eval exited with code 2"),
        ((Killed(signal.SIGKILL),), -9, "lm-eval was killed by signal SIGKILL (-9)"),
        ((Refuse("executable not found: /x/lm_eval"),), None, "could not start: executable"),
    ],
)
async def test_running_failed(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    ending: tuple[Step, ...],
    exit_code: int | None,
    reason: str,
) -> None:
    async with rig(settings_for(tmp_path), autojump_clock) as r:
        r.runner.script(1, *ending)
        final = await r.supervisor.wait((await r.submit()).id)
        after = await r.supervisor.wait((await r.submit()).id)  # the supervisor goes on
    assert final.status is JobStatus.FAILED and final.exit_code == exit_code
    assert final.reason is not None and final.reason.startswith(reason)
    assert _ordered(final.queued_at, final.started_at, final.finished_at)
    assert after.status is JobStatus.COMPLETED


async def test_a_runner_bug_fails_only_its_job(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(settings_for(tmp_path), autojump_clock) as r:
        r.runner.script(1, Start(), Crash(RuntimeError("runner bug")))
        final = await r.supervisor.wait((await r.submit()).id)
        assert r.supervisor.statistics().alive
        after = await r.supervisor.wait((await r.submit()).id)
    assert final.status is JobStatus.FAILED and final.finished_at is not None
    assert final.reason is not None and final.reason.startswith("internal error")
    assert "runner bug" in final.reason
    assert after.status is JobStatus.COMPLETED


async def test_running_stopped(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with rig(settings_for(tmp_path), autojump_clock) as r:
        r.runner.script(1, stdout("working\n"), Block())
        record = await r.submit()
        await r.runner.wait_started(record.id)
        assert (await r.supervisor.get(record.id)).status is JobStatus.RUNNING
        outcome, stopped = await r.supervisor.stop(record.id)
    assert outcome is StopOutcome.STOPPED
    assert stopped.status is JobStatus.STOPPED and stopped.reason == "stopped by request"
    assert stopped.exit_code is None and stopped.attempts == 1
    assert _ordered(stopped.queued_at, stopped.started_at, stopped.finished_at)
    assert r.runner.last_run(record.id).outcome == "cancelled"


async def test_queued_stopped_never_runs(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(settings_for(tmp_path, max_concurrency=1), autojump_clock) as r:
        r.runner.script(1, Block())
        blocker = await r.submit()
        queued = await r.submit()
        await r.runner.wait_started(blocker.id)
        outcome, stopped = await r.supervisor.stop(queued.id)
        assert outcome is StopOutcome.DEQUEUED
        await r.supervisor.stop(blocker.id)
        after = await r.supervisor.wait((await r.submit()).id)  # the slot is free again
    assert stopped.status is JobStatus.STOPPED and stopped.reason == "stopped by request"
    assert stopped.started_at is None and stopped.finished_at is not None
    assert r.runner.runs_of(queued.id) == []
    assert after.status is JobStatus.COMPLETED


async def test_illegal_changes_are_refused(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A finished job cannot be moved on, a stale change loses, and a finished job is neither
    stopped again nor resumed unless it ended Stopped or Failed."""
    settings = settings_for(tmp_path)
    async with rig(settings, autojump_clock) as r:
        done = await r.supervisor.wait((await r.submit()).id)
        outcome, again = await r.supervisor.stop(done.id)
        with pytest.raises(NotResumable, match="only Stopped or Failed"):
            await r.resume(done.id)
    assert outcome is StopOutcome.ALREADY_FINISHED
    assert again == done  # untouched: same status, reason and timestamps
    async with _store(settings) as store:
        with pytest.raises(InvalidTransition):
            await store.transition(done.id, JobStatus.COMPLETED, JobStatus.RUNNING)
        with pytest.raises(StoreError, match="expected Running, found Completed"):
            await store.transition(done.id, JobStatus.RUNNING, JobStatus.FAILED)
        assert await store.get(done.id) == done


# -- stop and delete races --------------------------------------------------------------


async def test_stop_while_starting(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Stopped before its process reported started: it ends Stopped, naming no process."""
    spawning = trio.Event()
    async with rig(settings_for(tmp_path), autojump_clock) as r:
        r.runner.script(1, WaitFor(spawning), Start(), Block())
        record = await r.submit()
        run = await r.runner.wait_entered(record.id)
        outcome, stopped = await r.supervisor.stop(record.id)
    assert outcome is StopOutcome.STOPPED
    assert stopped.status is JobStatus.STOPPED and stopped.reason == "stopped by request"
    assert stopped.external_id is None and stopped.pid is None
    assert run.outcome == "cancelled" and not run.started.is_set()


async def test_stop_twice(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Two stops at once both wait for the one end; a later stop finds it finished."""
    async with rig(settings_for(tmp_path), autojump_clock) as r:
        record = await r.submit(Block(), stop_grace_s=5.0)
        await r.runner.wait_started(record.id)
        results: list[tuple[StopOutcome, JobRecord]] = []

        async def stop() -> None:
            results.append(await r.supervisor.stop(record.id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop)
            nursery.start_soon(stop)
        later, final = await r.supervisor.stop(record.id)
    assert [outcome for outcome, _ in results] == [StopOutcome.STOPPED] * 2
    assert all(rec.status is JobStatus.STOPPED for _, rec in results)
    assert later is StopOutcome.ALREADY_FINISHED and final == results[0][1]
    assert r.runner.statistics().by_outcome == {"cancelled": 1}  # stopped once


async def test_a_stop_waits_out_the_grace(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(settings_for(tmp_path), autojump_clock) as r:
        record = await r.submit(Block(), stop_grace_s=4.0)
        await r.runner.wait_started(record.id)
        before = trio.current_time()
        _, stopped = await r.supervisor.stop(record.id)
        assert trio.current_time() - before >= 4.0
    run = r.runner.last_run(record.id)
    assert run.ended_at is not None and run.stopping_at is not None
    assert run.ended_at - run.stopping_at == pytest.approx(4.0)
    assert stopped.status is JobStatus.STOPPED


async def test_delete_while_stopping(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The folder and record stay while the process is still stopping; then both go."""
    gate = trio.Event()
    async with rig(settings_for(tmp_path), autojump_clock) as r:
        record = await r.submit()
        r.runner.script(record.id, Block(), stop_gate=gate)
        await r.runner.wait_started(record.id)
        stopped: list[object] = []

        async def stop() -> None:
            try:
                stopped.append((await r.supervisor.stop(record.id))[1].status)
            except JobNotFound:  # the delete removed it first: as through the API
                stopped.append("gone")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop)
            await r.runner.wait_stopping(record.id)
            nursery.start_soon(r.supervisor.delete, record.id)
            await trio.testing.wait_all_tasks_blocked()
            assert (await r.supervisor.get(record.id)).status is JobStatus.RUNNING
            assert record.job_dir.is_dir()
            gate.set()
        with pytest.raises(JobNotFound):
            await r.supervisor.get(record.id)
        stats = r.supervisor.statistics()
    assert stopped in ([JobStatus.STOPPED], ["gone"])
    assert not record.job_dir.exists()
    assert (stats.queued, stats.running, stats.slots_free) == (0, 0, stats.slots_total)
    assert r.runner.statistics().by_outcome == {"cancelled": 1}


async def test_delete_twice(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with rig(settings_for(tmp_path), autojump_clock) as r:
        running = await r.submit(Block(), stop_grace_s=2.0)
        await r.runner.wait_started(running.id)
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(r.supervisor.delete, running.id)
        with pytest.raises(JobNotFound):
            await r.supervisor.delete(running.id)  # a 404 through the API
        assert await r.supervisor.list_jobs() == []
    assert not running.job_dir.exists()
    assert r.runner.statistics().by_outcome == {"cancelled": 1}


async def test_delete_a_queued_job(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with rig(settings_for(tmp_path, max_concurrency=1), autojump_clock) as r:
        r.runner.script(1, Block())
        blocker = await r.submit()
        queued = await r.submit()
        await r.runner.wait_started(blocker.id)
        await r.supervisor.delete(queued.id)
        with pytest.raises(JobNotFound):
            await r.supervisor.get(queued.id)
        assert r.supervisor.statistics().queued == 0
        await r.supervisor.stop(blocker.id)
    assert r.runner.runs_of(queued.id) == []


async def test_stop_after_completion(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(settings_for(tmp_path), autojump_clock) as r:
        failed = await r.supervisor.wait((await r.submit(Exit(1))).id)
        outcome, record = await r.supervisor.stop(failed.id)
    assert outcome is StopOutcome.ALREADY_FINISHED and record == failed


async def test_stop_all_stops_running_and_queued(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(settings_for(tmp_path, max_concurrency=2), autojump_clock) as r:
        for job_id in (1, 2):
            r.runner.script(job_id, Block())
        ids = [(await r.submit()).id for _ in range(3)]
        await r.runner.wait_started(2)
        assert sorted(await r.supervisor.stop_all()) == ids
        records = await r.supervisor.list_jobs()
    assert [rec.status for rec in records] == [JobStatus.STOPPED] * 3
    assert [rec.started_at is None for rec in records] == [False, False, True]


# -- shutdown ---------------------------------------------------------------------------


@pytest.mark.parametrize("requeue", [True, False])
async def test_shutdown_with_running_and_queued_jobs(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, requeue: bool
) -> None:
    """A running job goes back to the queue (or fails, with requeue off); a queued one stays
    queued; both are run by the next start, the interrupted one first."""
    settings = settings_for(tmp_path, max_concurrency=1, requeue_interrupted=requeue)
    async with rig(settings, autojump_clock) as r:
        r.runner.script(1, stderr("first attempt\n"), Block(), stop_grace_s=3.0)
        running = await r.submit()
        queued = await r.submit()
        await r.runner.wait_started(running.id)
        shutdown_at = trio.current_time()
    assert trio.current_time() - shutdown_at >= 3.0  # the shutdown waited out the grace
    interrupted = await _stored(settings, running.id)
    waiting = await _stored(settings, queued.id)
    assert r.runner.last_run(running.id).outcome == "cancelled"
    assert waiting.status is JobStatus.QUEUED and waiting.reason is None
    assert r.runner.runs_of(queued.id) == []
    if requeue:
        assert interrupted.status is JobStatus.QUEUED and interrupted.reason == SHUTDOWN_REQUEUED
        assert interrupted.pid is None and interrupted.attempts == 1
    else:
        assert interrupted.status is JobStatus.FAILED
        assert interrupted.reason == "interrupted: the server shut down while this job ran"
    async with rig(settings, autojump_clock) as again:
        finals = [await again.supervisor.wait(job_id) for job_id in (running.id, queued.id)]
    ran = [run.job_id for run in again.runner.runs]
    assert ran == ([running.id, queued.id] if requeue else [queued.id])
    assert finals[1].status is JobStatus.COMPLETED
    if requeue:
        first = finals[0]
        assert first.status is JobStatus.COMPLETED and first.attempts == 2
        assert first.reason is None  # the requeue's reason belonged to the first attempt
        marker = first.stderr_path.read_text().split("\n")[1]
        assert marker.startswith("[lmeval-trio] attempt 2 started at ")
        assert "after: interrupted: the server shut down" in marker


async def test_run_and_shutdown(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Started in the owner's nursery and told to shut down: it stops its job, closes, and
    refuses new work."""
    settings = settings_for(tmp_path)
    runner = FakeRunner()
    runner.script(1, Block(), stop_grace_s=2.0)
    supervisor = Supervisor(settings, runner=runner)
    r = Rig(supervisor, runner, autojump_clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        assert supervisor.statistics().alive
        record = await r.submit()
        await runner.wait_started(record.id)
        supervisor.shutdown()
        with pytest.raises(NotAccepting):
            await r.submit()
        await supervisor.closed.wait()
    assert not supervisor.statistics().alive
    assert runner.last_run(record.id).outcome == "cancelled"
    assert (await _stored(settings, record.id)).reason == SHUTDOWN_REQUEUED


# -- recovery at start ------------------------------------------------------------------


async def _leave_running(settings: Settings, clock: trio.testing.MockClock) -> list[int]:
    """A previous server (one slot) whose runner detached at shutdown, as Ray's does: job 1
    is left Running in the store, job 2 Queued. Returns their ids."""
    assert settings.max_concurrency == 1
    runner = FakeRunner(detach=True)
    runner.script(1, Block())
    async with rig(settings, clock, runner) as r:
        running, queued = await r.submit(), await r.submit()
        await runner.wait_started(running.id)
    assert (await _stored(settings, running.id)).status is JobStatus.RUNNING
    assert (await _stored(settings, queued.id)).status is JobStatus.QUEUED
    return [running.id, queued.id]


async def test_recovery_requeues_what_was_running(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    settings = settings_for(tmp_path, max_concurrency=1)
    running, queued = await _leave_running(settings, autojump_clock)
    runner = FakeRunner()
    gate = trio.Event()
    runner.script(running, WaitFor(gate), Exit(0))
    async with rig(settings, autojump_clock, runner) as r:
        requeued = await r.supervisor.get(running)
        assert requeued.status is JobStatus.QUEUED
        assert requeued.reason == (
            "interrupted: the server stopped while this job ran (pid None); requeued"
        )
        gate.set()
        finals = [await r.supervisor.wait(job_id) for job_id in (running, queued)]
    assert runner.recovered == [running]  # asked to clean up what is left of it
    assert [run.job_id for run in runner.runs] == [running, queued]
    assert [f.status for f in finals] == [JobStatus.COMPLETED] * 2
    assert [f.attempts for f in finals] == [2, 1]


async def test_recovery_fails_what_was_running_when_requeue_is_off(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    settings = settings_for(tmp_path, max_concurrency=1, requeue_interrupted=False)
    running, queued = await _leave_running(settings, autojump_clock)
    async with rig(settings, autojump_clock) as r:
        failed = await r.supervisor.get(running)
        done = await r.supervisor.wait(queued)
    assert failed.status is JobStatus.FAILED and failed.finished_at is not None
    assert failed.reason is not None and failed.reason.startswith("interrupted: the server")
    assert done.status is JobStatus.COMPLETED
    assert [run.job_id for run in r.runner.runs] == [queued]


async def test_recovery_reattaches_a_job_still_running_elsewhere(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    settings = settings_for(tmp_path, max_concurrency=1)
    running, queued = await _leave_running(settings, autojump_clock)
    runner = FakeRunner(alive_elsewhere=frozenset({running}))
    runner.script(running, stdout("still going\n"), Exit(0))
    async with rig(settings, autojump_clock, runner) as r:
        final = await r.supervisor.wait(running)
        await r.supervisor.wait(queued)
    run = runner.last_run(running)
    assert run.reattached and final.status is JobStatus.COMPLETED
    assert final.attempts == 1  # followed, not started again
    assert final.stdout_path.read_text() == "still going\n"


async def test_recovery_records_an_end_the_store_refused(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An end kept beside the logs (the store took no writes then) is recorded at the next
    start; the job is not run again."""
    settings = settings_for(tmp_path, max_concurrency=1)
    running, _ = await _leave_running(settings, autojump_clock)
    job_dir = (await _stored(settings, running)).job_dir
    unrecorded.save(job_dir, JobStatus.FAILED, {"exit_code": 4, "reason": "lm-eval exited"})
    async with rig(settings, autojump_clock) as r:
        record = await r.supervisor.get(running)
    assert (record.status, record.exit_code, record.reason) == (
        JobStatus.FAILED,
        4,
        "lm-eval exited",
    )
    assert r.runner.runs_of(running) == [] and not (job_dir / unrecorded.FILENAME).exists()


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[JobStore]:
    """The supervisor's database, opened on its own (the supervisor that wrote it is gone)."""
    store = JobStore(settings.data_dir / "jobs.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _stored(settings: Settings, job_id: int) -> JobRecord:
    """The record as the store has it."""
    async with _store(settings) as store:
        record = await store.get(job_id)
    assert record is not None
    return record


# -- GPU slots --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ending", ["exit", "killed", "refused", "crash", "stop", "delete"], ids=str
)
async def test_a_job_that_ends_hands_its_gpus_to_the_next(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, ending: str
) -> None:
    settings = settings_for(tmp_path, gpus=("0", "1", "2", "3"), gpus_per_job=2)
    gate = trio.Event()
    async with rig(settings, autojump_clock) as r:
        endings: dict[str, tuple[Step, ...]] = {
            "exit": (WaitFor(gate), Exit(1)),
            "killed": (WaitFor(gate), Killed()),
            "refused": (WaitFor(gate), Refuse()),
            "crash": (Start(), WaitFor(gate), Crash(RuntimeError("bug"))),
            "stop": (Block(),),
            "delete": (Block(),),
        }
        r.runner.script(1, *endings[ending])
        r.runner.script(2, Block())
        r.runner.script(3, Block())
        first, second, third = [await r.submit() for _ in range(3)]
        await r.runner.wait_entered(first.id)
        await r.runner.wait_started(second.id)
        held = [(await r.supervisor.get(job.id)).gpus for job in (first, second)]
        assert held == [["0", "1"], ["2", "3"]]
        assert (await r.supervisor.get(third.id)).status is JobStatus.QUEUED
        if ending == "stop":
            await r.supervisor.stop(first.id)
        elif ending == "delete":
            await r.supervisor.delete(first.id)
        else:
            gate.set()
        run = await r.runner.wait_started(third.id)
        assert (await r.supervisor.get(third.id)).gpus == ["0", "1"]
        assert run.env["CUDA_VISIBLE_DEVICES"] == "0,1"
        await r.supervisor.stop_all()


async def test_gpus_are_granted_in_queue_order(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A big request waits for its GPUs, and a small one behind it does not take the GPU
    that frees meanwhile: it would starve the big one."""
    settings = settings_for(tmp_path, gpus=("0", "1", "2", "3"), gpus_per_job=1)
    big_ends, small_ends = trio.Event(), trio.Event()
    async with rig(settings, autojump_clock) as r:
        r.runner.script(1, WaitFor(big_ends), Exit(0))
        r.runner.script(2, WaitFor(small_ends), Exit(0))
        r.runner.script(3, Block())
        r.runner.script(4, Block())
        big = await r.submit(num_gpus=3)
        small = await r.submit()
        second_big = await r.submit(num_gpus=2)
        behind = await r.submit()
        await r.runner.wait_started(small.id)
        assert (await r.supervisor.get(big.id)).gpus == ["0", "1", "2"]
        assert (await r.supervisor.get(small.id)).gpus == ["3"]
        small_ends.set()  # GPU 3 frees: too few for the second big job, enough for behind
        await r.supervisor.wait(small.id)
        assert (await r.supervisor.get(behind.id)).status is JobStatus.QUEUED
        big_ends.set()  # four free: the second big job takes two, then behind one
        await r.runner.wait_started(second_big.id)
        await r.runner.wait_started(behind.id)
        grants = {job.id: (await r.supervisor.get(job.id)).gpus for job in (second_big, behind)}
        await r.supervisor.stop_all()
    assert grants == {second_big.id: ["0", "1"], behind.id: ["2"]}  # behind never took "3"


async def test_a_request_for_more_gpus_than_exist_is_refused(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    settings = settings_for(tmp_path, gpus=("0", "1"))
    async with rig(settings, autojump_clock) as r:
        with pytest.raises(RequestRejected, match="asks for 3 GPUs"):
            await r.submit(num_gpus=3)
        assert await r.supervisor.list_jobs() == []


# -- the queue bound --------------------------------------------------------------------


async def test_the_queue_bound_counts_waiting_jobs(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    settings = settings_for(tmp_path, max_concurrency=1, max_queued_jobs=2)
    async with rig(settings, autojump_clock) as r:
        r.runner.script(1, Block())
        running = await r.submit()
        await r.runner.wait_started(running.id)  # a running job holds no queue place
        waiting = [await r.submit(), await r.submit()]
        with pytest.raises(QueueFull, match="holds 2 jobs already"):
            await r.submit()
        await r.supervisor.stop(waiting[0].id)
        again = await r.submit()
        assert [rec.id for rec in await r.supervisor.list_jobs([JobStatus.QUEUED])] == [
            waiting[1].id,
            again.id,
        ]
        await r.supervisor.stop_all()


async def test_concurrent_submissions_cannot_overshoot_the_bound(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    settings = settings_for(tmp_path, max_concurrency=0, max_queued_jobs=2)
    async with rig(settings, autojump_clock) as r:
        accepted: list[int] = []
        refused: list[QueueFull] = []

        async def submit() -> None:
            try:
                accepted.append((await r.submit()).id)
            except QueueFull as error:
                refused.append(error)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(submit)
        stats = r.supervisor.statistics()
        listed = [rec.id for rec in await r.supervisor.list_jobs()]
    assert (len(accepted), len(refused)) == (2, 3)
    assert sorted(accepted) == listed and stats.queued == 2


# -- resume -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["stopped", "failed"])
async def test_resume_queues_a_new_job_with_the_cache(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, how: str
) -> None:
    async with rig(settings_for(tmp_path), autojump_clock) as r:
        r.runner.script(1, Block() if how == "stopped" else Exit(1))
        old = await r.submit(limit=5)
        if how == "stopped":
            await r.runner.wait_started(old.id)
            await r.supervisor.stop(old.id)
        ended = await r.supervisor.wait(old.id)
        (ended.job_dir / "cache" / "lm_cache_rank0.db").write_text("cached answers\n")
        resumed = await r.resume(old.id)
        final = await r.supervisor.wait(resumed.id)
    assert resumed.id > old.id and resumed.resumed_from == old.id
    assert resumed.request == ended.request and final.status is JobStatus.COMPLETED
    assert (final.job_dir / "cache" / "lm_cache_rank0.db").read_text() == "cached answers\n"
    assert (await _stored(settings_for(tmp_path), old.id)).status is ended.status  # untouched


@pytest.mark.parametrize("state", ["queued", "running", "completed"])
async def test_only_stopped_or_failed_jobs_resume(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, state: str
) -> None:
    async with rig(settings_for(tmp_path, max_concurrency=1), autojump_clock) as r:
        r.runner.script(1, Block())
        running = await r.submit()
        queued = await r.submit()
        await r.runner.wait_started(running.id)
        target = {"queued": queued.id, "running": running.id}.get(state)
        if target is None:
            await r.supervisor.stop(running.id)
            target = (await r.supervisor.wait(queued.id)).id
        with pytest.raises(NotResumable, match="only Stopped or Failed jobs can be resumed"):
            await r.resume(target)
        with pytest.raises(JobNotFound):
            await r.resume(999)
        assert len(await r.supervisor.list_jobs()) == 2
        await r.supervisor.stop_all()


# -- shutdown races and live progress ---------------------------------------------------


async def _shutdown_while_stopping(
    settings: Settings, clock: trio.testing.MockClock
) -> tuple[JobRecord, list[JobRecord | StoreError]]:
    """A job being stopped by request (it takes its grace) when the supervisor is told to
    shut down: its final record, and what the stop call returned (or raised)."""
    runner = FakeRunner()
    runner.script(1, Block(), stop_grace_s=2.0)
    supervisor = Supervisor(settings, runner=runner)
    r = Rig(supervisor, runner, clock)
    answers: list[JobRecord | StoreError] = []

    async def stop(job_id: int) -> None:
        try:
            answers.append((await supervisor.stop(job_id))[1])
        except StoreError as error:  # see test_a_stop_racing_shutdown_returns_its_record
            answers.append(error)

    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        record = await r.submit()
        await runner.wait_started(record.id)
        nursery.start_soon(stop, record.id)
        await runner.wait_stopping(record.id)
        supervisor.shutdown()
    assert runner.statistics().by_outcome == {"cancelled": 1}
    return await _stored(settings, record.id), answers


async def test_shutdown_during_a_stop_keeps_the_stop(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The first reason wins: a job being stopped by request ends Stopped, not requeued."""
    final, answers = await _shutdown_while_stopping(settings_for(tmp_path), autojump_clock)
    assert final.status is JobStatus.STOPPED and final.reason == "stopped by request"
    assert len(answers) == 1


async def test_a_stop_racing_shutdown_returns_its_record(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    for attempt in range(30):  # the race goes either way: 30 tries make a miss ~1e-6
        final, answers = await _shutdown_while_stopping(
            settings_for(tmp_path / str(attempt)), autojump_clock
        )
        assert answers == [final]


async def test_shutdown_during_a_start_requeues(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A job whose process has not reported started yet is interrupted like a running one."""
    settings = settings_for(tmp_path)
    never = trio.Event()
    async with rig(settings, autojump_clock) as r:
        r.runner.script(1, WaitFor(never), Start(), Block())
        record = await r.submit()
        run = await r.runner.wait_entered(record.id)
    final = await _stored(settings, record.id)
    assert final.status is JobStatus.QUEUED and final.reason == SHUTDOWN_REQUEUED
    assert run.outcome == "cancelled" and not run.started.is_set()


async def test_progress_is_live_and_stored(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """lm-eval's bar on stderr becomes the job's live progress (as test_jobs_processes'
    test_progress_is_live_mid_run shows through the server) and 100 % once completed."""
    gates = [trio.Event() for _ in range(4)]
    steps: list[Step] = [stderr("INFO [evaluator:589] Running loglikelihood requests\n")]
    for n, gate in enumerate(gates):
        steps += [_bar(n, 4), WaitFor(gate)]
    steps += [_bar(4, 4), stderr("\n"), Exit(0)]
    async with rig(settings_for(tmp_path), autojump_clock) as r:
        r.runner.script(1, *steps)
        record = await r.submit()
        for step in range(1, 4):
            gates[step - 1].set()
            progress = await _progress_reaching(r.supervisor, record.id, step * 25)
            assert progress["percent"] == step * 25
        assert (progress["phase"], progress["n"], progress["total"]) == ("loglikelihood", 3, 4)
        gates[3].set()
        final = await r.supervisor.wait(record.id)
    assert final.status is JobStatus.COMPLETED and final.progress_pct == 100


def _bar(n: int, total: int) -> Step:
    """One redraw of the "Requesting API" bar lm-eval's API models draw."""
    return stderr(f"\rRequesting API: {n * 100 // total:3d}%|#| {n}/{total} [00:01<00:02, 2it/s]")


async def _progress_reaching(supervisor: Supervisor, job_id: int, percent: int) -> dict[str, Any]:
    """The job's live progress once it reaches ``percent`` (woken by its change signal)."""
    while True:
        pulse = supervisor.live_changes(job_id)
        assert pulse is not None, "the job ended early"
        version = pulse.version
        progress = supervisor.progress_dict(await supervisor.get(job_id))
        if progress["percent"] >= percent:
            return progress
        await pulse.wait_past(version)


async def test_a_stop_after_the_process_exited_keeps_its_real_end(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(settings_for(tmp_path), autojump_clock) as r:
        r.runner.script(1, stdout("results written\n"), Exit(0))
        record = await r.submit()
        await r.runner.wait_ended(record.id)  # the process has exited with 0
        await r.supervisor.stop(record.id)
        final = await r.supervisor.wait(record.id)
    assert (final.status, final.exit_code) == (JobStatus.COMPLETED, 0), final


# -- races from test_trust_races, and a storm -------------------------------------------


async def test_delete_all_spares_a_job_submitted_during_a_stop(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """delete-all deletes the jobs that existed when it was called: one submitted while it
    waits out another job's stop runs on, with its record and folder."""
    gate = trio.Event()
    async with rig(settings_for(tmp_path, max_concurrency=2), autojump_clock) as r:
        r.runner.script(1, Block(), stop_gate=gate)
        r.runner.script(2, Block())
        r.runner.script(3, Block())
        slow, queued_before = await r.submit(), await r.submit()
        await r.runner.wait_started(queued_before.id)
        deleted: list[int] = []

        async def delete_all() -> None:
            deleted.append(await r.supervisor.delete_all())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(delete_all)
            await r.runner.wait_stopping(slow.id)
            newer = await r.submit()
            await r.runner.wait_started(newer.id)
            gate.set()
        record = await r.supervisor.get(newer.id)
        assert [rec.id for rec in await r.supervisor.list_jobs()] == [newer.id]
        outcome, stopped = await r.supervisor.stop(newer.id)
    assert deleted == [2]
    assert record.status is JobStatus.RUNNING and record.job_dir.is_dir()
    assert not slow.job_dir.exists() and not queued_before.job_dir.exists()
    assert outcome is StopOutcome.STOPPED and stopped.finished_at is not None


async def test_delete_stop_and_delete_all_of_the_same_jobs_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with rig(settings_for(tmp_path, max_concurrency=2), autojump_clock) as r:
        r.runner.script(1, Block(), stop_grace_s=1.0)
        r.runner.script(2, Block())
        ids = [(await r.submit()).id for _ in range(3)]
        await r.runner.wait_started(2)

        async def quietly(op: Any, *args: Any) -> None:
            with suppress(JobNotFound):  # lost the race to another delete, as through the API
                await op(*args)

        async with trio.open_nursery() as nursery:
            for job_id in ids:
                nursery.start_soon(quietly, r.supervisor.delete, job_id)
                nursery.start_soon(quietly, r.supervisor.stop, job_id)
            nursery.start_soon(r.supervisor.delete_all)
        assert await r.supervisor.list_jobs() == []
        stats = r.supervisor.statistics()
    assert (stats.queued, stats.running, stats.slots_free) == (0, 0, 2)
    assert not (settings_for(tmp_path).data_dir / "jobs").exists() or not any(
        (settings_for(tmp_path).data_dir / "jobs").iterdir()
    )
    assert r.runner.statistics().by_outcome == {"cancelled": 2}  # jobs 1 and 2; 3 never ran


async def test_a_storm_leaves_records_runs_and_counters_agreeing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Random submissions (jobs that run a while, fail, hang, or take their grace to stop),
    stops, deletes and delete-alls at once; then every job is stopped. No job ever runs
    twice or after it was stopped, every record agrees with what its run did, and nothing is
    left running, counted or on disk without a record."""
    rng = random.Random(1405)
    settings = settings_for(tmp_path, max_concurrency=3)
    async with rig(settings, autojump_clock) as r:

        async def operation(n: int, delay_s: float, roll: float, script: Script) -> None:
            await trio.sleep(delay_s)
            if roll < 0.6:
                await r.submit(*script.steps, stop_grace_s=script.stop_grace_s)
            elif roll < 0.65 and delay_s < 2.0:  # early, so records are left to check
                await r.supervisor.delete_all()
            else:
                op = r.supervisor.stop if roll < 0.85 else r.supervisor.delete
                with suppress(JobNotFound):
                    await op(n % 30 + 1)

        plan = [(n, rng.random() * 5, rng.random(), _random_script(rng)) for n in range(80)]
        async with trio.open_nursery() as nursery:
            for step in plan:
                nursery.start_soon(operation, *step)
        await r.supervisor.stop_all()
        records = {rec.id: rec for rec in await r.supervisor.list_jobs()}
        stats = r.supervisor.statistics()
    assert (stats.queued, stats.running, stats.slots_free) == (0, 0, 3)
    jobs_dir = settings.data_dir / "jobs"
    folders = {int(p.name) for p in jobs_dir.iterdir()} if jobs_dir.exists() else set()
    assert folders <= records.keys()
    assert all(run.ended.is_set() for run in r.runner.runs)
    for job_id, record in records.items():
        runs = r.runner.runs_of(job_id)
        assert len(runs) <= 1, record
        assert record.status.is_terminal, record
        if not runs:  # stopped before its process was started (before or after Running)
            assert record.status is JobStatus.STOPPED, record
            continue
        run = runs[0]
        if run.outcome == "cancelled":
            assert record.status is JobStatus.STOPPED and record.exit_code is None, (record, run)
        else:
            ended_as = JobStatus.COMPLETED if run.exit_code == 0 else JobStatus.FAILED
            assert (record.status, record.exit_code) == (ended_as, run.exit_code), (record, run)


def _random_script(rng: random.Random) -> Script:
    kind = rng.choice(["quick", "fails", "hangs"])
    grace_s = rng.choice([0.0, 1.0])
    if kind == "hangs":
        return Script((stdout("up\n"), Block()), stop_grace_s=grace_s)
    return Script((Sleep(rng.random() * 3), Exit(0 if kind == "quick" else 1)), grace_s)


# -- the endpoint gate (engine/endpoint_wait.py) -------------------------------------------


class SlowEndpoint:
    """A model server on 127.0.0.1 that holds each request until the test lets it answer."""

    def __init__(self) -> None:
        self.paths: list[bytes] = []
        self.asked = trio.Event()  # a pre-flight request arrived
        self.answer = trio.Event()  # the test lets every held request be answered
        self.answered = trio.Event()  # an answer was sent
        self.port = 0

    async def serve(
        self,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        self.paths.append(head.split(b" ")[1])
        self.asked.set()
        await self.answer.wait()
        body = b'{"data": [{"id": "served-model"}]}'
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        await stream.aclose()
        self.answered.set()

    def job(self) -> dict[str, Any]:
        base_url = f"http://127.0.0.1:{self.port}/v1/completions"
        return {
            "model": "local-completions",
            "model_args": {"model": "served-model", "base_url": base_url},
        }


async def test_a_slow_endpoint_holds_up_no_other_job(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An API job's pre-flight runs beside the dispatcher: the job queued behind it starts
    while the pre-flight still waits for its endpoint (it used to wait up to the timeout)."""
    settings = settings_for(tmp_path, max_concurrency=1, preflight_timeout_s=120.0)
    endpoint = SlowEndpoint()
    async with trio.open_nursery() as nursery, rig(settings, autojump_clock) as r:
        await nursery.start(endpoint.serve)
        slow = await r.submit(**endpoint.job())
        with r._real_time():  # no jump to the pre-flight's timeout while threads work
            await endpoint.asked.wait()
            other = await r.submit()
            await r.runner.wait_started(other.id)
            assert (await r.supervisor.get(slow.id)).status is JobStatus.QUEUED
            assert not endpoint.answer.is_set()  # its pre-flight is still in flight
            endpoint.answer.set()
            final = await r.supervisor.wait(slow.id)
        nursery.cancel_scope.cancel()
    assert final.status is JobStatus.COMPLETED and final.reason is None
    assert endpoint.paths == [b"/v1/models"]  # one pre-flight; no evaluation request


async def test_a_job_cleared_by_its_pre_flight_keeps_its_place(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Pre-flights run while every slot is busy; the job cleared goes first when one frees,
    ahead of the job queued after it."""
    settings = settings_for(tmp_path, max_concurrency=1, preflight_timeout_s=120.0)
    endpoint = SlowEndpoint()
    busy, held = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery, rig(settings, autojump_clock) as r:
        await nursery.start(endpoint.serve)
        running = await r.submit(WaitFor(busy), Exit(0))
        await r.runner.wait_started(running.id)
        with r._real_time():
            api = await r.submit(WaitFor(held), Exit(0), **endpoint.job())
            await endpoint.asked.wait()  # checked while the only slot is busy
            later = await r.submit()
            endpoint.answer.set()
            await endpoint.answered.wait()
            await trio.testing.wait_all_tasks_blocked()  # the answer read: the job is cleared
            busy.set()
            await r.runner.wait_started(api.id)
            assert (await r.supervisor.get(later.id)).status is JobStatus.QUEUED
            held.set()
            assert (await r.supervisor.wait(later.id)).status is JobStatus.COMPLETED
        nursery.cancel_scope.cancel()
