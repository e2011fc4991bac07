"""Operator features: health, readiness, metrics, GPU slots, configuration, logging."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from lmeval_trio.config import Settings, SettingsError, env_name
from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.harness.request_model import RequestRejected
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.logging_setup import JsonLineFormatter
from tests.conftest import LOAD_SERVED_APP, Server, fake_job, make_settings, supervisor_of

ROOT = Path(__file__).parent.parent


async def test_health_and_readiness(server: Server) -> None:
    health = await server.client.get("/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["supervisor"] == "alive"
    assert body["store"] == "writable" and body["slots_total"] == 4
    assert (await server.client.get("/readyz")).json() == {"status": "ready"}


async def test_health_reveals_a_dead_supervisor(server: Server) -> None:
    supervisor = supervisor_of(server)
    supervisor.shutdown()
    await supervisor.closed.wait()
    assert (await server.client.get("/healthz")).status_code == 503
    assert (await server.client.get("/readyz")).status_code == 503
    response = await server.client.post("/job", json=fake_job("env"))
    assert response.status_code == 503 and "not running" in response.json()["detail"]


async def test_metrics(server: Server) -> None:
    job_id = await server.submit(fake_job("env"))
    await server.wait_status(job_id, JobStatus.COMPLETED)
    await server.client.post("/job", json={"tasks": "x", "lm_eval_path": "/bin/sh"})
    await server.client.post("/job", json={"tasks": "x", "limit": "many"})
    text = (await server.client.get("/metrics")).text
    assert 'lmeval_jobs{status="Completed"} 1.0' in text
    assert "lmeval_submissions_total 1.0" in text
    assert 'lmeval_refusals_total{reason="policy"} 1.0' in text
    assert 'lmeval_refusals_total{reason="invalid"} 1.0' in text
    assert 'lmeval_job_duration_seconds_count{status="Completed"} 1.0' in text
    assert "lmeval_dispatch_latency_seconds_count 1.0" in text
    assert "lmeval_queue_wait_seconds_count 1.0" in text
    assert "lmeval_free_slots 4.0" in text and "lmeval_queue_depth 0.0" in text


async def test_gpu_groups_are_exclusive_slots(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, gpus=("0", "1", "2", "3"), gpus_per_job=2)
    async with Supervisor(settings) as supervisor:
        jobs = [await supervisor.submit(fake_job("env_block")) for _ in range(3)]
        printed = [json.loads(await _stdout_when_written(supervisor, j.id)) for j in jobs[:2]]
        running = [await supervisor.get(j.id) for j in jobs[:2]]
        assert sorted(tuple(r.gpus) for r in running) == [("0", "1"), ("2", "3")]
        assert (await supervisor.get(jobs[2].id)).status is JobStatus.QUEUED
        for record, child in zip(running, printed, strict=True):
            assert child["env"]["CUDA_VISIBLE_DEVICES"] == ",".join(record.gpus)
        freed = running[0].gpus
        await supervisor.stop(running[0].id)
        await _wait_running(supervisor, jobs[2].id)
        assert (await supervisor.get(jobs[2].id)).gpus == freed
        await supervisor.stop_all()


async def test_requests_ask_for_a_number_of_gpus(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, gpus=("0", "1", "2", "3"), gpus_per_job=1)
    async with Supervisor(settings) as supervisor:
        big = await supervisor.submit({**fake_job("env_block"), "num_gpus": 3})
        small = await supervisor.submit(fake_job("env_block"))
        second_big = await supervisor.submit({**fake_job("env_block"), "num_gpus": 2})
        assert (
            json.loads(await _stdout_when_written(supervisor, big.id))["env"][
                "CUDA_VISIBLE_DEVICES"
            ]
            == "0,1,2"
        )
        await _stdout_when_written(supervisor, small.id)
        assert (await supervisor.get(small.id)).gpus == ["3"]
        assert (await supervisor.get(second_big.id)).status is JobStatus.QUEUED
        await supervisor.stop(big.id)
        await _wait_running(supervisor, second_big.id)
        assert (await supervisor.get(second_big.id)).gpus == ["0", "1"]
        with pytest.raises(RequestRejected, match="asks for 5 GPUs"):
            await supervisor.submit({**fake_job("env"), "num_gpus": 5})
        await supervisor.stop_all()


async def _stdout_when_written(supervisor: Supervisor, job_id: int) -> str:
    with trio.fail_after(30):
        while True:
            pulse = supervisor.live_changes(job_id)
            assert pulse is not None
            version = pulse.version
            lines = await supervisor.log_tail(await supervisor.get(job_id), "stdout")
            if lines and lines[0].endswith("\n"):
                return "".join(lines)
            await pulse.wait_past(version)


async def _wait_running(supervisor: Supervisor, job_id: int) -> None:
    with trio.fail_after(30):
        while (await supervisor.get(job_id)).status is not JobStatus.RUNNING:
            await supervisor.changed.wait_past(supervisor.changed.version)


def test_settings_from_environment_and_file(tmp_path: Path) -> None:
    config = tmp_path / "lmeval.toml"
    config.write_text('max_concurrency = 2\nkill_grace_s = 5.0\nlog_format = "json"\n')
    settings = Settings.from_env(
        {"LMEVAL_CONFIG_FILE": str(config), "MAX_CONCURRENCY": "7", "LMEVAL_GPUS": "0,1"}
    )
    assert settings.max_concurrency == 7  # the environment wins over the file
    assert settings.kill_grace_s == 5.0 and settings.log_format == "json"
    assert settings.gpus == ("0", "1")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MAX_CONCURRENCY": "many"}, "MAX_CONCURRENCY: Input should be a valid integer"),
        ({"LMEVAL_KILL_GRACE_S": "-1"}, "LMEVAL_KILL_GRACE_S: Input should be greater than 0"),
        ({"LMEVAL_LOG_FORMAT": "xml"}, "LMEVAL_LOG_FORMAT"),
        ({"LMEVAL_CONFIG_FILE": "/nonexistent.toml"}, "LMEVAL_CONFIG_FILE: cannot read"),
    ],
)
def test_invalid_settings_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(environ)


def test_unknown_keys_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("max_concurency = 2\n")
    with pytest.raises(SettingsError, match=r"unknown settings .*max_concurency"):
        Settings.from_env({"LMEVAL_CONFIG_FILE": str(config)})


async def test_config_route_masks_secrets(tmp_path: Path) -> None:
    from tests.conftest import start_server

    settings = make_settings(tmp_path, api_keys=("top-secret-key",))
    async with trio.open_nursery() as nursery:
        url, shutdown, _app = await start_server(nursery, settings)
        import httpx

        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.get(
                "/config", headers={"Authorization": "Bearer top-secret-key"}
            )
        shutdown.set()
    body = response.json()
    assert "top-secret-key" not in response.text
    assert body["api_keys"] == "<1 configured>" and body["max_concurrency"] == 4


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`{env_name(name)}`" in readme, env_name(name)


def test_json_log_lines_carry_the_job_id() -> None:
    record = logging.LogRecord(
        "lmeval_trio.supervisor", logging.INFO, __file__, 1, "job %s queued", (7,), None
    )
    record.job_id = 7
    line = json.loads(JsonLineFormatter().format(record))
    assert line["message"] == "job 7 queued" and line["job_id"] == 7
    assert line["level"] == "INFO" and line["ts"].endswith("+00:00")


def test_every_path_setting_is_absolute_whatever_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs and fork servers run in other folders: a path left relative would double there."""
    start = tmp_path / "start"
    start.mkdir()
    monkeypatch.chdir(start)
    config = tmp_path / "lmeval.toml"
    config.write_text('cache_dir = "file-cache"\nallowed_path_roots = ["file-root"]\n')
    (start / "keys").write_text("k\n")
    (start / "file-root").mkdir()
    sources = {
        "default": Settings(),
        "from_env default": Settings.from_env({}),
        "environment": Settings.from_env(
            {"LMEVAL_DATA_DIR": "env-data", "LMEVAL_API_KEYS_FILE": "keys"}
        ),
        "file": Settings.from_env({"LMEVAL_CONFIG_FILE": str(config)}),
        "override": Settings.from_env({}, data_dir="cli-data/../cli", cache_dir=Path("c")),
    }
    for source, settings in sources.items():
        paths = [settings.data_dir, settings.effective_cache_dir, *settings.allowed_path_roots]
        if settings.api_keys_file is not None:
            paths.append(settings.api_keys_file)
        for path in paths:
            assert path.is_absolute() and ".." not in path.parts, (source, path)
            assert path.is_relative_to(start), (source, path)
    assert sources["default"].data_dir == start / "lmeval-data"
    assert sources["override"].data_dir == start / "cli"
    assert sources["file"].allowed_path_roots == (start / "file-root",)
    monkeypatch.chdir(tmp_path)  # settings built earlier keep meaning what they meant
    assert sources["default"].data_dir == start / "lmeval-data"


