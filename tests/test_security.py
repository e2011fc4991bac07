"""Safe by default: API keys, CORS, the execution policy, limits — each rule and its attack.

Policy refusals go through a real server (403 JSON naming the field and the rule). Servers
that only judge submissions run with max_concurrency=0, so nothing accepted ever starts.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lmeval_trio.config import SHIPPED_EXAMPLE_TASKS, Settings, SettingsError
from lmeval_trio.harness.request_model import MAX_ENV_VARS, MAX_LIST_ITEMS, MAX_STRING_CHARS
from lmeval_trio.http.security import OPEN_PATHS
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.policy.rules import OFFLINE_ENV
from tests.conftest import FAKE_LM_EVAL, TASKS_DIR, Server, fake_job, make_settings, start_server

KEY = "k-0123456789-secret"
FILE_KEY = "k-from-the-key-file"
BASE: dict[str, Any] = {"model": "dummy", "tasks": "tiny_mc"}


@asynccontextmanager
async def serving(settings: Settings, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    """A real hypercorn for ``settings`` and a client for it."""
    async with trio.open_nursery() as nursery:
        url, shutdown, _app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            yield client
        shutdown.set()


def judge_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """One operator root, ``shared``, besides each job's own folder; nothing dequeues."""
    (tmp_path / "shared").mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "allowed_path_roots": (tmp_path / "shared",),
        "max_concurrency": 0,
        **overrides,
    }
    return make_settings(tmp_path, **values)


