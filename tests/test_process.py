"""lmeval_trio.runners.process against real child processes (tests/support/fake_jobs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from lmeval_trio.runners import process
from lmeval_trio.runners.process import (
    ProcessInfo,
    SpawnError,
    group_alive,
    kill_group,
    process_start_ticks,
    run_process_group,
)

FAKE_JOBS = Path(__file__).parent / "support" / "fake_jobs"
# Child Python block-buffers stdout into a pipe without this; set explicitly, not inherited.
JOB_ENV = {"PYTHONUNBUFFERED": "1"}
GRACE_S = 0.5
HANG_GUARD_S = 60  # real seconds; only there so a bug fails the test instead of hanging it


class Output:
    """A sink that keeps every byte and lets a test wait for lines without sleeping."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._grew = trio.Event()

    async def sink(self, chunk: bytes) -> None:
        self.data += chunk
        self._grew.set()
        self._grew = trio.Event()

    async def lines(self, count: int) -> list[str]:
        while self.data.count(b"\n") < count:
            await self._grew.wait()
        return self.data.decode().splitlines()

    async def pids(self, count: int) -> dict[str, int]:
        """Waits for `count` lines "ROLE PID" (what the fake jobs print) and maps role to pid."""
        return {role: int(pid) for role, pid in (line.split() for line in await self.lines(count))}


def job(
    script: str,
    *args: str,
    stdout: Output | None = None,
    stderr: Output | None = None,
    grace_s: float = GRACE_S,
    env: Mapping[str, str] = JOB_ENV,
    cwd: Path = FAKE_JOBS,
) -> Callable[..., Any]:
    """run_process_group for a fake job, for `await job(...)()` or `nursery.start(job(...))`."""
    return partial(
        run_process_group,
        [sys.executable, str(FAKE_JOBS / script), *args],
        env=env,
        cwd=cwd,
        on_stdout=(stdout or Output()).sink,
        on_stderr=(stderr or Output()).sink,
        grace_s=grace_s,
    )


def running(pid: int) -> bool:
    """os.kill(pid, 0) also succeeds on zombies, and this machine's PID 1 never reaps orphans."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in (b"Z", b"X")


def our_children() -> set[int]:
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except FileNotFoundError:
                continue
            if ppid == os.getpid():
                children.add(int(entry))
    return children


@pytest.fixture
def killpg_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records every os.killpg call (and still sends the signal)."""
    calls: list[tuple[int, int]] = []
    real_killpg = os.killpg

    def spy(pgid: int, sig: int) -> None:
        calls.append((pgid, sig))
        real_killpg(pgid, sig)

    monkeypatch.setattr(os, "killpg", spy)
    return calls


async def test_normal_exit_delivers_output_byte_exact_and_sends_no_signal(
    tmp_path: Path, killpg_calls: list[tuple[int, int]]
) -> None:
    out_bytes, err_bytes = os.urandom(300_000) + b"\r\n\0", os.urandom(70_000) + b"\rtail"
    (tmp_path / "out").write_bytes(out_bytes)
    (tmp_path / "err").write_bytes(err_bytes)
    stdout, stderr = Output(), Output()
    run = job(
        "exit_with.py",
        "0",
        str(tmp_path / "out"),
        str(tmp_path / "err"),
        stdout=stdout,
        stderr=stderr,
    )
    with trio.fail_after(HANG_GUARD_S):
        assert await run() == 0
    assert bytes(stdout.data) == out_bytes
    assert bytes(stderr.data) == err_bytes
    assert killpg_calls == []


async def test_nonzero_exit_code_is_returned() -> None:
    with trio.fail_after(HANG_GUARD_S):
        assert await job("exit_with.py", "3")() == 3


async def test_child_killed_by_signal_gives_negative_code() -> None:
    with trio.fail_after(HANG_GUARD_S):
        assert await job("exit_with.py", str(-signal.SIGUSR1))() == -signal.SIGUSR1


async def test_started_reports_pid_pgid_and_start_ticks() -> None:
    stdout = Output()
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            info: ProcessInfo = await nursery.start(job("stubborn_tree.py", stdout=stdout))
            pids = await stdout.pids(2)
            assert pids["leader"] == info.pid == os.getpgid(info.pid)
            assert os.getpgid(pids["grandchild"]) == info.pid
            ticks = process_start_ticks(info.pid)
            assert info.start_ticks == ticks == process_start_ticks(info.pid)
            assert info.start_ticks > 0
            nursery.cancel_scope.cancel()


async def test_cancel_kills_tree_whose_grandchild_ignores_sigterm() -> None:
    stdout = Output()
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            info: ProcessInfo = await nursery.start(job("stubborn_tree.py", stdout=stdout))
            pids = await stdout.pids(2)
            stopped_at = trio.current_time()
            nursery.cancel_scope.cancel()
    elapsed_s = trio.current_time() - stopped_at
    assert not group_alive(info.pid)
    assert not running(pids["leader"])
    assert not running(pids["grandchild"])
    assert GRACE_S <= elapsed_s < GRACE_S + 1.5


