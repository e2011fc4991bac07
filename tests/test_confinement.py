"""Confined jobs (README "Security"): from inside real jobs, what they can and cannot reach.

Two kinds of job code try to escape: a program allowed as ``lm_eval_path`` and a task whose
dataset loader (``!function`` in an ``include_path`` folder) runs Python. Both try to read the
store and another job's folder, to write next to them, into the server's caches, the Python
environment and /tmp, and to look into the server through /proc; all of that must fail, while the
job's own folder, its TMPDIR and the operator's roots work. Real lm-eval jobs give the same
results confined and unconfined.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import trio

from lmeval_trio.config import Settings, SettingsError
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.runners import process
from lmeval_trio.runners.confinement import Walls, abi_version
from lmeval_trio.runners.environment import local_environment
from lmeval_trio.runners.fork_server import ForkServers
from lmeval_trio.runners.job_command import Launcher
from lmeval_trio.runners.job_walls import JobWalls
from tests.conftest import (
    DUMMY_JOB,
    FAKE_LM_EVAL,
    SUPPORT,
    TASKS_DIR,
    Server,
    fake_job,
    make_settings,
    serving,
    supervisor_of,
)
from tests.support.stub_openai import StubHandle
from tests.test_real_lm_eval import completions_job

pytestmark = pytest.mark.skipif(abi_version() < 1, reason="this kernel offers no Landlock")

ESCAPE_DIR = SUPPORT / "escape"
ESCAPE_LM_EVAL = ESCAPE_DIR / "escape_lm_eval.py"
#: What a job's own code must reach, and what it must not.
ALLOWED = ("write:own_folder", "write:operator_root", "read:operator_root")
DENIED = (
    "read:store",
    "read:other_job_log",
    "list:other_job",
    "list:data_dir",
    "write:other_job",
    "write:data_dir",
    "write:jobs_dir",
    "write:index_cache",
    "write:site_packages",
    "write:tmp",
    "list:server_cwd",
)


def confined_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """An operator root beside the data dir (a root holding the data dir is never granted)."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (root / "shared.txt").write_text("the operator's file")
    values: dict[str, Any] = {
        "allowed_path_roots": (SUPPORT, root),
        "allowed_lm_eval_paths": (str(FAKE_LM_EVAL), str(ESCAPE_LM_EVAL)),
        **overrides,
    }
    return make_settings(tmp_path, **values)


async def finished(server: Server, body: dict[str, Any]) -> JobRecord:
    job_id = await server.submit(body)
    job = await server.wait_status(job_id)
    assert job["status"] == "Completed", job
    return await supervisor_of(server).get(job_id)


def escape_targets(settings: Settings, other_dir: Path, other_log: Path) -> dict[str, str]:
    """What to try: ``other_dir`` is another job's folder, ``other_log`` a file in it."""
    data, root = settings.data_dir, settings.allowed_path_roots[1]
    return {
        "read:store": str(data / "jobs.db"),
        "read:other_job_log": str(other_log),
        "list:other_job": str(other_dir),
        "list:data_dir": str(data),
        "write:other_job": str(other_dir),
        "write:data_dir": str(data),
        "write:jobs_dir": str(data / "jobs"),
        "write:index_cache": str(settings.effective_cache_dir / "task-index"),
        "write:site_packages": sysconfig.get_paths()["purelib"],
        "write:tmp": "/tmp",
        "list:server_cwd": f"/proc/{os.getpid()}/cwd",
        "write:own_folder": ".",
        "write:operator_root": str(root),
        "read:operator_root": str(root / "shared.txt"),
        "tmpfile": "",
    }


def assert_walled_in(seen: dict[str, str], job_dir: Path) -> None:
    assert {name: seen[name] for name in DENIED} == dict.fromkeys(DENIED, "PermissionError")
    assert {name: seen[name] for name in ALLOWED} == dict.fromkeys(ALLOWED, "ok")
    assert seen["tmpfile"] == f"ok:{job_dir.resolve() / 'tmp'}"


async def probe_escapes(server: Server, settings: Settings) -> JobRecord:
    """Run the escape probe as an allowed lm_eval_path program, aimed at another job's files
    and the server's own; it prints what each attempt met."""
    other = await finished(server, fake_job("env"))
    targets = json.dumps(escape_targets(settings, other.job_dir, other.stdout_path))
    body = {
        "lm_eval_path": str(ESCAPE_LM_EVAL),
        "model": "dummy",
        "tasks": "fake",
        "env_vars": {"PROBE_TARGETS": targets},
    }
    return await finished(server, body)