@pytest.fixture
async def judge(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(judge_settings(tmp_path)) as client:
        yield client


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """The judge servers' operator root."""
    path = tmp_path / "shared"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder that is in no allowed root (judge servers only allow ``shared``)."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "evil.yaml").write_text("task: evil\n")
    return path


async def refused(client: httpx.AsyncClient, body: dict[str, Any], field: str) -> str:
    """POST ``body``: it must be refused with 403 naming ``field``; returns the rule."""
    response = await client.post("/job", json={**BASE, **body})
    assert response.status_code == 403, response.text
    data = response.json()
    assert data["field"] == field, data
    assert data["rule"] and data["detail"] == f"{field}: {data['rule']}"
    rule: str = data["rule"]
    return rule


async def accepted(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await client.post("/job", json={**BASE, **body})
    assert response.status_code == 200, response.text


# -- lm_eval_path ---------------------------------------------------------------------------


async def test_shell_as_lm_eval_path_is_refused(judge: httpx.AsyncClient) -> None:
    rule = await refused(judge, {"lm_eval_path": "/bin/sh"}, "lm_eval_path")
    assert "LMEVAL_ALLOWED_LM_EVAL_PATHS" in rule


async def test_lm_eval_path_must_be_absolute(judge: httpx.AsyncClient) -> None:
    for path in ("fake_lm_eval.py", "~/lm_eval", "./bin/lm_eval", ""):
        assert "absolute" in await refused(judge, {"lm_eval_path": path}, "lm_eval_path")


async def test_allowlisted_lm_eval_path_is_accepted(judge: httpx.AsyncClient) -> None:
    await accepted(judge, {"lm_eval_path": str(FAKE_LM_EVAL)})


def test_allowlist_entries_must_be_absolute(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="LMEVAL_ALLOWED_LM_EVAL_PATHS"):
        make_settings(tmp_path, allowed_lm_eval_paths=("lm_eval",))


# -- env_vars -------------------------------------------------------------------------------

HIJACKERS = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "DYLD_INSERT_LIBRARIES",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONBREAKPOINT",
    "BASH_ENV",
    "ENV",
    "PATH",
    "HOME",
    "GLIBC_TUNABLES",
    "GCONV_PATH",
    "NODE_OPTIONS",
    "PERL5OPT",
    "GIT_SSH_COMMAND",
    "OPENSSL_CONF",
    "HF_MODULES_CACHE",
    "TRITON_PTXAS_PATH",
    "CC",
    "SSL_CERT_FILE",
    "ld_preload",
]


async def test_loader_hijacking_env_vars_are_refused(judge: httpx.AsyncClient) -> None:
    for name in HIJACKERS:
        rule = await refused(judge, {"env_vars": {name: "/tmp/x"}}, f"env_vars.{name}")
        assert "load" in rule


async def test_env_var_names_must_be_identifiers(judge: httpx.AsyncClient) -> None:
    for name in ("1ABC", "A-B", "A B", "A=B", ""):
        rule = await refused(judge, {"env_vars": {name: "1"}}, f"env_vars.{name}")
        assert "name" in rule


async def test_ordinary_env_vars_pass(judge: httpx.AsyncClient) -> None:
    env = {"HF_TOKEN": "t", "PYTHONHASHSEED": "0", "OPENAI_API_KEY": "k", "MY_SETTING": "1"}
    await accepted(judge, {"env_vars": env})


async def test_env_allowlist_mode(tmp_path: Path) -> None:
    async with serving(judge_settings(tmp_path, env_allowlist=("HF_TOKEN",))) as client:
        await accepted(client, {"env_vars": {"HF_TOKEN": "t"}})
        rule = await refused(client, {"env_vars": {"MY_SETTING": "1"}}, "env_vars.MY_SETTING")
        assert "LMEVAL_ENV_ALLOWLIST" in rule


async def test_path_valued_env_vars_obey_the_roots(
    judge: httpx.AsyncClient, data_dir: Path, shared: Path
) -> None:
    await refused(judge, {"env_vars": {"HF_HOME": "/etc"}}, "env_vars.HF_HOME")
    await refused(judge, {"env_vars": {"TMPDIR": "../../../.."}}, "env_vars.TMPDIR")
    # Changed rule (issue 20): the data dir is no longer a root.
    await refused(judge, {"env_vars": {"HF_HOME": str(data_dir / "hf")}}, "env_vars.HF_HOME")
    await accepted(judge, {"env_vars": {"HF_HOME": str(shared / "hf")}})
    await accepted(judge, {"env_vars": {"HF_HOME": "hf"}})  # the job's own folder


# -- paths ----------------------------------------------------------------------------------


ELSEWHERE = [
    ("output_path", "/etc"),
    ("output_path", "/etc/results.json"),
    ("use_cache", "/tmp/cache"),
    ("include_path", "/"),
    ("config", "/etc/passwd"),
    ("samples", "/etc/passwd"),
    ("tasks", "/etc/evil.yaml"),
    ("tasks", "~/evil.yaml"),
]


async def test_absolute_paths_elsewhere_are_refused(judge: httpx.AsyncClient) -> None:
    for field, value in ELSEWHERE:
        assert "allowed root" in await refused(judge, {field: value}, field)


async def test_dot_dot_in_include_path_cannot_escape(
    judge: httpx.AsyncClient, shared: Path, outside: Path
) -> None:
    escape = str(shared / "tasks" / ".." / ".." / "outside")
    assert "allowed root" in await refused(judge, {"include_path": escape}, "include_path")
    # Relative paths start in the job's folder (data/jobs/<id>): three levels up is outside.
    await refused(judge, {"include_path": "../../../outside"}, "include_path")
    await refused(judge, {"output_path": "../../../out"}, "output_path")
    await accepted(judge, {"output_path": "../../../shared/out"})  # tmp/shared/out


async def test_symlink_out_of_a_root_is_refused(
    judge: httpx.AsyncClient, shared: Path, outside: Path
) -> None:
    (shared / "link").symlink_to(outside, target_is_directory=True)
    await refused(judge, {"include_path": str(shared / "link")}, "include_path")
    await refused(judge, {"output_path": str(shared / "link" / "out")}, "output_path")
    await refused(judge, {"tasks": str(shared / "link" / "evil.yaml")}, "tasks")
    await refused(judge, {"tasks": str(shared / "l*" / "*.yaml")}, "tasks")  # lm-eval globs


async def test_symlink_inside_an_include_folder_is_refused(
    judge: httpx.AsyncClient, shared: Path, outside: Path
) -> None:
    tasks = shared / "tasks"
    tasks.mkdir()
    (tasks / "fine.yaml").write_text("task: fine\n")
    await accepted(judge, {"include_path": str(tasks)})
    (tasks / "evil.yaml").symlink_to(outside / "evil.yaml")
    await refused(judge, {"include_path": str(tasks)}, "include_path")


async def test_paths_inside_the_roots_are_accepted(tmp_path: Path, shared: Path) -> None:
    settings = judge_settings(tmp_path, allowed_path_roots=(TASKS_DIR, shared))
    async with serving(settings) as client:
        await accepted(client, {"include_path": str(TASKS_DIR), "tasks": "tiny_mc"})
        await accepted(client, {"output_path": str(shared / "results"), "use_cache": "c"})
        await accepted(client, {"samples": '{"tiny_mc": [0, 1]}'})  # JSON, not a path


async def test_shipped_examples_are_readable_never_writable(judge: httpx.AsyncClient) -> None:
    """The README's first job reads examples/tasks with no root configured; no job may write
    there (a task YAML in a readable root can import Python)."""
    examples = SHIPPED_EXAMPLE_TASKS
    await accepted(judge, {"include_path": str(examples), "tasks": "example_arith"})
    await accepted(judge, {"tasks": str(examples / "example_arith.yaml")})
    await refused(judge, {"output_path": str(examples / "out")}, "output_path")
    await refused(judge, {"output_path": str(examples)}, "output_path")
    await refused(judge, {"use_cache": str(examples / "c")}, "use_cache")
    await refused(judge, {"env_vars": {"TMPDIR": str(examples)}}, "env_vars.TMPDIR")
    await refused(judge, {"env_vars": {"HF_HOME": str(examples / "hf")}}, "env_vars.HF_HOME")
    await refused(judge, {"include_path": str(examples.parent)}, "include_path")


async def test_unusable_paths_are_refused_not_crashed(judge: httpx.AsyncClient) -> None:
    long = "0" * 5000  # longer than any file name may be
    for field in ("include_path", "config", "tasks"):
        assert "File name too long" in await refused(judge, {field: f"./{long}"}, field)


async def test_nul_byte_in_a_path_is_invalid(judge: httpx.AsyncClient) -> None:
    response = await judge.post("/job", json={**BASE, "output_path": "a\x00b"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] == ["body", "output_path"]


# -- code execution -------------------------------------------------------------------------

CODE_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"trust_remote_code": True}, "trust_remote_code"),
    ({"confirm_run_unsafe_code": True}, "confirm_run_unsafe_code"),
    ({"model_args": "pretrained=x,trust_remote_code=True"}, "model_args"),
    ({"model_args": "pretrained=x,trust_remote_code=1"}, "model_args"),
    ({"model_args": '{"pretrained": "x", "trust_remote_code": true}'}, "model_args"),
    ({"model_args": {"trust_remote_code": "yes"}}, "model_args"),
    ({"model_args": {"model_kwargs": {"trust_remote_code": True}}}, "model_args"),
    ({"env_vars": {"HF_ALLOW_CODE_EVAL": "1"}}, "env_vars.HF_ALLOW_CODE_EVAL"),
    (
        {"env_vars": {"HF_DATASETS_TRUST_REMOTE_CODE": "1"}},
        "env_vars.HF_DATASETS_TRUST_REMOTE_CODE",
    ),
]


