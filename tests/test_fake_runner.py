"""The scripted fake runner (lmeval_trio/runners/fake.py) keeps the Runner contract: it
reports Started once, pumps its output, returns exit codes the way the local runner does,
raises SpawnError for a refused start, and takes a stop only after its grace."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio
import trio.testing

from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.runners import process
from lmeval_trio.runners.base import Runner, Started
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
    WaitFor,
    stderr,
    stdout,
)


def _record(tmp_path: Path, job_id: int = 1) -> JobRecord:
    return JobRecord(
        id=job_id,
        status=JobStatus.RUNNING,
        request={"tasks": "x"},
        argv=["lm_eval", "run", "--tasks=x"],
        env={},
        job_dir=tmp_path,
        output_dir=tmp_path / "output",
        created_at="2026-01-01T00:00:00+00:00",
        queued_at="2026-01-01T00:00:00+00:00",
    )


class Sinks:
    """The supervisor's two log pumps, as lists."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []

    async def stdout(self, data: bytes) -> None:
        self.out.append(data)

    async def stderr(self, data: bytes) -> None:
        self.err.append(data)


async def _run(runner: FakeRunner, record: JobRecord, sinks: Sinks) -> tuple[Started, int]:
    """Run like the supervisor does: started through nursery.start, then the exit code."""
    codes: list[int] = []
    async with trio.open_nursery() as nursery:

        async def job(task_status: trio.TaskStatus[Started]) -> None:
            codes.append(
                await runner.run(
                    record, {"A": "1"}, sinks.stdout, sinks.stderr, task_status=task_status
                )
            )

        started: Started = await nursery.start(job)
    return started, codes[0]


async def _start_stoppable(
    nursery: trio.Nursery, runner: FakeRunner, record: JobRecord
) -> trio.CancelScope:
    """Run the job in a scope of its own, which the test cancels as a stop does."""
    scope = trio.CancelScope()

    async def job() -> None:
        with scope:
            await _run(runner, record, Sinks())

    nursery.start_soon(job)
    await runner.wait_started(record.id)
    return scope


def test_it_is_a_runner() -> None:
    runner: Runner = FakeRunner()  # mypy checks the protocol; the name is the record's backend
    assert runner.name == "fake"