async def test_stop_sends_one_sigterm_and_waits_one_grace_period(tmp_path: Path) -> None:
    """The leader takes most of the grace period to die; the grandchild must not then get a
    second SIGTERM nor a second grace period."""
    grace_s, term_log = 1.0, tmp_path / "term.log"
    stdout = Output()
    run = job(
        "stubborn_tree.py",
        f"--term-log={term_log}",
        "--leader-exit-delay=0.8",
        stdout=stdout,
        grace_s=grace_s,
    )
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            info: ProcessInfo = await nursery.start(run)
            await stdout.pids(2)
            stopped_at = trio.current_time()
            nursery.cancel_scope.cancel()
    elapsed_s = trio.current_time() - stopped_at
    assert not group_alive(info.pid)
    assert term_log.read_text() == "TERM\n"
    assert grace_s <= elapsed_s < grace_s + 0.5  # two grace periods: 1.8 s


async def test_group_left_behind_by_a_normal_exit_is_killed(
    killpg_calls: list[tuple[int, int]],
) -> None:
    stdout = Output()
    started_at = trio.current_time()
    with trio.fail_after(HANG_GUARD_S):
        assert await job("stubborn_tree.py", "--leader-exits", stdout=stdout)() == 0
    assert trio.current_time() - started_at >= GRACE_S  # the grandchild needed SIGKILL
    pids = await stdout.pids(2)
    assert not group_alive(pids["leader"])
    assert not running(pids["grandchild"])
    assert killpg_calls == [(pids["leader"], signal.SIGTERM), (pids["leader"], signal.SIGKILL)]


async def test_cancelled_before_start_spawns_nothing() -> None:
    children_before = our_children()
    with trio.CancelScope() as scope:
        scope.cancel()
        await job("exit_with.py", "0")()
    assert scope.cancelled_caught
    assert our_children() <= children_before


async def test_obedient_tree_stops_at_once_not_after_grace() -> None:
    stdout = Output()
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            info = await nursery.start(
                job("stubborn_tree.py", "--obedient", stdout=stdout, grace_s=30)
            )
            await stdout.pids(2)
            stopped_at = trio.current_time()
            nursery.cancel_scope.cancel()
    assert trio.current_time() - stopped_at < 2
    assert not group_alive(info.pid)


async def test_failing_sink_still_kills_the_group() -> None:
    async def broken_sink(chunk: bytes) -> None:
        raise RuntimeError("disk full")

    run = partial(
        run_process_group,
        [sys.executable, str(FAKE_JOBS / "stubborn_tree.py")],
        env=JOB_ENV,
        cwd=FAKE_JOBS,
        on_stdout=broken_sink,
        on_stderr=Output().sink,
        grace_s=GRACE_S,
    )
    with trio.fail_after(HANG_GUARD_S), pytest.RaisesGroup(RuntimeError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            info: ProcessInfo = await nursery.start(run)
    assert not group_alive(info.pid)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing executable", "executable not found: {tmp}/nope"),
        ("not executable", "permission denied: {tmp}/plain.txt"),
        ("missing cwd", "working directory not found: {tmp}/no-dir"),
        ("cwd is a file", "not a directory: {tmp}/plain.txt"),
        ("no shebang", "cannot start {tmp}/script: Exec format error"),
        ("null byte", "invalid command: embedded null byte"),
    ],
)
async def test_spawn_failure_is_a_single_clear_spawn_error(
    tmp_path: Path, case: str, reason: str
) -> None:
    (tmp_path / "plain.txt").write_text("not a program")
    (tmp_path / "script").write_text("echo no shebang\n")
    (tmp_path / "script").chmod(0o755)
    argv, cwd = {
        "missing executable": ([str(tmp_path / "nope")], tmp_path),
        "not executable": ([str(tmp_path / "plain.txt")], tmp_path),
        "missing cwd": ([sys.executable, "-c", "pass"], tmp_path / "no-dir"),
        "cwd is a file": ([sys.executable, "-c", "pass"], tmp_path / "plain.txt"),
        "no shebang": ([str(tmp_path / "script")], tmp_path),
        "null byte": ([sys.executable, "-c", "pass\0"], tmp_path),
    }[case]
    run = partial(
        run_process_group,
        argv,
        env=JOB_ENV,
        cwd=cwd,
        on_stdout=Output().sink,
        on_stderr=Output().sink,
        grace_s=GRACE_S,
    )
    children_before = our_children()
    with trio.fail_after(HANG_GUARD_S):
        with pytest.raises(SpawnError) as direct:
            await run()
        async with trio.open_nursery() as nursery:
            with pytest.raises(SpawnError) as started:
                await nursery.start(run)
    for error in (direct.value, started.value):
        assert type(error) is SpawnError
        assert str(error) == reason.format(tmp=tmp_path)
    assert our_children() <= children_before