async def test_code_execution_is_off_by_default(judge: httpx.AsyncClient) -> None:
    for body, field in CODE_REQUESTS:
        assert "LMEVAL_ALLOW_CODE_EXECUTION" in await refused(judge, body, field)


async def test_trust_remote_code_false_is_fine(judge: httpx.AsyncClient) -> None:
    await accepted(judge, {"model_args": "pretrained=x,trust_remote_code=False"})
    await accepted(judge, {"model_args": {"pretrained": "x", "trust_remote_code": False}})


async def test_operator_can_allow_code_execution(tmp_path: Path) -> None:
    async with serving(judge_settings(tmp_path, allow_code_execution=True)) as client:
        for body, _field in CODE_REQUESTS:
            await accepted(client, body)


# -- online access --------------------------------------------------------------------------


async def test_jobs_run_offline_by_default(server: Server) -> None:
    job_id = await server.submit(fake_job("env"))
    job = await server.wait_status(job_id, JobStatus.COMPLETED)
    env = json.loads("".join(job["stdout"]))["env"]
    assert {name: env.get(name) for name in OFFLINE_ENV} == OFFLINE_ENV


ONLINE_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"wandb_args": "project=x"}, "wandb_args"),
    ({"wandb_args": {"project": "x"}}, "wandb_args"),
    ({"hf_hub_log_args": "hub_results_org=x,push_results_to_hub=True"}, "hf_hub_log_args"),
    ({"trackio_args": "project=x"}, "trackio_args"),
    ({"env_vars": {"HF_HUB_OFFLINE": "0"}}, "env_vars.HF_HUB_OFFLINE"),
]


