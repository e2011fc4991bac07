"""Where a request's paths point: one truth, resolved where the job uses them.

Attacks: relative paths with the server's working directory elsewhere, ``..`` climbs into the
data dir, symlinks into it from an operator root, the cache of a future job, symlinks planted
in a job's own folder, path-valued environment values, paths that do not exist.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from posixpath import normpath
from typing import Any

import httpx
import pytest
import trio

from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.runners import process
from tests.conftest import (
    DUMMY_JOB,
    FAKE_LM_EVAL,
    SUPPORT,
    TASKS_DIR,
    fake_job,
    make_settings,
    serving,
)
from tests.test_server_process import HYPERCORN, ROOT, _drain, _environment, _free_port
from tests.test_server_process import _wait_until_serving as wait_until_serving

DATA_DIR_RULE = "server's own files"


async def refused(client: httpx.AsyncClient, body: dict[str, Any], field: str) -> str:
    response = await client.post("/job", json=body)
    assert response.status_code == 403, (body, response.text)
    data = response.json()
    assert data["field"] == field, data
    rule: str = data["rule"]
    return rule


async def missing(client: httpx.AsyncClient, body: dict[str, Any], field: str) -> str:
    response = await client.post("/job", json=body)
    assert response.status_code == 422, (body, response.text)
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", field] and error["type"] == "missing_path", error
    message: str = error["msg"]
    return message


def printed(job: dict[str, Any]) -> dict[str, Any]:
    """What the fake lm_eval saw: its argv, environment and working directory."""
    data: dict[str, Any] = json.loads("".join(job["stdout"]))
    return data


def flag(argv: list[str], name: str) -> str:
    return next(word.split("=", 1)[1] for word in argv if word.startswith(f"--{name}="))


# -- the server's working directory does not matter --------------------------------------


@asynccontextmanager
async def server_in(cwd: Path, data_dir: Path) -> AsyncIterator[str]:
    """The README's launch command, started in ``cwd`` (with --bind and an absolute config)."""
    port = _free_port()
    argv = [str(HYPERCORN), "--config", str(ROOT / "hypercorn.toml")]
    argv += ["--bind", f"127.0.0.1:{port}", "lmeval_trio.asgi:app"]
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                argv,
                cwd=cwd,
                env=_environment(data_dir, LMEVAL_FORK_SERVERS="0"),
                stderr=-1,
                stdout=-3,
                check=False,
                start_new_session=True,
            )
        )
        assert proc.stderr is not None
        await wait_until_serving(proc.stderr)
        nursery.start_soon(_drain, proc.stderr, bytearray())
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            with trio.CancelScope(shield=True):
                proc.send_signal(signal.SIGKILL)
                await process.kill_group(proc.pid, grace_s=1)