async def test_a_confined_program_reaches_only_its_own_places(tmp_path: Path) -> None:
    settings = confined_settings(tmp_path)
    async with serving(settings) as server:
        record = await probe_escapes(server, settings)
        assert_walled_in(json.loads(record.stdout_path.read_text()), record.job_dir)
        health = (await server.client.get("/healthz")).json()
        assert health["jobs_confined"] is True and health["job_confinement"] == "auto"
        assert "lmeval_jobs_confined 1.0" in (await server.client.get("/metrics")).text


def escape_task(settings: Settings, other_dir: Path, other_log: Path) -> Path:
    """The escape task in an operator root, with the targets it will try."""
    folder = settings.allowed_path_roots[1] / "escape"
    shutil.copytree(ESCAPE_DIR, folder, dirs_exist_ok=True)
    shutil.copy(TASKS_DIR / "tiny_mc.jsonl", folder)
    targets = escape_targets(settings, other_dir, other_log)
    (folder / "targets.json").write_text(json.dumps(targets))
    return folder


@pytest.mark.parametrize(
    ("start", "overrides"),
    [
        ("cold fastrun", {}),
        ("fork server", {"fork_servers": 1}),
        ("stock lm_eval", {"fast_start": False}),
    ],
)
async def test_task_code_reaches_only_its_own_places(
    tmp_path: Path, start: str, overrides: dict[str, Any]
) -> None:
    settings = confined_settings(tmp_path, **overrides)
    async with serving(settings) as server:
        supervisor = supervisor_of(server)
        other = await finished(server, fake_job("env"))
        folder = escape_task(settings, other.job_dir, other.stdout_path)
        if supervisor.forks is not None:
            with trio.fail_after(300):
                await supervisor.forks.wait_ready(
                    local_environment(settings, supervisor.job_environment({}))
                )
        body = {"model": "dummy", "tasks": "escape", "include_path": str(folder)}
        record = await finished(server, body)
        assert_walled_in(json.loads((record.job_dir / "escape.json").read_text()), record.job_dir)
        warm_start = "[fastrun] warm start" in record.stderr_path.read_text()
        assert warm_start is (start == "fork server")


async def test_unconfined_jobs_reach_the_store(tmp_path: Path) -> None:
    """The same program with confinement off: the attempts above are real attempts."""
    settings = confined_settings(tmp_path, job_confinement="off")
    async with serving(settings) as server:
        seen = json.loads((await probe_escapes(server, settings)).stdout_path.read_text())
        assert seen["read:store"] == seen["read:other_job_log"] == seen["write:data_dir"] == "ok"
        health = (await server.client.get("/healthz")).json()
        assert health["jobs_confined"] is False and health["job_confinement"] == "off"
        assert "lmeval_jobs_confined 0.0" in (await server.client.get("/metrics")).text


async def results_of(settings: Settings, body: dict[str, Any]) -> dict[str, Any]:
    async with serving(settings) as server:
        record = await finished(server, body)
        response = await server.client.get(f"/job/{record.id}/results")
        results: dict[str, Any] = response.json()["results"]["results"]
        return results


@pytest.mark.parametrize("kind", ["dummy", "local-completions"])
async def test_results_are_the_same_confined_and_unconfined(
    tmp_path: Path, stub: StubHandle, kind: str
) -> None:
    body = {**DUMMY_JOB} if kind == "dummy" else completions_job(stub)
    confined = await results_of(make_settings(tmp_path / "on"), body)
    unconfined = await results_of(make_settings(tmp_path / "off", job_confinement="off"), body)
    assert confined == unconfined
    assert "tiny_mc" in confined and "tiny_gen" in confined


