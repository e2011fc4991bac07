"""A scripted runner: jobs that do exactly what a test says, with no process anywhere.

Like dramatiq's stub broker, this is a real implementation of the :class:`Runner` protocol,
made for tests (and for embedders who want to exercise their code against a supervisor) that
must run in milliseconds and decide every interleaving themselves. Each job follows a
:class:`Script` of steps: write to stdout or stderr, wait on a ``trio.Event`` or for a
duration, report :class:`Started`, then end with an exit code, a signal, a refusal to start
(``process.SpawnError``) or a crash. A script also says how the job takes a stop: at once, or
only after a grace (a child that ignores SIGTERM until SIGKILL). Every run is recorded as a
:class:`FakeRun` with trio events a test can wait on (entered, started, stopping, ended)::

    runner = FakeRunner()
    gate = trio.Event()
    runner.script(1, stderr("loading\\n"), WaitFor(gate), Exit(3))
    async with Supervisor(settings, runner=runner) as supervisor:
        await supervisor.submit({"model": "dummy", "tasks": "x"})  # job 1
        await runner.wait_started(1)
        gate.set()
        final = await supervisor.wait(1)  # Failed, exit code 3

Scripts are looked up by job id when a job starts; a job without one runs ``default``
(report Started, exit 0). A job that runs again (requeued, re-attached) takes its next
script, or repeats its last one.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import trio

from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.runners import process
from lmeval_trio.runners.base import Started
from lmeval_trio.runners.process import Sink

Stream = Literal["stdout", "stderr"]
Outcome = Literal["exited", "killed", "refused", "crashed", "cancelled", "detached"]


@dataclass(frozen=True)
class Output:
    """Write ``data`` to the job's stdout or stderr (the supervisor's log pumps get it)."""

    stream: Stream
    data: bytes


def stdout(text: str) -> Output:
    """A write to stdout (text, UTF-8 encoded)."""
    return Output("stdout", text.encode())


def stderr(text: str) -> Output:
    """A write to stderr, where lm-eval writes its progress bars and tracebacks."""
    return Output("stderr", text.encode())


@dataclass(frozen=True)
class Start:
    """Report the job started (a real runner does so once its process exists). Without this
    step the job reports Started before its first step; steps before it are its start-up."""

    pid: int | None = None
    external_id: str | None = None  # default: "fake-<job id>-<run number>"


@dataclass(frozen=True)
class WaitFor:
    """Wait until the test sets ``event``."""

    event: trio.Event


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds`` on trio's clock (instant under a test's autojump clock)."""

    seconds: float


@dataclass(frozen=True)
class Block:
    """Run until stopped (a job that never ends by itself)."""


@dataclass(frozen=True)
class Exit:
    """End with this exit code; the last step."""

    code: int = 0


@dataclass(frozen=True)
class Killed:
    """End killed by ``signal`` (exit code ``-signal``, as a real runner reports it)."""

    signal: signal.Signals = signal.SIGKILL


@dataclass(frozen=True)
class Refuse:
    """Fail to start: raise ``process.SpawnError(reason)``; must come before Start."""

    reason: str = "executable not found: /fake/lm_eval"


@dataclass(frozen=True)
class Crash:
    """Raise ``error`` from the runner itself: a runner bug, which must cost only this job."""

    error: Exception


Step = Output | Start | WaitFor | Sleep | Block | Exit | Killed | Refuse | Crash
_ENDS = (Exit, Killed, Refuse, Crash)


@dataclass(frozen=True)
class Script:
    """What one run of a job does, step by step, and how it takes a stop.

    ``stop_grace_s``: a cancelled run keeps going this long before it returns (the real
    runner's SIGTERM-ignoring child, killed after the grace); ``stop_gate``: instead, it
    returns only once the test sets this event."""

    steps: tuple[Step, ...] = ()
    stop_grace_s: float = 0.0
    stop_gate: trio.Event | None = None

    def __post_init__(self) -> None:
        _check_steps(self.steps)


def _check_steps(steps: tuple[Step, ...]) -> None:
    """Refuse scripts no real runner could follow, so a test cannot assert the impossible."""
    ends = [i for i, step in enumerate(steps) if isinstance(step, _ENDS)]
    if ends and ends[0] != len(steps) - 1:
        raise ValueError("an Exit, Killed, Refuse or Crash step must be the last step")
    starts = [i for i, step in enumerate(steps) if isinstance(step, Start)]
    if len(starts) > 1:
        raise ValueError("a job reports Started once")
    refused = bool(steps) and isinstance(steps[-1], Refuse)
    if refused and starts:
        raise ValueError("a job that refuses to start cannot have reported Started")


