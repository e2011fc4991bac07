"""The README's first ten minutes, as a newcomer runs them: a fresh copy of the repository,
the README's serve command as written (only the bind address changed, as the README says),
no LMEVAL_* variable, real lm-eval jobs to Completed, and the README's first job verbatim.

The commands are read from README.md itself, so editing them there changes what is tested.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from lmeval_trio.runners import process
from tests.test_server_process import _free_port

ROOT = Path(__file__).parent.parent
SERVE_APP = " lmeval_trio.asgi:app"


def readme_bash_blocks() -> list[list[str]]:
    """Every ```bash block of README.md, as its lines."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [block.strip().splitlines() for block in re.findall(r"```bash\n(.*?)```", text, re.S)]


def readme_serve_command(port: int) -> str:
    """The README's first command with only the bind address changed, as its Launch says."""
    command = readme_bash_blocks()[0][0]
    assert command.count(SERVE_APP) == 1, command
    return command.replace(SERVE_APP, f" --bind 127.0.0.1:{port}{SERVE_APP}")


def readme_first_job() -> str:
    """The one command right after the two at the README's top."""
    block = readme_bash_blocks()[1]
    assert len(block) == 1, block
    return block[0]


def newcomer_environment(**extra: str) -> dict[str, str]:
    """A shell outside this test's virtualenv, with no server setting at all; uv stays offline
    (the packages come from its cache, as after any earlier install on the machine)."""
    venv_bins = {str(ROOT / ".venv" / "bin"), os.path.dirname(sys.executable)}
    if "VIRTUAL_ENV" in os.environ:
        venv_bins.add(os.path.join(os.environ["VIRTUAL_ENV"], "bin"))
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p not in venv_bins]
    skip = ("LMEVAL_", "UV_", "VIRTUAL_ENV", "PYTEST_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env.update(PATH=os.pathsep.join(path), UV_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The repository's tracked files in a new folder: no .venv, no data, nothing built."""
    clone = tmp_path_factory.mktemp("fresh") / "lmeval-trio"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.split(b"\0")
    for name in filter(None, (os.fsdecode(n) for n in tracked)):
        source = ROOT / name
        if source.is_file():
            target = clone / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)
    yield clone


@dataclass
class Served:
    url: str
    log: list[bytes]


@asynccontextmanager
async def readme_server(clone: Path) -> AsyncIterator[Served]:
    """Run the README's serve command in ``clone`` until "Running on"; SIGTERM at the end."""
    port = _free_port()
    log: list[bytes] = []
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                ["bash", "-c", readme_serve_command(port)],
                cwd=clone,
                env=newcomer_environment(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
                start_new_session=True,
            )
        )
        assert proc.stderr is not None
        await _wait_for(proc.stderr, log, b"Running on")
        nursery.start_soon(_collect, proc.stderr, log)
        try:
            yield Served(f"http://127.0.0.1:{port}", log)
        finally:
            with trio.CancelScope(shield=True):
                os.killpg(proc.pid, signal.SIGTERM)
                with trio.move_on_after(40):
                    await proc.wait()
                await process.kill_group(proc.pid, grace_s=1)
        text = b"".join(log).decode(errors="replace")
        # A graceful end: the supervisor's last word. (Whether bash exec'ed the last command
        # of its && list, and so what the group's leader exits with, depends on its version.)
        assert "shutdown: done" in text and proc.returncode in (0, 128 + 15, -15), text[-3000:]


async def _wait_for(stream: trio.abc.ReceiveStream, log: list[bytes], marker: bytes) -> None:
    with trio.fail_after(180):  # a first start installs the runtime environment from uv's cache
        while marker not in b"".join(log):
            chunk = await stream.receive_some()
            assert chunk, b"".join(log).decode(errors="replace")
            log.append(bytes(chunk))


async def _collect(stream: trio.abc.ReceiveStream, log: list[bytes]) -> None:
    while chunk := await stream.receive_some():
        log.append(bytes(chunk))


async def _wait_until_done(client: httpx.AsyncClient, job_id: int) -> dict[str, object]:
    with trio.fail_after(300):
        async with client.stream("GET", f"/job/{job_id}/events") as events:
            async for _line in events.aiter_lines():
                pass
    job: dict[str, object] = (await client.get(f"/job/{job_id}")).json()
    return job


async def test_readme_serve_command_runs_real_jobs(fresh_clone: Path) -> None:
    async with (
        readme_server(fresh_clone) as served,
        httpx.AsyncClient(base_url=served.url, timeout=30) as client,
    ):
        config = (await client.get("/config")).json()
        assert config["data_dir"] == str(fresh_clone / "lmeval-data")
        job = {
            "model": "dummy",
            "tasks": "example_arith",
            "include_path": str(fresh_clone / "examples" / "tasks"),
        }
        response = await client.post("/job", json=job)
        assert response.status_code == 200, response.text
        job_id = response.json()["job_id"]
        final = await _wait_until_done(client, job_id)
        assert final["status"] == "Completed", final
        results = (await client.get(f"/job/{job_id}/results")).json()
        assert {row["task"] for row in results["metrics"]} == {"example_arith"}
        assert Path(results["file"]).is_relative_to(fresh_clone / "lmeval-data" / "jobs")
        artifacts = (await client.get(f"/job/{job_id}/artifacts")).json()
        urls = [item["url"] for item in artifacts["artifacts"]]
        result_urls = [u for u in urls if Path(u).name.startswith("results_")]
        assert result_urls, urls
        download = await client.get(result_urls[0])
        assert download.status_code == 200 and download.json()["results"]["example_arith"]
    assert b"Traceback" not in b"".join(served.log)


async def test_readme_first_job_verbatim(fresh_clone: Path) -> None:
    async with readme_server(fresh_clone) as served:
        result = await trio.run_process(
            ["bash", "-c", readme_first_job()],
            cwd=fresh_clone,
            env=newcomer_environment(LMEVAL_URL=served.url),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        output = result.stdout.decode()
        assert result.returncode == 0, output + result.stderr.decode()[-3000:]
        assert "example_arith" in output and "acc" in output, output