async def test_an_hf_model_gives_the_same_results_confined(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    model = os.environ.get("LMEVAL_TEST_TINY_HF_MODEL")
    if not model:
        pytest.skip("set LMEVAL_TEST_TINY_HF_MODEL to a local tiny causal LM folder")
    body = {
        "model": "hf",
        "model_args": f"pretrained={model}",
        "tasks": "tiny_mc",
        "include_path": str(TASKS_DIR),
    }
    confined = await results_of(
        make_settings(tmp_path / "on", allowed_path_roots=(SUPPORT, Path(model))), body
    )
    unconfined = await results_of(
        make_settings(
            tmp_path / "off", allowed_path_roots=(SUPPORT, Path(model)), job_confinement="off"
        ),
        body,
    )
    assert confined == unconfined


def test_the_setting_accepts_only_its_three_values() -> None:
    with pytest.raises(SettingsError, match="LMEVAL_JOB_CONFINEMENT"):
        Settings.from_env({"LMEVAL_JOB_CONFINEMENT": "sometimes"})
    assert Settings.from_env({}).job_confinement == "auto"
    assert Settings.from_env({"LMEVAL_JOB_CONFINEMENT": "landlock"}).job_confinement == "landlock"


async def test_required_confinement_confines_or_refuses_to_start(tmp_path: Path) -> None:
    required = confined_settings(tmp_path, job_confinement="landlock")
    async with serving(required) as server:
        health = (await server.client.get("/healthz")).json()
        assert health["jobs_confined"] is True and health["job_confinement"] == "landlock"
    # With Ray the wall cannot be had at all: a settings error, before anything starts.
    with pytest.raises(SettingsError, match="LMEVAL_BACKEND=ray runs them elsewhere"):
        make_settings(tmp_path / "ray", backend="ray", job_confinement="landlock")


def test_walls_travel_intact() -> None:
    walls = Walls(read=("/usr", "/a b"), write=("/j",), tmpdir="/j/tmp")
    assert Walls.decode(walls.encode()) == walls
    with pytest.raises(ValueError, match="walls"):
        Walls.decode(json.dumps({"read": "/"}))
    with pytest.raises(ValueError, match="walls"):
        Walls.from_args(["--write="])


async def test_a_fork_server_with_foreign_threads_lets_its_job_start_cold_and_confined(
    tmp_path: Path,
) -> None:
    """OpenBLAS started a thread while the fork server preloaded (a request may set its thread
    count): forking then is unsafe, so the fork server refuses and the launcher starts the job
    cold, behind the same wall."""
    settings = confined_settings(tmp_path)
    launcher = Launcher.default(
        fast_start=True, index_cache=settings.effective_cache_dir / "task-index"
    )
    assert launcher.fork_server is not None
    walls = JobWalls(settings, launcher.executable)
    await walls.check()
    other_dir = settings.data_dir / "jobs" / "1"
    other_dir.mkdir(parents=True)
    (other_dir / "stdout.log").write_text("another job's output")
    (settings.data_dir / "jobs.db").write_text("the store")
    folder = escape_task(settings, other_dir, other_dir / "stdout.log")
    job_dir = settings.data_dir / "jobs" / "2"
    job_dir.mkdir()
    env = local_environment(settings, {"PYTHONDONTWRITEBYTECODE": "1", "OPENBLAS_NUM_THREADS": "2"})
    job_walls = await trio.to_thread.run_sync(walls.walls, job_dir, {}, env, [])
    args = ["run", "--model", "dummy", "--tasks", "escape", "--include_path", str(folder)]
    argv = [*launcher.executable, *args]
    forks = ForkServers(
        launcher.executable,
        launcher.fork_server,
        cwd=settings.data_dir,
        max_servers=1,
        grace_s=2,
    )
    forks.use_safe_path()
    output = bytearray()

    async def sink(chunk: bytes) -> None:
        output.extend(chunk)

    async with trio.open_nursery() as nursery:
        forks.prime(env)
        await nursery.start(forks.run)
        with trio.fail_after(300):
            await forks.wait_ready(env)
        route = forks.route(argv, env, job_dir, job_walls, walls.command(argv, job_walls))
        assert route is not None
        info_r, info_w = os.pipe()
        with trio.fail_after(300):
            code = await process.run_process_group(
                route.argv(info_w),
                env=env,
                cwd=job_dir,
                on_stdout=sink,
                on_stderr=sink,
                grace_s=2,
                pass_fds=(info_w,),
            )
        with os.fdopen(info_r, "rb") as info:
            said = info.read().decode()
        nursery.cancel_scope.cancel()
    assert code == 0, output[-2000:].decode(errors="replace")
    assert re.fullmatch(
        r"cold fork server refused: \d+ other thread\(s\) run in the fork server\n", said
    )
    assert b"[fastrun] warm start" not in output
    assert_walled_in(json.loads((job_dir / "escape.json").read_text()), job_dir)


async def test_the_server_never_reads_through_what_a_job_planted(tmp_path: Path) -> None:
    """A job replaces its logs and plants a results file with symlinks to files only the
    server can read: logs, results and artifacts serve none of them."""
    settings = confined_settings(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET line\n")
    secret_json = tmp_path / "secret.json"
    secret_json.write_text(json.dumps({"results": {"leak": {"acc,none": "TOP-SECRET"}}}))
    plant = {
        "stdout.log": str(secret),
        "stderr.log": str(secret),
        "output/dummy/results_2099-01-01T00-00-00.json": str(secret_json),
    }
    body = {
        "lm_eval_path": str(ESCAPE_LM_EVAL),
        "model": "dummy",
        "tasks": "fake",
        "env_vars": {"PROBE_PLANT": json.dumps(plant)},
    }
    async with serving(settings) as server:
        record = await finished(server, body)
        answers = [
            await server.client.get(f"/job/{record.id}"),
            await server.client.get(f"/job/{record.id}/logs", params={"stream": "stdout"}),
            await server.client.get(f"/job/{record.id}/logs", params={"stream": "stderr"}),
            await server.client.get(f"/job/{record.id}/results"),
            await server.client.get(f"/job/{record.id}/artifacts"),
        ]
    assert record.stdout_path.is_symlink()  # planted indeed
    assert answers[3].status_code == 404
    for answer in answers:
        assert "TOP-SECRET" not in answer.text


async def test_hf_cache_variables_never_open_the_servers_own_files(tmp_path: Path) -> None:
    """HF_XET_CACHE=lmeval_trio once granted the server's source (relative to the server's
    cwd) for writing: every HF cache variable is judged and made absolute by the policy, and
    the wall grants none that is relative or lies in (or around) the server's own files."""
    from lmeval_trio.config import SHIPPED_EXAMPLE_TASKS
    from lmeval_trio.policy.rules import HF_CACHE_VARIABLES, PATH_ENV_NAMES

    assert set(HF_CACHE_VARIABLES) <= PATH_ENV_NAMES
    settings = confined_settings(tmp_path)
    walls = JobWalls(settings, None)
    await walls.check()
    job_dir = settings.data_dir / "jobs" / "2"
    job_dir.mkdir(parents=True)
    source = SUPPORT.parent.parent / "lmeval_trio"
    root = settings.allowed_path_roots[1]
    attacks = {
        "HF_XET_CACHE": "lmeval_trio",
        "HF_HUB_CACHE": "./decoy",
        "HF_ASSETS_CACHE": str(SHIPPED_EXAMPLE_TASKS / "planted"),
        "HF_DATASETS_CACHE": str(settings.data_dir / "jobs" / "1"),
        "TRANSFORMERS_CACHE": str(source),
        "HUGGINGFACE_HUB_CACHE": sysconfig.get_paths()["purelib"],
    }
    plain = await trio.to_thread.run_sync(
        walls.walls, job_dir, {}, local_environment(settings, {}), []
    )
    assert plain is not None
    for name, value in attacks.items():
        env = local_environment(settings, {name: value})
        wall = await trio.to_thread.run_sync(walls.walls, job_dir, {name: value}, env, [])
        assert wall is not None
        assert wall.write == plain.write, (name, wall.write)
    assert not (SHIPPED_EXAMPLE_TASKS / "planted").exists()
    assert not (settings.data_dir / "jobs" / "1").exists()
    own = str(root / "hf-xet")
    wall = await trio.to_thread.run_sync(
        walls.walls,
        job_dir,
        {"HF_XET_CACHE": own},
        local_environment(settings, {"HF_XET_CACHE": own}),
        [],
    )
    assert wall is not None and own in wall.write  # tmp_path is already resolved


async def test_a_relative_hf_cache_is_the_jobs_own_folder(tmp_path: Path) -> None:
    """The policy resolves HF_XET_CACHE where the job uses it; a built-in root is refused."""
    from lmeval_trio.config import SHIPPED_EXAMPLE_TASKS

    settings = confined_settings(tmp_path)
    async with serving(settings) as server:
        for value in ("lmeval_trio", "./decoy"):
            record = await finished(server, fake_job("env", HF_XET_CACHE=value))
            assert record.env["HF_XET_CACHE"] == str(record.job_dir / value.lstrip("./"))
        body = fake_job("env", HF_XET_CACHE=str(SHIPPED_EXAMPLE_TASKS))
        response = await server.client.post("/job", json=body)
        assert response.status_code == 403, response.text
        assert response.json()["field"] == "env_vars.HF_XET_CACHE"


async def test_task_code_cannot_write_the_server_through_an_hf_cache(tmp_path: Path) -> None:
    """The reported attack, end to end: HF_XET_CACHE=lmeval_trio and a !function task that
    writes into the server's own package (then run, unconfined, by every later job)."""
    from lmeval_trio.config import SHIPPED_EXAMPLE_TASKS

    settings = confined_settings(tmp_path)
    source = SUPPORT.parent.parent / "lmeval_trio"
    async with serving(settings) as server:
        other = await finished(server, fake_job("env"))
        folder = escape_task(settings, other.job_dir, other.stdout_path)
        targets = {
            "write:server_source": str(source),
            "write:builtin_root": str(SHIPPED_EXAMPLE_TASKS),
            "write:own_cache": "lmeval_trio",
        }
        (folder / "targets.json").write_text(json.dumps(targets))
        for value in ("lmeval_trio", "./lmeval_trio"):
            body = {
                "model": "dummy",
                "tasks": "escape",
                "include_path": str(folder),
                "env_vars": {"HF_XET_CACHE": value},
            }
            record = await finished(server, body)
            seen = json.loads((record.job_dir / "escape.json").read_text())
            assert seen == {
                "write:server_source": "PermissionError",
                "write:builtin_root": "PermissionError",
                "write:own_cache": "ok",  # the job's own folder/lmeval_trio, created for it
            }, seen