async def finished(client: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
    """Follow the job's event stream to its end, then read it."""
    with trio.fail_after(60):
        async with client.stream("GET", f"/job/{job_id}/events?logs=false") as stream:
            async for line in stream.aiter_lines():
                if line == "event: end":
                    break
    data: dict[str, Any] = (await client.get(f"/job/{job_id}")).json()
    return data


async def test_server_started_in_root_never_serves_its_own_cwd(tmp_path: Path) -> None:
    """Started in /, ``output_path: "etc"`` is the job's etc, and "." is the job's folder."""
    async with (
        server_in(Path("/"), tmp_path / "data") as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        for output_path in ("etc", ".", "./etc/../etc"):
            body = {**fake_job("env"), "output_path": output_path}
            response = await client.post("/job", json=body)
            assert response.status_code == 200, response.text
            job_id = response.json()["job_id"]
            job = await finished(client, job_id)
            assert job["status"] == "Completed", job
            job_dir = tmp_path / "data" / "jobs" / str(job_id)
            seen = printed(job)
            assert flag(seen["argv"], "output_path") == normpath(job_dir / output_path)
            assert seen["cwd"] == str(job_dir)
            listing = (await client.get(f"/job/{job_id}/artifacts")).json()["artifacts"]
            names = {a["name"] for a in listing}
            assert names <= {"stdout.log", "stderr.log"}, names
            for name in ("output-path/passwd", "output-path/shadow", "passwd", "../../../etc"):
                answer = await client.get(f"/job/{job_id}/artifacts/{name}")
                assert answer.status_code == 404, (name, answer.text)


async def test_relative_output_path_is_read_back_from_the_job_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real lm-eval job writes where the argv says, and results come from there, whatever
    the server's working directory (here a folder holding a decoy results file)."""
    decoy = tmp_path / "cwd" / "rel" / "dummy"
    decoy.mkdir(parents=True)
    (decoy / "results_2999-01-01T00-00-00.json").write_text('{"results": {"decoy": {}}}')
    monkeypatch.chdir(tmp_path / "cwd")
    async with serving(make_settings(tmp_path)) as server:
        job_id = await server.submit({**DUMMY_JOB, "output_path": "rel"})
        job = await server.wait_status(job_id, JobStatus.COMPLETED, JobStatus.FAILED)
        assert job["status"] == "Completed", job["reason"]
        results = (await server.client.get(f"/job/{job_id}/results")).json()
        assert results["file"].startswith(str(tmp_path / "data" / "jobs" / str(job_id) / "rel"))
        assert "tiny_mc" in results["results"]["results"]


# -- the data directory is nobody's root ---------------------------------------------------


def data_dir_attacks(data: Path, link: Path) -> list[tuple[dict[str, Any], str]]:
    """Ways to name the server's files; ``link`` is a symlink into the data dir from a root."""
    return [
        ({"output_path": str(data)}, "output_path"),
        ({"output_path": str(data / "jobs" / "1")}, "output_path"),
        ({"output_path": "../1/output"}, "output_path"),  # a sibling job's folder
        ({"output_path": "../.."}, "output_path"),  # the data dir itself
        ({"use_cache": "../../jobs.db"}, "use_cache"),
        ({"use_cache": str(link / "jobs.db")}, "use_cache"),
        ({"include_path": str(link)}, "include_path"),
        ({"config": str(data / "jobs.db")}, "config"),
        ({"samples": str(data / "jobs.db")}, "samples"),
        ({"tasks": str(link / "jobs" / "1" / "x.yaml")}, "tasks"),
        ({"tasks": "../../cache/*.yaml"}, "tasks"),
        ({"env_vars": {"HF_HOME": str(data / "cache")}}, "env_vars.HF_HOME"),
        ({"env_vars": {"TMPDIR": "../1"}}, "env_vars.TMPDIR"),
        ({"env_vars": {"XDG_CACHE_HOME": str(link)}}, "env_vars.XDG_CACHE_HOME"),
        ({"env_vars": {"MY_FILES": f"{link.parent}/ok:{data}"}}, "env_vars.MY_FILES"),  # a list
        ({"env_vars": {"DB_URL": f"file://{data}/jobs.db"}}, "env_vars.DB_URL"),
    ]


async def test_the_data_dir_is_never_a_target(tmp_path: Path) -> None:
    """Not even when an operator root contains it (make_settings: tmp_path is a root)."""
    settings = make_settings(tmp_path, max_concurrency=0)
    data = settings.data_dir
    link = tmp_path / "into-data"
    link.symlink_to(data, target_is_directory=True)
    async with serving(settings) as server:
        await server.submit(fake_job("env"))  # job 1 exists, its folder to come
        for body, field in data_dir_attacks(data, link):
            rule = await refused(server.client, {**DUMMY_JOB, **body}, field)
            assert DATA_DIR_RULE in rule, (body, rule)


async def test_a_future_jobs_cache_cannot_be_named(tmp_path: Path) -> None:
    """Ids are sequential: the next job's cache is guessable; naming it is refused, so no
    request can pre-fill another job's answers."""
    async with serving(make_settings(tmp_path, max_concurrency=0)) as server:
        last = await server.submit(fake_job("env"))
        data = tmp_path / "data"
        for later in (last + 1, last + 2):
            for path in (
                str(data / "jobs" / str(later) / "cache" / "lm_cache"),
                f"../{later}/cache/lm_cache",
                f"cache/../../{later}/cache/lm_cache",
            ):
                rule = await refused(server.client, {**DUMMY_JOB, "use_cache": path}, "use_cache")
                assert DATA_DIR_RULE in rule
        # Its own folder (relative) and an operator root are fine.
        for path in ("my-cache/lm", str(tmp_path / "shared-cache" / "lm")):
            response = await server.client.post("/job", json={**DUMMY_JOB, "use_cache": path})
            assert response.status_code == 200, response.text


async def test_path_like_env_values_obey_the_rule(tmp_path: Path) -> None:
    async with serving(make_settings(tmp_path, max_concurrency=0)) as server:
        for value in ("/etc", "~/.ssh", "a:/etc", "file:///etc/passwd", "x/../../../../../etc"):
            body = {**DUMMY_JOB, "env_vars": {"SOME_DIR": value}}
            assert "allowed root" in await refused(server.client, body, "env_vars.SOME_DIR")
        for value in ("org/model-name", "http://127.0.0.1:1/v1", "plain", str(TASKS_DIR)):
            body = {**DUMMY_JOB, "env_vars": {"SOME_VALUE": value}}
            response = await server.client.post("/job", json=body)
            assert response.status_code == 200, (value, response.text)
        # A credential is no path, even when it starts with a slash (base64 may).
        body = {**DUMMY_JOB, "env_vars": {"AWS_SECRET_ACCESS_KEY": "/k3y+abc/def"}}
        assert (await server.client.post("/job", json=body)).status_code == 200


async def test_credential_variables_that_name_files_obey_the_rule(tmp_path: Path) -> None:
    """A credential's name does not exempt a path: a key file variable, or a token variable
    whose value names an existing thing, is judged; a real token still is not."""
    data = tmp_path / "data"
    async with serving(make_settings(tmp_path, max_concurrency=0)) as server:
        (data / "jobs" / "1").mkdir(parents=True, exist_ok=True)
        attacks = {
            "GOOGLE_APPLICATION_CREDENTIALS": str(data / "jobs.db"),
            "AWS_SHARED_CREDENTIALS_FILE": "../../jobs.db",
            "SSL_KEY_FILE": str(data / "jobs" / "1"),
            "HF_TOKEN": str(data / "jobs.db"),
            "OPENAI_API_KEY": "/etc/passwd",
        }
        for name, value in attacks.items():
            body = {**DUMMY_JOB, "env_vars": {name: value}}
            rule = await refused(server.client, body, f"env_vars.{name}")
            assert DATA_DIR_RULE in rule or "allowed root" in rule, (name, rule)
        for name, value in {"HF_TOKEN": "/hf_k3y+abc/def==", "SSL_KEY_FILE": "key.pem"}.items():
            body = {**DUMMY_JOB, "env_vars": {name: value}}
            response = await server.client.post("/job", json=body)
            assert response.status_code == 200, (name, response.text)


# -- what the child sees is what was judged -------------------------------------------------


async def test_argv_and_env_carry_the_resolved_paths(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "real-hf").mkdir(parents=True)
    (shared / "hf").symlink_to(shared / "real-hf", target_is_directory=True)
    async with serving(make_settings(tmp_path)) as server:
        body = {
            **fake_job("env", HF_HOME=str(shared / "hf"), TMPDIR="tmp"),
            "output_path": "out/../results",
            "use_cache": str(shared / "hf" / "lm"),
            "include_path": str(TASKS_DIR / ".." / "tasks"),
        }
        job_id = await server.submit(body)
        job = await server.wait_status(job_id, JobStatus.COMPLETED)
        seen = printed(job)
        job_dir = tmp_path / "data" / "jobs" / str(job_id)
        assert flag(seen["argv"], "output_path") == str(job_dir / "results")
        assert flag(seen["argv"], "use_cache") == str(shared / "real-hf" / "lm")
        assert flag(seen["argv"], "include_path") == str(TASKS_DIR)
        assert seen["env"]["HF_HOME"] == str(shared / "real-hf")
        assert seen["env"]["TMPDIR"] == str(job_dir / "tmp")
        assert job["request"]["output_path"] == "out/../results"  # stored as submitted


async def test_reads_never_follow_links_planted_in_the_job_folder(tmp_path: Path) -> None:
    """A job writes its own folder, so it can plant links there; the server's later reads
    (results, artifacts) must not follow them out."""
    secret = tmp_path / "secret.json"
    secret.write_text('{"results": {"stolen": {"acc,none": 1}}}')
    async with serving(make_settings(tmp_path)) as server:
        job_id = await server.submit({**fake_job("env"), "output_path": "out"})
        await server.wait_status(job_id, JobStatus.COMPLETED)
        job_dir = tmp_path / "data" / "jobs" / str(job_id)
        (job_dir / "out" / "dummy").mkdir(parents=True)
        (job_dir / "out" / "dummy" / "results_2999.json").symlink_to(secret)
        (job_dir / "linked").symlink_to(tmp_path, target_is_directory=True)
        assert (await server.client.get(f"/job/{job_id}/results")).status_code == 404
        names = {
            a["name"]
            for a in (await server.client.get(f"/job/{job_id}/artifacts")).json()["artifacts"]
        }
        assert names == {"stdout.log", "stderr.log"}, names
        # The output folder itself swapped for a link.
        os.rename(job_dir / "out", job_dir / "out-real")
        (job_dir / "out").symlink_to(job_dir / "out-real", target_is_directory=True)
        (job_dir / "out-real" / "dummy" / "results_2999.json").unlink()
        (job_dir / "out-real" / "dummy" / "results_2999.json").write_text(secret.read_text())
        assert (await server.client.get(f"/job/{job_id}/results")).status_code == 404


# -- paths that do not exist -----------------------------------------------------------------


async def test_missing_read_paths_are_422_naming_the_field(tmp_path: Path) -> None:
    async with serving(make_settings(tmp_path, max_concurrency=0)) as server:
        gone = tmp_path / "gone"
        cases = [
            ({"include_path": str(gone)}, "include_path"),
            ({"include_path": "tasks"}, "include_path"),  # the job's own folder is new
            ({"config": str(gone / "c.yaml")}, "config"),
            ({"samples": str(gone / "s.json")}, "samples"),
            ({"tasks": str(gone / "t.yaml")}, "tasks"),
            ({"tasks": str(SUPPORT / "nothing-*.yaml")}, "tasks"),
        ]
        for body, field in cases:
            message = await missing(server.client, {**DUMMY_JOB, **body}, field)
            assert "does not exist" in message or "matches no file" in message


# -- resume ----------------------------------------------------------------------------------


async def test_resume_copies_the_cache_without_following_links(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("private")
    async with serving(make_settings(tmp_path)) as server:
        body = {**fake_job("exit"), "env_vars": {"FAKE_MODE": "exit", "FAKE_CODE": "3"}}
        first = await server.submit(body)
        await server.wait_status(first, JobStatus.FAILED)
        cache = tmp_path / "data" / "jobs" / str(first) / "cache"
        (cache / "real_rank0.db").write_bytes(b"answers")
        (cache / "sub").mkdir()
        (cache / "sub" / "more.db").write_bytes(b"more")
        (cache / "lm_cache_rank0.db").symlink_to(secret / "key.txt")
        (cache / "linked-dir").symlink_to(secret, target_is_directory=True)
        response = await server.client.post(f"/job/{first}/resume")
        assert response.status_code == 200, response.text
        second = response.json()["job_id"]
        copied = tmp_path / "data" / "jobs" / str(second) / "cache"
        found = {str(p.relative_to(copied)) for p in copied.rglob("*")}
        assert found == {"real_rank0.db", "sub", "sub/more.db"}, found
        assert (copied / "real_rank0.db").read_bytes() == b"answers"
        assert not any(p.is_symlink() for p in copied.rglob("*"))
        assert str(FAKE_LM_EVAL)  # the resumed job runs the same allowed executable


async def test_links_planted_where_the_job_will_write_are_refused(tmp_path: Path) -> None:
    """lm-eval opens ``<use_cache>_rank0.db`` and writes into ``<output_path>/<model>/``: a
    symlink planted at either in a shared root would lead the job's writes elsewhere."""
    shared = tmp_path / "shared"
    shared.mkdir()
    settings = make_settings(tmp_path, max_concurrency=0)
    (shared / "c_rank0.db").symlink_to(settings.data_dir / "jobs.db")
    (shared / "d_rank3.db").symlink_to(settings.data_dir / "jobs.db")
    (shared / "out" / "dummy").mkdir(parents=True)
    (shared / "out" / "dummy" / "results.json").symlink_to(settings.data_dir / "jobs.db")
    async with serving(settings) as server:
        for prefix in ("c", "d"):
            body = {**DUMMY_JOB, "use_cache": str(shared / prefix)}
            assert DATA_DIR_RULE in await refused(server.client, body, "use_cache")
        body = {**DUMMY_JOB, "output_path": str(shared / "out")}
        assert DATA_DIR_RULE in await refused(server.client, body, "output_path")
        body = {**DUMMY_JOB, "use_cache": str(shared / "e"), "output_path": str(shared / "o")}
        assert (await server.client.post("/job", json=body)).status_code == 200


async def test_downloads_racing_a_job_swapping_links_never_leak(tmp_path: Path) -> None:
    """A running job swaps out.txt for a symlink to the store's neighbour and its folder d/
    for one to another folder, in a loop: every listing and download is 200 or 404 (never
    a 500) and never carries the foreign bytes."""
    victim = tmp_path / "data" / "victim"
    victim.mkdir(parents=True)
    (victim / "f.txt").write_text("SECRET of another job")
    (victim / "victim-only.txt").write_text("SECRET, listed nowhere")
    (tmp_path / "data" / "jobs.db-victim").write_text("SECRET in the data dir")
    env = {"FAKE_TARGET": "jobs.db-victim", "FAKE_TARGET_DIR": "victim"}
    async with serving(make_settings(tmp_path)) as server:
        job_id = await server.submit(fake_job("swap", **env))
        await server.wait_status(job_id, JobStatus.RUNNING)
        served = set()
        for _ in range(150):
            listing = await server.client.get(f"/job/{job_id}/artifacts")
            assert listing.status_code == 200, listing.text
            assert "victim-only" not in listing.text
            for name in ("out.txt", "d/f.txt"):
                response = await server.client.get(f"/job/{job_id}/artifacts/{name}")
                assert response.status_code in (200, 404), response.text
                assert b"SECRET" not in response.content
                if response.status_code == 200:
                    served.add(name)
        assert served, "the race never let the job's own files through"
        await server.client.post(f"/job/{job_id}/stop")


async def test_results_racing_a_swapped_output_folder_never_leak(tmp_path: Path) -> None:
    """The output folder's parent swapped for a symlink between the server's walk and its
    open (here by the test, the job having ended): the results never come from elsewhere."""
    secret_dir = tmp_path / "elsewhere" / "dummy"
    secret_dir.mkdir(parents=True)
    (secret_dir / "results_2999.json").write_text('{"results": {"SECRET": {"acc,none": 1}}}')
    async with serving(make_settings(tmp_path)) as server:
        job_id = await server.submit({**fake_job("env"), "output_path": "out"})
        await server.wait_status(job_id, JobStatus.COMPLETED)
        own = tmp_path / "data" / "jobs" / str(job_id) / "out"
        (own / "dummy").mkdir(parents=True)
        (own / "dummy" / "results_2999.json").write_text('{"results": {"own": {"acc,none": 0}}}')
        done = trio.Event()

        def swap() -> None:
            while not done.is_set():
                os.rename(own / "dummy", own / "dummy.real")
                (own / "dummy").symlink_to(secret_dir, target_is_directory=True)
                (own / "dummy").unlink()
                os.rename(own / "dummy.real", own / "dummy")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, swap)
            for _ in range(150):
                response = await server.client.get(f"/job/{job_id}/results")
                assert response.status_code in (200, 404), response.text
                assert "SECRET" not in response.text
            done.set()