async def test_online_features_are_refused_when_offline(judge: httpx.AsyncClient) -> None:
    for body, field in ONLINE_REQUESTS:
        assert "LMEVAL_ALLOW_ONLINE" in await refused(judge, body, field)


async def test_operator_can_allow_online(tmp_path: Path) -> None:
    async with serving(judge_settings(tmp_path, allow_online=True)) as client:
        await accepted(client, {"wandb_args": "project=x"})
        await accepted(client, {"env_vars": {"HF_HUB_OFFLINE": "0"}})


# -- --config YAML --------------------------------------------------------------------------


CONFIG_ATTACKS: list[tuple[dict[str, Any], str]] = [
    ({"include_path": "/etc"}, "config.include_path"),
    ({"include_path": ["/etc"]}, "config.include_path"),
    ({"output_path": "/etc"}, "config.output_path"),
    ({"trust_remote_code": True}, "config.trust_remote_code"),
    ({"model_args": "pretrained=x,trust_remote_code=true"}, "config.model_args"),
    ({"wandb_args": {"project": "x"}}, "config.wandb_args"),
]


async def test_config_yaml_obeys_the_same_rules(judge: httpx.AsyncClient, shared: Path) -> None:
    config = shared / "config.yaml"
    for content, field in CONFIG_ATTACKS:
        config.write_text(json.dumps(content))  # JSON is YAML
        await refused(judge, {"config": str(config)}, field)


async def test_harmless_config_yaml_is_accepted(judge: httpx.AsyncClient, shared: Path) -> None:
    config = shared / "config.yaml"
    config.write_text("model: dummy\nlimit: 2\n")
    await accepted(judge, {"config": str(config)})
    await refused(judge, {"config": str(shared)}, "config")  # a folder is not a config


# -- API keys -------------------------------------------------------------------------------


@pytest.fixture
def keyed_settings(tmp_path: Path) -> Settings:
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"\n{FILE_KEY}\n")
    return judge_settings(tmp_path, api_keys=(KEY,), api_keys_file=key_file)


