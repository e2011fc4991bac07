"""The shipped launch path as a real subprocess: hypercorn + hypercorn.toml + lmeval_trio.asgi.

Signals to the worker, the parent or the whole group shut down gracefully with no job process
left behind; a kill -9 loses nothing: after a restart the records are back, the old job's
process tree is gone, and interrupted and queued jobs run to the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config

from lmeval_trio.runners import process
from tests.conftest import CACHE_DIR, FAKE_LM_EVAL, SUPPORT, fake_job

ROOT = Path(__file__).parent.parent
HYPERCORN = Path(sys.executable).parent / "hypercorn"
_LOG_KEEP_BYTES = 256 * 1024


LAUNCH_FORMS = ("lmeval_trio.asgi:app", "lmeval_trio.asgi:create_app()")  # lazy, factory


def test_shipped_toml_uses_the_trio_worker() -> None:
    config = Config.from_toml(ROOT / "hypercorn.toml")
    assert config.worker_class == "trio"
    assert config.bind == ["0.0.0.0:8080"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    proc: trio.Process
    url: str
    worker_pid: int
    #: The server's stderr so far (its log, the last ``_LOG_KEEP_BYTES``): for failure messages.
    log: bytearray = field(default_factory=bytearray)

    def log_tail(self, max_chars: int = 6000) -> str:
        return self.log.decode(errors="replace")[-max_chars:]


def _environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMEVAL_")}
    env.update(
        LMEVAL_DATA_DIR=str(data_dir),
        LMEVAL_ALLOWED_LM_EVAL_PATHS=str(FAKE_LM_EVAL),
        LMEVAL_ALLOWED_PATH_ROOTS=str(SUPPORT),
        LMEVAL_KILL_GRACE_S="2",
        LMEVAL_CACHE_DIR=str(CACHE_DIR),
    )
    env.update(extra)  # the test's own settings win
    return env


@asynccontextmanager
async def hypercorn_server(
    data_dir: Path, app: str = LAUNCH_FORMS[0], **env: str
) -> AsyncIterator[ServerProcess]:
    """Run the README's launch command (with --bind) and wait for "Running on"."""
    port = _free_port()
    argv = [
        str(HYPERCORN),
        "--config",
        "hypercorn.toml",
        "--bind",
        f"127.0.0.1:{port}",
        app,
    ]
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                argv,
                cwd=ROOT,
                env=_environment(data_dir, **env),
                stderr=-1,
                stdout=-3,
                check=False,
                start_new_session=True,
            )
        )
        assert proc.stderr is not None
        worker_pid = await _wait_until_serving(proc.stderr)
        server = ServerProcess(proc, f"http://127.0.0.1:{port}", worker_pid)
        nursery.start_soon(_drain, proc.stderr, server.log)
        try:
            yield server
        finally:
            if proc.returncode is None:
                with trio.CancelScope(shield=True):
                    proc.send_signal(signal.SIGKILL)
                    await process.kill_group(proc.pid, grace_s=1)


async def _wait_until_serving(stderr: trio.abc.ReceiveStream) -> int:
    buffer = b""
    with trio.fail_after(60):
        while b"Running on" not in buffer:
            chunk = await stderr.receive_some()
            assert chunk, buffer.decode(errors="replace")
            buffer += chunk
    found = re.search(rb"\[(\d+)\] \[INFO\] Running on", buffer)
    assert found is not None
    return int(found.group(1))


async def _drain(stream: trio.abc.ReceiveStream, kept: bytearray) -> None:
    """Read the server's log to its end (so it never blocks on a full pipe), keeping its tail."""
    while chunk := await stream.receive_some():
        kept += chunk
        del kept[:-_LOG_KEEP_BYTES]


async def _submit(client: httpx.AsyncClient, body: dict[str, Any]) -> int:
    response = await client.post("/job", json=body)
    assert response.status_code == 200, response.text
    job_id: int = response.json()["job_id"]
    return job_id


async def _wait_for_pids(
    client: httpx.AsyncClient, job_id: int, server: ServerProcess | None = None
) -> list[int]:
    """The job's process ids, read from its stdout (the fake prints them). If they do not
    come, the job's record and the server's log say why (a CI failure once gave neither)."""
    pids: dict[str, int] = {}
    with trio.move_on_after(60):
        async with client.stream("GET", f"/job/{job_id}/events") as stream:
            async for line in stream.aiter_lines():
                for role, pid in re.findall(r"(leader|grandchild) (\d+)", line):
                    pids[role] = int(pid)
                if len(pids) == 2:
                    return [pids["leader"], pids["grandchild"]]
    job = (await client.get(f"/job/{job_id}")).json()
    log = server.log_tail() if server is not None else "(not kept)"
    raise AssertionError(f"job {job_id} printed no pids ({pids}); record: {job}\nlog: {log}")