async def test_empty_command_is_a_spawn_error() -> None:
    with pytest.raises(SpawnError, match="empty command"):
        await run_process_group(
            [],
            env=JOB_ENV,
            cwd=FAKE_JOBS,
            on_stdout=Output().sink,
            on_stderr=Output().sink,
            grace_s=GRACE_S,
        )


async def test_200_mb_flood_through_a_counting_sink() -> None:
    megabytes = 200
    stderr_bytes = 0
    stdout = Output()

    async def count(chunk: bytes) -> None:
        nonlocal stderr_bytes
        stderr_bytes += len(chunk)

    run = partial(
        run_process_group,
        [sys.executable, str(FAKE_JOBS / "flood.py"), str(megabytes)],
        env=JOB_ENV,
        cwd=FAKE_JOBS,
        on_stdout=stdout.sink,
        on_stderr=count,
        grace_s=GRACE_S,
    )
    with trio.fail_after(120):
        assert await run() == 0
    assert stderr_bytes == megabytes * 1024 * 1024
    assert stdout.data.decode().splitlines() == [f"done {i}" for i in range(megabytes)]


async def test_env_and_cwd_reach_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMEVAL_TEST_PARENT_ONLY", "1")
    env = {**JOB_ENV, "LMEVAL_TEST_MARKER": "spaces and ✓"}
    stdout = Output()
    with trio.fail_after(HANG_GUARD_S):
        assert await job("print_env.py", stdout=stdout, env=env, cwd=tmp_path)() == 0
    seen = json.loads(stdout.data)
    assert seen["env"].items() >= env.items()
    assert "LMEVAL_TEST_PARENT_ONLY" not in seen["env"]
    assert seen["cwd"] == str(tmp_path)


async def test_pipe_held_by_an_escaped_process_does_not_hang_the_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(process, "_DRAIN_IDLE_S", 0.2)
    stdout = Output()
    with trio.fail_after(HANG_GUARD_S):
        assert await job("escaped_writer.py", stdout=stdout)() == 0
    escaped_pid = int(stdout.data.split()[1])
    try:
        assert running(escaped_pid)  # outside the group, so not ours to kill
    finally:
        os.kill(escaped_pid, signal.SIGKILL)


@pytest.fixture
def foreign_tree() -> Iterator[tuple[subprocess.Popen[bytes], dict[str, int]]]:
    """A stubborn tree started without trio, as a previous server run would have left it."""
    leader = subprocess.Popen(
        [sys.executable, str(FAKE_JOBS / "stubborn_tree.py")],
        env=JOB_ENV,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    with leader:
        assert leader.stdout is not None
        lines = [leader.stdout.readline().decode() for _ in range(2)]
        yield leader, {role: int(pid) for role, pid in (line.split() for line in lines)}
        with suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)  # only if the test failed


@pytest.fixture
def gone_group() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    gone.wait()
    return gone.pid


async def test_kill_group_on_a_group_started_elsewhere(
    foreign_tree: tuple[subprocess.Popen[bytes], dict[str, int]],
) -> None:
    leader, pids = foreign_tree
    assert group_alive(leader.pid)
    started_at = trio.current_time()
    with trio.fail_after(HANG_GUARD_S):
        await kill_group(leader.pid, grace_s=GRACE_S)
    elapsed_s = trio.current_time() - started_at
    assert not group_alive(leader.pid)
    assert not running(pids["grandchild"])
    assert GRACE_S <= elapsed_s < GRACE_S + 1.5
    assert leader.poll() == -signal.SIGTERM


async def test_kill_group_of_a_gone_group_returns_at_once(
    gone_group: int, killpg_calls: list[tuple[int, int]]
) -> None:
    with trio.fail_after(HANG_GUARD_S):
        await kill_group(gone_group, grace_s=30)
    assert not group_alive(gone_group)
    assert killpg_calls == [(gone_group, signal.SIGTERM)]


def test_process_start_ticks_is_stable_and_none_for_a_dead_pid() -> None:
    assert process_start_ticks(os.getpid()) == process_start_ticks(os.getpid()) is not None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert process_start_ticks(dead.pid) is None


@pytest.mark.parametrize("pgid", [0, 1, -5, "own"])
async def test_refuses_pgids_that_would_hit_the_wrong_processes(pgid: int | str) -> None:
    target = os.getpgrp() if pgid == "own" else int(pgid)
    with pytest.raises(ValueError, match="refusing"):
        group_alive(target)
    with pytest.raises(ValueError, match="refusing"):
        await kill_group(target, grace_s=0)