async def test_output_started_and_exit_code(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.script(1, stdout("hello\n"), Start(pid=4242), stderr("ValueError: boom\n"), Exit(3))
    sinks = Sinks()
    started, code = await _run(runner, _record(tmp_path), sinks)
    assert started == Started(pid=4242, external_id="fake-1-1")
    assert code == 3
    assert (sinks.out, sinks.err) == ([b"hello\n"], [b"ValueError: boom\n"])
    run = runner.last_run(1)
    assert (run.outcome, run.exit_code, run.argv) == ("exited", 3, ("lm_eval", "run", "--tasks=x"))
    assert run.env == {"A": "1"} and run.written("stderr") == b"ValueError: boom\n"
    assert run.started.is_set() and run.ended.is_set() and not run.stopping.is_set()


async def test_default_script_starts_and_exits_zero(tmp_path: Path) -> None:
    runner = FakeRunner()
    started, code = await _run(runner, _record(tmp_path, 7), Sinks())
    assert (started.external_id, code) == ("fake-7-1", 0)


async def test_killed_by_a_signal_is_a_negative_code(tmp_path: Path) -> None:
    runner = FakeRunner(Script((Killed(signal.SIGSEGV),)))
    _, code = await _run(runner, _record(tmp_path), Sinks())
    assert code == -signal.SIGSEGV and runner.last_run(1).outcome == "killed"


async def test_a_refused_start_raises_spawn_error_before_started(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.script(1, Refuse("permission denied: /x"))
    with pytest.RaisesGroup(pytest.RaisesExc(process.SpawnError, match="permission denied: /x")):
        await _run(runner, _record(tmp_path), Sinks())
    run = runner.last_run(1)
    assert run.outcome == "refused" and not run.started.is_set() and run.started_as is None


async def test_a_crash_raises_the_error(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.script(1, Crash(RuntimeError("runner bug")))
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="runner bug")):
        await _run(runner, _record(tmp_path), Sinks())
    assert runner.last_run(1).outcome == "crashed"


async def test_a_stop_takes_the_grace(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    runner = FakeRunner()
    runner.script(1, Block(), stop_grace_s=5.0)
    async with trio.open_nursery() as nursery:
        scope = await _start_stoppable(nursery, runner, _record(tmp_path))
        scope.cancel()
    run = runner.last_run(1)
    assert run.outcome == "cancelled" and run.exit_code is None
    assert run.stopping_at is not None and run.ended_at is not None
    assert run.ended_at - run.stopping_at == pytest.approx(5.0)


async def test_a_stop_gate_holds_the_stop(tmp_path: Path) -> None:
    runner = FakeRunner()
    gate = trio.Event()
    runner.script(1, Block(), stop_gate=gate)
    async with trio.open_nursery() as nursery:
        scope = await _start_stoppable(nursery, runner, _record(tmp_path))
        scope.cancel()
        await runner.wait_stopping(1)
        await trio.testing.wait_all_tasks_blocked()
        assert not runner.last_run(1).ended.is_set()  # held until the gate opens
        gate.set()
    assert runner.last_run(1).outcome == "cancelled"


async def test_steps_before_start_are_the_start_up(tmp_path: Path) -> None:
    runner = FakeRunner()
    gate = trio.Event()
    runner.script(1, WaitFor(gate), Start(), Exit(0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run, runner, _record(tmp_path), Sinks())
        run = await runner.wait_entered(1)
        await trio.testing.wait_all_tasks_blocked()
        assert not run.started.is_set()
        gate.set()
    assert run.started.is_set() and run.outcome == "exited"


async def test_sleep_follows_trio_time(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    runner = FakeRunner()
    runner.script(1, Sleep(60.0), Exit(0))
    before = trio.current_time()
    await _run(runner, _record(tmp_path), Sinks())
    assert trio.current_time() - before == pytest.approx(60.0)


async def test_each_run_takes_the_next_script_then_repeats_the_last(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.script(1, Exit(1))
    runner.script(1, Exit(2))
    codes = [(await _run(runner, _record(tmp_path), Sinks()))[1] for _ in range(3)]
    assert codes == [1, 2, 2]
    assert [run.number for run in runner.runs_of(1)] == [1, 2, 3]
    stats = runner.statistics()
    assert (stats.runs, stats.running, stats.ended) == (3, 0, 3)
    assert stats.by_outcome == {"exited": 3}


async def test_detach_recover_and_reattach(tmp_path: Path) -> None:
    runner = FakeRunner(detach=True, alive_elsewhere=frozenset({2}))
    assert runner.detach() is True
    assert await runner.recover(_record(tmp_path, 1)) is False
    assert await runner.recover(_record(tmp_path, 2)) is True
    assert runner.statistics().recovered == (1, 2)
    runner.script(2, stdout("still here\n"), Exit(0))
    sinks = Sinks()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.reattach, _record(tmp_path, 2), sinks.stdout, sinks.stderr)
    run = runner.last_run(2)
    assert run.reattached and run.outcome == "exited" and sinks.out == [b"still here\n"]


async def test_a_detaching_runner_leaves_a_cancelled_job(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    runner = FakeRunner(Script((Block(),), stop_grace_s=5.0), detach=True)
    async with trio.open_nursery() as nursery:
        scope = await _start_stoppable(nursery, runner, _record(tmp_path))
        scope.cancel()
    run = runner.last_run(1)
    assert run.outcome == "detached" and run.ended_at == run.stopping_at  # no grace taken


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ((Exit(0), stdout("late\n")), "must be the last step"),
        ((Start(), Start()), "reports Started once"),
        ((Start(), Refuse()), "cannot have reported Started"),
    ],
)
def test_impossible_scripts_are_refused(steps: tuple[Exit | Start | Refuse], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Script(steps)