def test_settings_refuse_what_they_cannot_mean(tmp_path: Path) -> None:
    """Mistakes that would otherwise surface later, as refusals or an open server, stop the
    start with a message naming the variable."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b, file = tmp_path / "a", tmp_path / "b", tmp_path / "file"
    file.write_text("x")
    cases = [
        ("LMEVAL_ALLOWED_PATH_ROOTS", f"{a}:{b}", "separate entries with commas, not ':'"),
        ("LMEVAL_ALLOWED_LM_EVAL_PATHS", f"{file}:/bin/sh", "with commas, not ':'"),
        ("LMEVAL_ALLOWED_PATH_ROOTS", str(tmp_path / "nope"), "not existing folders"),
        ("LMEVAL_ALLOWED_PATH_ROOTS", str(file), "not existing folders"),
        ("LMEVAL_ALLOWED_LM_EVAL_PATHS", str(file), "not executable files"),
        ("LMEVAL_API_KEYS_FILE", str(tmp_path / "no-keys"), "is not a file"),
        ("LMEVAL_DATA_DIR", str(file), "exists and is not a folder"),
        ("LMEVAL_CACHE_DIR", str(file), "exists and is not a folder"),
        ("LMEVAL_ENV_ALLOWLIST", "HF_TOKEN,OPENAI API KEY", "not environment variable names"),
        ("LMEVAL_CORS_ORIGINS", "dashboard.example", "https://host"),
    ]
    for variable, value, message in cases:
        with pytest.raises(SettingsError, match=re.escape(message)) as refused:
            Settings.from_env({variable: value})
        assert str(refused.value).startswith(f"invalid settings: {variable}: "), refused.value
    fine = Settings.from_env(
        {"LMEVAL_ALLOWED_PATH_ROOTS": f"{a},{b}", "LMEVAL_CORS_ORIGINS": "http://h:8080,*"}
    )
    assert fine.allowed_path_roots == (a, b)


def test_settings_refuse_unbounded_durations_gpu_lists_and_impossible_walls(
    tmp_path: Path,
) -> None:
    """Every *_s setting must be a finite duration; GPU ids are comma-separated; a required
    wall that the backend cannot put up is a settings error, not a failed start."""
    cases = [
        ({"LMEVAL_GPUS": "0:1"}, "LMEVAL_GPUS: ", "separate GPU ids with commas"),
        (
            {"LMEVAL_JOB_CONFINEMENT": "landlock", "LMEVAL_BACKEND": "ray"},
            "LMEVAL_JOB_CONFINEMENT=landlock",
            "LMEVAL_BACKEND=ray",
        ),
    ]
    durations = [name for name in Settings.model_fields if name.endswith("_s")]
    assert len(durations) >= 8
    for name in durations:
        for value in ("inf", "nan", "-1"):
            variable = env_name(name)
            cases.append(({variable: value}, f"{variable}: ", "Input should be"))
    for environ, start, message in cases:
        with pytest.raises(SettingsError, match=re.escape(message)) as refused:
            Settings.from_env({**environ, "LMEVAL_DATA_DIR": str(tmp_path / "data")})
        assert str(refused.value).startswith(f"invalid settings: {start}"), refused.value


def test_a_shared_data_dir_is_refused_not_taken_over(tmp_path: Path) -> None:
    """The server makes its data dir 0700: /tmp, a folder of another user, / or one holding
    an allowed root would be silently taken over (or exposed), so the start stops instead."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    holder = tmp_path / "holder"
    (holder / "root").mkdir(parents=True)
    cases = [
        ({"LMEVAL_DATA_DIR": "/tmp"}, "shared folder"),
        ({"LMEVAL_DATA_DIR": str(shared)}, "shared folder"),
        ({"LMEVAL_DATA_DIR": "/"}, "root folder"),
        (
            {"LMEVAL_DATA_DIR": str(holder), "LMEVAL_ALLOWED_PATH_ROOTS": str(holder / "root")},
            "allowed path root",
        ),
        (
            {"LMEVAL_DATA_DIR": str(holder), "LMEVAL_ALLOWED_PATH_ROOTS": str(holder)},
            "allowed path root",
        ),
    ]
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        cases.append(({"LMEVAL_DATA_DIR": str(foreign)}, "not owned by the server's user"))
    for environ, message in cases:
        with pytest.raises(SettingsError, match=re.escape(message)) as refused:
            Settings.from_env(environ)
        assert str(refused.value).startswith("invalid settings: LMEVAL_DATA_DIR="), refused.value
    assert shared.stat().st_mode & 0o7777 == 0o1777  # untouched