def _gone(pids: list[int]) -> bool:
    return all(process.process_start_ticks(p) is None or _zombie(p) for p in pids)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


SIGNAL_TARGETS = [
    ("worker", signal.SIGTERM),
    ("parent", signal.SIGTERM),
    ("group", signal.SIGTERM),
    ("parent", signal.SIGINT),
]


@pytest.mark.parametrize(("target", "signum"), SIGNAL_TARGETS)
async def test_signals_shut_down_gracefully(
    tmp_path: Path, target: str, signum: signal.Signals
) -> None:
    async with hypercorn_server(tmp_path / "data") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            job_id = await _submit(client, fake_job("tree"))
            pids = await _wait_for_pids(client, job_id, server)
        if target == "worker":
            os.kill(server.worker_pid, signum)
        elif target == "parent":
            os.kill(server.proc.pid, signum)
        else:
            os.killpg(server.proc.pid, signum)
        with trio.fail_after(30):
            returncode = await server.proc.wait()
        assert returncode == 0
        assert _gone(pids), "a job process outlived the server"
    # The interrupted job is queued again, with the reason, for the next start.
    async with hypercorn_server(tmp_path / "data", MAX_CONCURRENCY="0") as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            job = (await client.get(f"/job/{job_id}")).json()
        assert job["status"] == "Queued"
        assert job["reason"].startswith("interrupted: the server shut down")
        server.proc.send_signal(signal.SIGTERM)
        await server.proc.wait()


