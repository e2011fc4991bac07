"""A job's environment: the one builder's output pinned for each backend, then compared with
what real children see, a fresh local process and a fork server (pre-imported process) alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from lmeval_trio.config import Settings
from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.runners.environment import inherited, job_environment, local_environment
from tests.conftest import FAKE_LM_EVAL, make_settings
from tests.test_ray import _record as ray_record

GUARD_S = 60
ENV_VARS = {"FAKE_MODE": "env", "PYTHONUNBUFFERED": "0", "OPENBLAS_NUM_THREADS": "4"}
#: What the server sets, in order, for ENV_VARS on GPUs 0 and 2 with the default policy.
PINNED_OWN = [
    ("PYTHONDONTWRITEBYTECODE", "1"),
    ("FAKE_MODE", "env"),
    ("PYTHONUNBUFFERED", "1"),  # a request cannot turn it off
    ("OPENBLAS_NUM_THREADS", "4"),
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("HF_ALLOW_CODE_EVAL", "0"),
    ("HF_DATASETS_TRUST_REMOTE_CODE", "0"),
    ("CUDA_VISIBLE_DEVICES", "0,2"),
]
#: Confined, the thread-free imports come before the request's own (which win).
PINNED_CONFINED_OWN = [
    ("PYTHONDONTWRITEBYTECODE", "1"),
    ("OPENBLAS_NUM_THREADS", "4"),
    ("JE_ARROW_MALLOC_CONF", "background_thread:false"),
    *PINNED_OWN[1:3],
    *PINNED_OWN[4:],
]


@pytest.fixture
def server_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings read while the server's environment holds a secret setting, the log level
    lm-eval reads, a bytecode prefix and an operator's variable; a variable set afterwards
    is not the server's environment as read."""
    monkeypatch.setenv("OPERATOR_VARIABLE", "from the server")
    monkeypatch.setenv("LMEVAL_LOG_LEVEL", "INFO")
    monkeypatch.setenv("LMEVAL_API_KEYS", "a-secret")
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", "/elsewhere")
    for name, _ in PINNED_OWN + PINNED_CONFINED_OWN:  # so the pins hold on any machine
        monkeypatch.delenv(name, raising=False)
    settings = make_settings(tmp_path, gpus=("0", "1", "2"), job_confinement="off")
    monkeypatch.setenv("SET_LATER", "not the server's")
    return settings


def test_what_a_job_inherits_is_the_servers_environment_when_settings_were_read(
    server_settings: Settings,
) -> None:
    base = inherited(server_settings)
    assert base["OPERATOR_VARIABLE"] == "from the server"
    assert base["LMEVAL_LOG_LEVEL"] == "INFO"
    assert "LMEVAL_API_KEYS" not in base and "PYTHONPYCACHEPREFIX" not in base
    assert "SET_LATER" not in base
    assert not any(name.startswith("LMEVAL_") and name != "LMEVAL_LOG_LEVEL" for name in base)


def test_the_builder_output_is_pinned_for_every_backend(server_settings: Settings) -> None:
    own = job_environment(server_settings, ENV_VARS, ("0", "2"), thread_free=False)
    assert list(own.items()) == PINNED_OWN
    confined = job_environment(server_settings, ENV_VARS, ("0", "2"), thread_free=True)
    assert list(confined.items()) == PINNED_CONFINED_OWN
    local = local_environment(server_settings, own)
    assert list(local.items()) == [*inherited(server_settings).items(), *PINNED_OWN]

    from lmeval_trio.runners.ray import RayRunner

    ray_settings = server_settings.model_copy(update={"backend": "ray", "kill_grace_s": 2.5})
    record = ray_record(server_settings.data_dir, external_id=None)
    payload = RayRunner(ray_settings)._payload(record, own, "lmeval-trio-x-1-1")
    # On Ray the worker's environment is inherited: only the server's variables travel.
    assert list(payload["runtime_env"]["env_vars"].items()) == [
        *PINNED_OWN,
        ("RAY_JOB_STOP_WAIT_TIME_S", "3"),
    ]


def test_a_settings_copy_keeps_the_environment_it_was_read_with(
    server_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPERATOR_VARIABLE", "changed later")
    copy = server_settings.model_copy(update={"max_concurrency": 0})
    assert inherited(copy) == inherited(server_settings)
    assert inherited(copy)["OPERATOR_VARIABLE"] == "from the server"


async def test_a_local_child_sees_exactly_the_built_environment(
    server_settings: Settings,
) -> None:
    async with Supervisor(server_settings) as supervisor:
        request = {
            "lm_eval_path": str(FAKE_LM_EVAL),
            "model": "dummy",
            "tasks": "fake",
            "num_gpus": 2,
            "env_vars": ENV_VARS,
        }
        record = await _finished(supervisor, request)
        seen = json.loads(record.stdout_path.read_text())["env"]
        assert record.gpus == ["0", "1"]
        own = job_environment(server_settings, ENV_VARS, ("0", "1"), thread_free=False)
        assert list(seen.items()) == list(local_environment(server_settings, own).items())
        assert seen["OPERATOR_VARIABLE"] == "from the server" and "SET_LATER" not in seen


async def test_a_fork_server_has_exactly_the_built_environment_of_its_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPERATOR_VARIABLE", "from the server")
    settings = make_settings(tmp_path, fork_servers=1, job_confinement="off")
    async with Supervisor(settings) as supervisor:
        assert supervisor.forks is not None
        expected = local_environment(settings, job_environment(settings, {}, thread_free=True))
        with trio.fail_after(300):  # the first one of a test session may build the task index
            await supervisor.forks.wait_ready(expected)  # it was started with it
        server = supervisor.forks.server_for(expected)
        assert server is not None and server.proc is not None
        raw = await trio.Path(f"/proc/{server.proc.pid}/environ").read_bytes()
        seen = dict(item.split("=", 1) for item in raw.decode().split("\0") if item)
        assert seen == expected and seen["OPERATOR_VARIABLE"] == "from the server"


async def _finished(supervisor: Supervisor, request: dict[str, Any]) -> JobRecord:
    with trio.fail_after(GUARD_S):
        record = await supervisor.wait((await supervisor.submit(request)).id)
    assert record.status is JobStatus.COMPLETED, record.reason
    return record