@dataclass(eq=False)
class FakeRun:
    """What one run of a job did; its events let a test wait for each stage."""

    job_id: int
    number: int  # 1 for the job's first run, 2 for its second, ...
    argv: tuple[str, ...]
    env: dict[str, str]
    reattached: bool
    entered_at: float
    started: trio.Event = field(default_factory=trio.Event)
    stopping: trio.Event = field(default_factory=trio.Event)  # its cancellation arrived
    ended: trio.Event = field(default_factory=trio.Event)
    started_as: Started | None = None
    started_at: float | None = None
    stopping_at: float | None = None
    ended_at: float | None = None
    outcome: Outcome | None = None
    exit_code: int | None = None
    output: list[Output] = field(default_factory=list)

    def written(self, stream: Stream) -> bytes:
        """Everything this run wrote to ``stream``."""
        return b"".join(o.data for o in self.output if o.stream == stream)


@dataclass(frozen=True)
class FakeRunnerStatistics:
    """Counts over every run so far (trio-style ``statistics()``)."""

    runs: int
    running: int  # entered and not ended
    ended: int
    by_outcome: Mapping[str, int]
    recovered: tuple[int, ...]  # job ids recover() was asked about, in order


class FakeRunner:
    """A :class:`~lmeval_trio.runners.local.Runner` that plays scripts; see the module docstring.

    ``detach``: what ``detach()`` answers at shutdown (True: jobs are left "running", as a
    Ray runner leaves them). ``alive_elsewhere``: ids of jobs ``recover()`` reports still
    running, which the supervisor then re-attaches to (``reattach`` plays their next script).
    """

    def __init__(
        self,
        default: Script | None = None,
        *,
        name: str = "fake",
        detach: bool = False,
        alive_elsewhere: frozenset[int] = frozenset(),
    ) -> None:
        self.name = name
        self.default = default or Script()
        self.detaching = detach
        self.alive_elsewhere = set(alive_elsewhere)
        self.runs: list[FakeRun] = []
        self.recovered: list[int] = []
        self._scripts: dict[int, list[Script]] = {}
        self._changed = trio.Event()

    # -- scripting and introspection ------------------------------------------------------

    def script(
        self,
        job_id: int,
        *steps: Step,
        stop_grace_s: float = 0.0,
        stop_gate: trio.Event | None = None,
    ) -> Script:
        """Add the script of ``job_id``'s next run (call again for later runs)."""
        script = Script(steps, stop_grace_s, stop_gate)
        self._scripts.setdefault(job_id, []).append(script)
        return script

    def runs_of(self, job_id: int) -> list[FakeRun]:
        return [run for run in self.runs if run.job_id == job_id]

    def last_run(self, job_id: int) -> FakeRun:
        """The newest run of ``job_id`` (KeyError if it never ran)."""
        runs = self.runs_of(job_id)
        if not runs:
            raise KeyError(f"job {job_id} never ran")
        return runs[-1]

    async def wait_entered(self, job_id: int) -> FakeRun:
        """Until a run of ``job_id`` exists (the supervisor called run or reattach)."""
        return await self._until(lambda: self._newest(job_id))

    async def wait_started(self, job_id: int) -> FakeRun:
        run = await self.wait_entered(job_id)
        await run.started.wait()
        return run

    async def wait_stopping(self, job_id: int) -> FakeRun:
        run = await self.wait_entered(job_id)
        await run.stopping.wait()
        return run

    async def wait_ended(self, job_id: int) -> FakeRun:
        run = await self.wait_entered(job_id)
        await run.ended.wait()
        return run

    def statistics(self) -> FakeRunnerStatistics:
        outcomes: dict[str, int] = {}
        for run in self.runs:
            if run.outcome is not None:
                outcomes[run.outcome] = outcomes.get(run.outcome, 0) + 1
        ended = sum(1 for run in self.runs if run.ended.is_set())
        return FakeRunnerStatistics(
            runs=len(self.runs),
            running=len(self.runs) - ended,
            ended=ended,
            by_outcome=outcomes,
            recovered=tuple(self.recovered),
        )

    # -- the Runner protocol --------------------------------------------------------------

    async def run(
        self,
        record: JobRecord,
        env: Mapping[str, str],
        on_stdout: Sink,
        on_stderr: Sink,
        *,
        task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED,
    ) -> int:
        run = self._enter(record, dict(env), reattached=False)
        return await self._play(
            run, self._next_script(record.id), on_stdout, on_stderr, task_status
        )

    async def reattach(
        self,
        record: JobRecord,
        on_stdout: Sink,
        on_stderr: Sink,
        *,
        task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED,
    ) -> int:
        run = self._enter(record, {}, reattached=True)
        return await self._play(
            run, self._next_script(record.id), on_stdout, on_stderr, task_status
        )

    async def recover(self, record: JobRecord) -> bool:
        await trio.lowlevel.checkpoint()
        self.recovered.append(record.id)
        return record.id in self.alive_elsewhere

    def detach(self) -> bool:
        return self.detaching

    # -- playing a script -----------------------------------------------------------------

    def _enter(self, record: JobRecord, env: dict[str, str], *, reattached: bool) -> FakeRun:
        run = FakeRun(
            job_id=record.id,
            number=len(self.runs_of(record.id)) + 1,
            argv=tuple(record.argv),
            env=env,
            reattached=reattached,
            entered_at=trio.current_time(),
        )
        self.runs.append(run)
        self._fire()
        return run

    def _next_script(self, job_id: int) -> Script:
        scripts = self._scripts.get(job_id)
        if not scripts:
            return self.default
        return scripts.pop(0) if len(scripts) > 1 else scripts[0]

    async def _play(
        self,
        run: FakeRun,
        script: Script,
        on_stdout: Sink,
        on_stderr: Sink,
        task_status: trio.TaskStatus[Started],
    ) -> int:
        sinks: dict[Stream, Sink] = {"stdout": on_stdout, "stderr": on_stderr}
        try:
            code = await self._steps(run, script.steps, sinks, task_status)
        except trio.Cancelled:
            await self._take_stop(run, script)
            raise
        except process.SpawnError:
            self._end(run, "refused", None)
            raise
        except BaseException:
            self._end(run, "crashed", None)
            raise
        self._end(run, "killed" if code < 0 else "exited", code)
        return code

    async def _steps(
        self,
        run: FakeRun,
        steps: tuple[Step, ...],
        sinks: Mapping[Stream, Sink],
        task_status: trio.TaskStatus[Started],
    ) -> int:
        if not any(isinstance(step, (Start, Refuse)) for step in steps):
            self._report_started(run, Start(), task_status)
        for step in steps:
            if isinstance(step, Start):
                self._report_started(run, step, task_status)
            elif isinstance(step, Output):
                run.output.append(step)
                await sinks[step.stream](step.data)
            elif isinstance(step, _ENDS):
                return self._ending(step)
            else:
                await _wait(step)
        await trio.lowlevel.checkpoint()
        return 0

    def _report_started(
        self, run: FakeRun, step: Start, task_status: trio.TaskStatus[Started]
    ) -> None:
        external_id = step.external_id or f"fake-{run.job_id}-{run.number}"
        run.started_as = Started(pid=step.pid, external_id=external_id)
        run.started_at = trio.current_time()
        task_status.started(run.started_as)
        run.started.set()
        self._fire()

    @staticmethod
    def _ending(step: Exit | Killed | Refuse | Crash) -> int:
        if isinstance(step, Exit):
            return step.code
        if isinstance(step, Killed):
            return -int(step.signal)
        if isinstance(step, Refuse):
            raise process.SpawnError(step.reason)
        raise step.error

    async def _take_stop(self, run: FakeRun, script: Script) -> None:
        """Cancelled: a detaching runner leaves the job be; else it stops, after its grace."""
        run.stopping_at = trio.current_time()
        run.stopping.set()
        self._fire()
        if not self.detaching:
            with trio.CancelScope(shield=True):
                if script.stop_gate is not None:
                    await script.stop_gate.wait()
                elif script.stop_grace_s > 0:
                    await trio.sleep(script.stop_grace_s)
        self._end(run, "detached" if self.detaching else "cancelled", None)

    def _end(self, run: FakeRun, outcome: Outcome, exit_code: int | None) -> None:
        run.outcome = outcome
        run.exit_code = exit_code
        run.ended_at = trio.current_time()
        run.ended.set()
        self._fire()

    # -- waiting --------------------------------------------------------------------------

    def _newest(self, job_id: int) -> FakeRun | None:
        runs = self.runs_of(job_id)
        return runs[-1] if runs else None

    def _fire(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _until(self, find: Callable[[], FakeRun | None]) -> FakeRun:
        while True:
            changed = self._changed
            found = find()
            if found is not None:
                return found
            await changed.wait()


async def _wait(step: WaitFor | Sleep | Block) -> None:
    if isinstance(step, WaitFor):
        await step.event.wait()
    elif isinstance(step, Sleep):
        await trio.sleep(step.seconds)
    else:
        await trio.sleep(math.inf)


__all__ = [
    "Block",
    "Crash",
    "Exit",
    "FakeRun",
    "FakeRunner",
    "FakeRunnerStatistics",
    "Killed",
    "Output",
    "Refuse",
    "Script",
    "Sleep",
    "Start",
    "Step",
    "WaitFor",
    "stderr",
    "stdout",
]