@pytest.mark.parametrize("app", LAUNCH_FORMS)
async def test_both_launch_forms_serve_the_same_app(tmp_path: Path, app: str) -> None:
    """The lazy ``app`` and the ``create_app()`` factory: the app serves, runs a job to its
    end, and a SIGTERM stops it gracefully."""
    async with hypercorn_server(tmp_path / "data", app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            health = await client.get("/healthz")
            assert health.status_code == 200 and health.json()["supervisor"] == "alive"
            assert (await client.get("/readyz")).status_code == 200
            job_id = await _submit(client, fake_job("env"))
            await _wait_all_finished(client, [job_id])
            assert (await client.get(f"/job/{job_id}")).json()["status"] == "Completed"
        server.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await server.proc.wait() == 0


@pytest.mark.parametrize("app", LAUNCH_FORMS)
def test_both_launch_forms_refuse_an_invalid_setting_alike(tmp_path: Path, app: str) -> None:
    """One line naming the variable, exit code 2, nothing started (hypercorn without a
    separate worker process, so that its exit code is the app's)."""
    env = _environment(tmp_path / "data", LMEVAL_API_KEYS=" , ")
    argv = [str(HYPERCORN), "--config", "hypercorn.toml", "--workers", "0", "--bind"]
    done = subprocess.run(
        [*argv, "127.0.0.1:0", app],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "lmeval-trio: invalid settings: LMEVAL_API_KEYS is set but holds no key; unset it to"
        " run an open server\n"
    )
    assert not (tmp_path / "data").exists()


def test_importing_the_asgi_module_builds_nothing() -> None:
    """With settings that would stop a start: the import reads none of them, derives no
    request model and builds no app."""
    probe = (
        "import lmeval_trio.asgi as asgi\n"
        "from lmeval_trio.harness import request_model as cli_schema\n"
        "assert asgi.app.built is None\n"
        "assert cli_schema.request_model.cache_info().currsize == 0\n"
        "import sys; assert 'lm_eval' not in sys.modules, 'lm-eval imported'\n"
    )
    env = {**os.environ, "LMEVAL_API_KEYS": " , ", "LMEVAL_DATA_DIR": "relative/nowhere"}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


async def test_repeated_sigterms_shut_down_once_and_promptly(tmp_path: Path) -> None:
    """A SIGTERM to the whole group, then more to the worker (an impatient operator resends):
    the worker never signals the parent while it handles its own (hypercorn's parent handler
    deadlocks on a re-entrant SIGTERM), acts on the first one only, and the server ends
    gracefully with its job stopped. Repeated SIGTERMs sent to hypercorn's parent itself can
    still hit that deadlock in hypercorn; nothing in the worker can prevent it (README)."""
    async with hypercorn_server(tmp_path / "data") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            job_id = await _submit(client, fake_job("tree"))
            pids = await _wait_for_pids(client, job_id, server)
        os.killpg(server.proc.pid, signal.SIGTERM)
        for resend in (server.worker_pid,) * 6:
            with contextlib.suppress(ProcessLookupError):
                os.kill(resend, signal.SIGTERM)
            await trio.lowlevel.checkpoint()
        with trio.fail_after(30):
            returncode = await server.proc.wait()
        assert returncode == 0
        assert _gone(pids), "a job process outlived the server"


@pytest.mark.parametrize(("mode", "end"), [("daemon", "Completed"), ("daemon_block", "Stopped")])
async def test_a_daemonised_child_ends_with_its_job(tmp_path: Path, mode: str, end: str) -> None:
    """A job's program double-forks a setsid daemon (out of the job's process group): once
    the job has ended, or been stopped, the daemon is gone too."""
    async with hypercorn_server(tmp_path / "data") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            job_id = await _submit(client, fake_job(mode))
            daemon = await _daemon_pid(client, job_id)
            if end == "Stopped":
                assert not _gone([daemon])  # running, outside the job's process group
                response = await client.post(f"/job/{job_id}/stop")
                assert response.status_code == 200, response.text
            await _wait_all_finished(client, [job_id])
            job = (await client.get(f"/job/{job_id}")).json()
            assert job["status"] == end, job
            assert _gone([daemon]), "the daemon outlived its job"
            beats = [p.read_text() for p in (tmp_path / "data").rglob("heartbeat")]
            assert beats and beats[0].startswith(f"{daemon}\n"), beats  # it did run
        server.proc.send_signal(signal.SIGTERM)
        await server.proc.wait()


async def _daemon_pid(client: httpx.AsyncClient, job_id: int) -> int:
    with trio.fail_after(30):
        async with client.stream("GET", f"/job/{job_id}/events") as stream:
            async for line in stream.aiter_lines():
                found = re.search(r"daemon (\d+)", line)
                if found:
                    return int(found.group(1))
    raise AssertionError("the job never named its daemon")


async def test_kill_9_loses_nothing(tmp_path: Path) -> None:
    # The marker lives in the job's own folder (relative paths start there), which a
    # requeued job keeps; a path elsewhere would have to lie under an allowed root.
    async with hypercorn_server(tmp_path / "data", MAX_CONCURRENCY="1") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            first = await _submit(client, fake_job("tree_once", FAKE_MARKER="./ran-once"))
            pids = await _wait_for_pids(client, first, server)
            queued = [await _submit(client, fake_job("env")) for _ in range(3)]
            before = (await client.get("/jobs")).json()["jobs"]
        os.killpg(server.proc.pid, signal.SIGKILL)  # the server, not the job's own group
        await server.proc.wait()
        assert not _gone(pids), "the job should have outlived the crash"
    async with hypercorn_server(tmp_path / "data", MAX_CONCURRENCY="1") as server:
        assert _gone(pids), "the restarted server must kill the orphaned job tree"
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            await _wait_all_finished(client, [first, *queued])
            after = (await client.get("/jobs")).json()["jobs"]
            assert [j["job_id"] for j in after] == [j["job_id"] for j in before]
            for key in ("argument", "created_at", "request"):
                assert [j[key] for j in after] == [j[key] for j in before]
            first_job = (await client.get(f"/job/{first}")).json()
            assert first_job["status"] == "Completed"
            assert first_job["attempts"] == 2
            assert "second run\n" in first_job["stdout"]
            starts = [j["started_at"] for j in after]
            assert starts[1:] == sorted(starts[1:])  # queued jobs ran in their order
            new = await _submit(client, fake_job("env"))
            assert new > max(j["job_id"] for j in after)
        server.proc.send_signal(signal.SIGTERM)
        await server.proc.wait()


async def _wait_all_finished(client: httpx.AsyncClient, ids: list[int]) -> None:
    with trio.fail_after(60):
        for job_id in ids:
            async with client.stream("GET", f"/job/{job_id}/events") as stream:
                await stream.aread()  # the stream ends when the job does