def _import_asgi(env: dict[str, str], form: str) -> subprocess.CompletedProcess[str]:
    """Load the app the way hypercorn does, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-c", LOAD_SERVED_APP[form]],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize("form", sorted(LOAD_SERVED_APP))
def test_an_invalid_setting_stops_the_served_app(tmp_path: Path, form: str) -> None:
    env = {**os.environ, "LMEVAL_ALLOWED_PATH_ROOTS": "/nonexistent-a:/nonexistent-b"}
    result = _import_asgi(env, form)
    assert result.returncode == 2
    assert result.stderr.startswith("lmeval-trio: invalid settings: LMEVAL_ALLOWED_PATH_ROOTS:")
    assert "Traceback" not in result.stderr
    env = {**os.environ, "LMEVAL_JOB_CONFINEMENT": "landlock", "LMEVAL_BACKEND": "ray"}
    env["LMEVAL_DATA_DIR"] = str(tmp_path / "data")
    result = _import_asgi(env, form)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("lmeval-trio: invalid settings: LMEVAL_JOB_CONFINEMENT")


async def test_the_operators_log_tells_the_story(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Start-up, each transition with its reason (failures as warnings), and what a shutdown
    stopped and requeued."""
    caplog.set_level(logging.INFO, logger="lmeval_trio.supervisor")
    settings = make_settings(tmp_path, max_concurrency=1)
    async with Supervisor(settings) as supervisor:
        failing = await supervisor.submit(fake_job("exit", FAKE_CODE="3"))
        await supervisor.wait(failing.id)
        blocking = await supervisor.submit(fake_job("block"))
        waiting = await supervisor.submit(fake_job("env"))
        await _wait_running(supervisor, blocking.id)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    startup = f"start-up: data in {settings.data_dir}; 0 jobs re-attached [], 0 queued"
    # Start-up comes before any job's story (a warning about the settings may precede it).
    first = next(i for i, (_, m) in enumerate(messages) if m.startswith(startup))
    assert not any(m.startswith("job ") for _, m in messages[:first]), messages[:first]
    cause = "lm-eval exited with code 3: ValueError: fake failure for the test"
    assert (logging.WARNING, f"job {failing.id}: Running -> Failed: {cause}") in messages
    assert (
        logging.INFO,
        f"shutdown: stopping 1 running jobs [{blocking.id}]; 1 stay queued",
    ) in messages
    requeued = f"job {blocking.id}: Running -> Queued: interrupted: the server shut down"
    assert any(m.startswith(requeued) and m.endswith("; requeued") for _, m in messages)
    assert messages[-1] == (logging.INFO, "shutdown: done; no job or fork server process left")
    caplog.clear()
    async with Supervisor(settings.model_copy(update={"max_concurrency": 0})):
        pass
    restarted = [r.getMessage() for r in caplog.records if r.name == "lmeval_trio.supervisor"]
    assert f"start-up: data in {settings.data_dir}; 0 jobs re-attached [], 2 queued" in (
        restarted[0] if restarted else ""
    ), restarted
    assert waiting.id > blocking.id