async def test_api_keys(keyed_settings: Settings) -> None:
    async with serving(keyed_settings) as client:
        missing = await client.get("/jobs")
        assert missing.status_code == 401 and "API key" in missing.json()["detail"]
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = await client.get("/jobs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403 and wrong.json()["detail"] == "invalid API key"
        basic = await client.get("/jobs", headers={"Authorization": f"Basic {KEY}"})
        assert basic.status_code == 401
        for header in (f"Bearer {KEY}", f"bearer {FILE_KEY}"):
            assert (await client.get("/jobs", headers={"Authorization": header})).status_code == 200


async def test_every_api_route_needs_the_key(keyed_settings: Settings) -> None:
    async with serving(keyed_settings) as client:
        spec = (await client.get("/openapi.json")).json()
        assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                if "security" not in operation:
                    assert path in OPEN_PATHS, path
                    continue
                url = path.replace("{job_id}", "1").replace("{name}", "x")
                response = await client.request(method, url)
                assert response.status_code == 401, (method, path)
                assert {"401", "403"} <= operation["responses"].keys()


async def test_health_and_docs_stay_open(keyed_settings: Settings) -> None:
    open_paths = ["/healthz", "/readyz", "/docs", "/openapi.json"]
    async with serving(keyed_settings) as client:
        for path in [*open_paths, "/static/swagger-ui/swagger-ui.css"]:
            assert (await client.get(path)).status_code == 200, path


async def test_keys_never_reach_logs_or_config(
    keyed_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(keyed_settings, Authorization=f"Bearer {KEY}") as client:
        await client.get("/jobs", headers={"Authorization": "Bearer wrong-key-attempt"})
        await client.post("/job", json={**BASE, "lm_eval_path": "/bin/sh"})
        await client.post("/job", json=BASE)
        config = (await client.get("/config")).text
    assert "NO API KEYS" not in caplog.text
    for secret in (KEY, FILE_KEY, "wrong-key-attempt"):
        assert secret not in caplog.text
        assert secret not in config
        assert secret not in repr(keyed_settings)
    assert json.loads(config)["api_keys"] == "<1 configured>"


async def test_open_server_says_so_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with serving(judge_settings(tmp_path)) as client:
        assert (await client.get("/jobs")).status_code == 200
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("NO API KEYS CONFIGURED" in r.getMessage() for r in warnings)


# -- CORS -----------------------------------------------------------------------------------

GOOD = "https://dashboard.example"
EVIL = "https://evil.example"


async def test_cors_echoes_only_allowed_origins(tmp_path: Path) -> None:
    settings = judge_settings(tmp_path, cors_origins=(GOOD,), api_keys=(KEY,))
    async with serving(settings, Authorization=f"Bearer {KEY}") as client:
        good = await client.get("/jobs", headers={"Origin": GOOD})
        assert good.headers["Access-Control-Allow-Origin"] == GOOD
        assert good.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in good.headers["Vary"]
        evil = await client.get("/jobs", headers={"Origin": EVIL})
        assert "Access-Control-Allow-Origin" not in evil.headers
        assert "Access-Control-Allow-Credentials" not in evil.headers


async def test_cors_preflight_needs_no_key(tmp_path: Path) -> None:
    settings = judge_settings(tmp_path, cors_origins=(GOOD,), api_keys=(KEY,))
    async with serving(settings) as client:
        headers = {"Origin": GOOD, "Access-Control-Request-Method": "POST"}
        preflight = await client.options("/job", headers=headers)
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == GOOD
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
        evil = await client.options("/job", headers={**headers, "Origin": EVIL})
        assert evil.status_code == 401 and "Access-Control-Allow-Origin" not in evil.headers


async def test_cors_wildcard_never_with_credentials(tmp_path: Path) -> None:
    async with serving(judge_settings(tmp_path, cors_origins=("*",))) as client:
        response = await client.get("/jobs", headers={"Origin": EVIL})
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in response.headers
        preflight = await client.options("/job", headers={"Origin": EVIL})
        assert preflight.status_code == 204
        assert "Access-Control-Allow-Credentials" not in preflight.headers


# -- limits ---------------------------------------------------------------------------------


async def test_huge_body_is_413(tmp_path: Path) -> None:
    async with serving(judge_settings(tmp_path, max_request_bytes=4096)) as client:
        response = await client.post("/job", json={**BASE, "system_instruction": "x" * 8000})
        assert response.status_code == 413
        assert response.json()["rule"] == "LMEVAL_MAX_REQUEST_BYTES"
        assert "4096" in response.json()["detail"]
        await accepted(client, {})  # the client's next request still works


def test_settings_allow_a_paused_queue(tmp_path: Path) -> None:
    assert make_settings(tmp_path, max_concurrency=0).max_concurrency == 0


async def test_queue_bound_is_429_with_retry_after(tmp_path: Path) -> None:
    async with serving(judge_settings(tmp_path, max_queued_jobs=2)) as client:
        ids = [(await client.post("/job", json=BASE)).json()["job_id"] for _ in range(2)]
        full = await client.post("/job", json=BASE)
        assert full.status_code == 429
        assert int(full.headers["Retry-After"]) > 0
        assert full.json()["rule"] == "LMEVAL_MAX_QUEUED_JOBS"
        await client.post(f"/job/{ids[0]}/stop")
        await accepted(client, {})


TOO_LONG: list[tuple[dict[str, Any], str]] = [
    ({"tasks": "x" * (MAX_STRING_CHARS + 1)}, "tasks"),
    ({"tasks": ["t"] * (MAX_LIST_ITEMS + 1)}, "tasks"),
    ({"model_args": "p=" + "x" * MAX_STRING_CHARS}, "model_args"),
    ({"model_args": {f"k{i}": 1 for i in range(MAX_LIST_ITEMS + 1)}}, "model_args"),
    ({"env_vars": {f"V{i}": "1" for i in range(MAX_ENV_VARS + 1)}}, "env_vars"),
    ({"env_vars": {"V": "x" * (MAX_STRING_CHARS + 1)}}, "env_vars"),
    ({"lm_eval_path": "/" + "x" * MAX_STRING_CHARS}, "lm_eval_path"),
    ({"no_such_flag": 1}, "no_such_flag"),
]


async def test_length_limits_are_422(judge: httpx.AsyncClient) -> None:
    for body, field in TOO_LONG:
        response = await judge.post("/job", json={**BASE, **body})
        assert response.status_code == 422, response.text
        assert any(e["loc"][:2] == ["body", field] for e in response.json()["detail"]), field


async def test_undecodable_bodies_are_422(judge: httpx.AsyncClient) -> None:
    for content in (b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{}", b'{"tasks": "\xe2"}'):
        response = await judge.post("/job", content=content)
        assert response.status_code == 422, content[:20]
        assert response.json()["detail"][0]["loc"][0] == "body"


async def read_status(stream: trio.SocketStream) -> int:
    """Read one HTTP/1.1 response (with a Content-Length) and return its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some()
    head, _, rest = data.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: *(\d+)", head, re.I)
    assert length is not None
    while len(rest) < int(length.group(1)):
        rest += await stream.receive_some()
    return int(head.split()[1])


async def test_a_refused_body_does_not_hang_the_connection(tmp_path: Path) -> None:
    """A request without a key is answered before its body arrives, and its connection
    closed (hypercorn 0.18 used to leave such a connection open); the next request, on a
    new connection, is served."""
    body = b'{"tasks": "x"}'
    head = f"POST /job HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    async with trio.open_nursery() as nursery:
        url, shutdown, _app = await start_server(nursery, judge_settings(tmp_path, api_keys=(KEY,)))
        host, port = url.removeprefix("http://").split(":")
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(head)  # and never the body
            assert await read_status(stream) == 401
            assert await stream.receive_some() == b""  # closed by the server
            await stream.aclose()
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert await read_status(stream) == 200
            await stream.aclose()
        shutdown.set()


async def test_job_id_beyond_sqlite_is_404(judge: httpx.AsyncClient) -> None:
    assert (await judge.get(f"/job/{2**70}")).status_code == 404
