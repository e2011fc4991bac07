"""Policy decisions on what lm-eval will see: parsed as lm-eval parses, defaults included;
config files judged as paths before they are read and never quoted; strict JSON in and out.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.harness.effective import effective_run
from lmeval_trio.http.params import SUPERVISOR_KEY
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.policy.rules import REMOTE_CODE_MODEL_DEFAULTS
from tests.conftest import fake_job, make_settings, start_server

BASE: dict[str, Any] = {"model": "dummy", "tasks": "tiny_mc"}
CODE = "LMEVAL_ALLOW_CODE_EXECUTION"


@asynccontextmanager
async def judge(tmp_path: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A real server that only judges (nothing dequeues); ``tmp_path/shared`` is a root."""
    (tmp_path / "shared").mkdir(exist_ok=True)
    values = {"allowed_path_roots": (tmp_path / "shared",), "max_concurrency": 0, **overrides}
    async with trio.open_nursery() as nursery:
        url, shutdown, _app = await start_server(nursery, make_settings(tmp_path, **values))
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield client
        shutdown.set()


async def verdict(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post("/job", json={**BASE, **body})
    return response.status_code, response.json()


async def refused_field(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[str, str]:
    status, data = await verdict(client, body)
    assert status == 403, (body, data)
    return data["field"], data["rule"]


# -- trust_remote_code, however it is spelled ----------------------------------------------

SPELLINGS: list[tuple[dict[str, Any], str]] = [
    ({"model_args": '{"trust\\u005fremote_code": true}'}, "model_args"),  # a JSON escape
    ({"model_args": '{"pretrained": "x", "trust_remote_code": "yes"}'}, "model_args"),
    ({"model_args": 'pretrained=x,trust_remote_code="True"'}, "model_args"),  # quoted
    ({"model_args": "pretrained=x,trust_remote_code=TRUE"}, "model_args"),
    ({"model_args": "trust_remote_code=2.5"}, "model_args"),
    ({"model_args": {"pretrained": "x", "trust_remote_code": 1}}, "model_args"),  # a dict
    ({"model_args": {"peft": {"nested": {"trust_remote_code": [1]}}}}, "model_args"),
    ({"gen_kwargs": {"trust_remote_code": True}}, "gen_kwargs"),
    ({"metadata": '{"trust_remote_code": true}'}, "metadata"),
]


async def test_trust_remote_code_is_judged_as_lm_eval_parses_it(tmp_path: Path) -> None:
    async with judge(tmp_path) as client:
        for body, field in SPELLINGS:
            got, rule = await refused_field(client, body)
            assert got == field and CODE in rule, (body, got, rule)
        for harmless in (
            {"model_args": 'pretrained="trust_remote_code=True"'},  # a value, not the key
            {"model_args": '{"trust\\u005fremote_code": false}'},
            {"model_args": "pretrained=x,trust_remote_code=False"},
        ):
            status, data = await verdict(client, harmless)
            assert status == 200, (harmless, data)


def test_effective_values_are_lm_eval_s_own() -> None:
    """The helper returns exactly what lm-eval's parser makes of the argv."""
    run = effective_run({**BASE, "model_args": '{"a\\u0062": 1, "t": "x"}'}, None)
    assert run.values["model_args"] == {"ab": 1, "t": "x"}
    run = effective_run({**BASE, "gen_kwargs": "temperature=0.5,until=['a']"}, None)
    assert run.values["gen_kwargs"] == {"temperature": 0.5, "until": ["a"]}
    assert effective_run({"tasks": "x"}, None).values["model"] == "hf"  # lm-eval's default


# -- defaults that run code ------------------------------------------------------------------


async def test_model_defaults_that_trust_remote_code_are_refused(tmp_path: Path) -> None:
    assert "sglang" in REMOTE_CODE_MODEL_DEFAULTS
    async with judge(tmp_path) as client:
        for model in REMOTE_CODE_MODEL_DEFAULTS:
            field, rule = await refused_field(client, {"model": model})
            assert field == "model" and "trust_remote_code=False" in rule
            body = {"model": model, "model_args": "pretrained=x,trust_remote_code=False"}
            assert (await verdict(client, body))[0] == 200
        for task in ("ruler_vt", "niah_single_1", "babilong_qa3", "tiny_mc,ruler"):
            field, rule = await refused_field(client, {"tasks": task})
            assert field == "tasks" and CODE in rule
    async with judge(tmp_path, allow_code_execution=True) as client:
        assert (await verdict(client, {"model": "sglang"}))[0] == 200
        assert (await verdict(client, {"tasks": "ruler_vt"}))[0] == 200


# -- --config files --------------------------------------------------------------------------


async def test_config_is_judged_as_a_path_before_it_is_read(tmp_path: Path) -> None:
    """A file outside the roots (or in the data dir) is refused without being parsed: the
    refusal is the same whatever it holds, and quotes nothing of it."""
    outside = tmp_path / "outside.yaml"
    outside.write_text("model_args: 'api_key=hunter2-outside'\n")
    async with judge(tmp_path) as client:
        for path in (outside, tmp_path / "data" / "jobs.db"):
            field, rule = await refused_field(client, {"config": str(path)})
            assert field == "config" and "hunter2" not in rule


async def test_config_refusals_never_quote_the_file(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    cases = {
        "broken.yaml": "model: dummy\nsecret_line: [hunter2-broken, {\n",
        "tabs.yaml": "model: dummy\n\tapi_key: hunter2-tabs\n",
        "latin1.yaml": None,
        "unknown.yaml": "hunter2_unknown_key: 1\n",
        "list.yaml": "- hunter2-list\n",
    }
    async with judge(tmp_path) as client:
        for name, text in cases.items():
            path = shared / name
            if text is None:
                path.write_bytes(b"model: \xe9hunter2-latin1\n")
            else:
                path.write_text(text)
            status, data = await verdict(client, {"config": str(path)})
            assert status in (403, 422), (name, data)
            assert "hunter2" not in json.dumps(data), (name, data)
        status, data = await verdict(client, {"config": str(shared / "broken.yaml")})
        assert "line 2" in data["rule"] or "line 3" in data["rule"], data


async def test_config_values_are_judged_at_submission_and_never_quoted(tmp_path: Path) -> None:
    """A config file's values go through lm-eval's own parser (and the flag's type) when the
    job is submitted, not minutes into it; refusals name config.<key> and never quote it."""
    shared = tmp_path / "shared"
    cases = {
        "include_path": "include_path: TOPSECRET-alpha-123\n",
        "seed": 'seed: "TOPSECRET,eps"\n',
        "limit": 'limit: "5"\n',
        "num_fewshot": 'num_fewshot: "3"\n',
        "output_path": 'output_path: "out\\0TOPSECRET"\n',
        "log_samples": "log_samples: TOPSECRET\n",
    }
    async with judge(tmp_path) as client:
        for key, text in cases.items():
            (shared / f"{key}.yaml").write_text(text)
            status, data = await verdict(client, {"config": str(shared / f"{key}.yaml")})
            assert status in (403, 422), (key, data)
            shown = json.dumps(data)
            assert "TOPSECRET" not in shown and f"config.{key}" in shown, (key, data)
        (shared / "fine.yaml").write_text("seed: [1, 2, 3, 4]\nlimit: 5\nnum_fewshot: 0\n")
        status, data = await verdict(client, {"config": str(shared / "fine.yaml")})
        assert status == 200, data
        status, data = await verdict(client, {"seed": "x,y"})
        assert status == 422, data
        assert "functools" not in json.dumps(data) and "0x" not in json.dumps(data), data


async def test_config_contents_are_merged_as_lm_eval_merges_them(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    config = shared / "c.yaml"
    async with judge(tmp_path) as client:
        config.write_text("model_args: pretrained=x,trust_remote_code=True\n")
        field, _rule = await refused_field(client, {"config": str(config)})
        assert field == "config.model_args"
        # lm-eval: a model_args on the command line replaces the file's entirely.
        body = {"config": str(config), "model_args": "pretrained=x"}
        assert (await verdict(client, body))[0] == 200
        config.write_text("trust_remote_code: 'no'\n")  # truthy for lm-eval: not a switch
        status, data = await verdict(client, {"config": str(config)})
        assert status == 422 and "config.trust_remote_code" in json.dumps(data), data
        config.write_text("model: sglang\n")  # a default that trusts remote code
        assert (await refused_field(client, {"config": str(config), "model": None}))[0] == (
            "config.model"
        )
        config.write_text(f"include_path: {tmp_path / 'data'}\n")
        assert (await refused_field(client, {"config": str(config)}))[0] == ("config.include_path")


# -- non-finite numbers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        '{"model": "dummy", "tasks": "t", "limit": 1e309}',
        '{"model": "dummy", "tasks": "t", "limit": NaN}',
        '{"model": "dummy", "tasks": "t", "limit": -Infinity}',
        '{"model": "dummy", "tasks": "t", "model_args": {"temperature": Infinity}}',
        '{"model": "dummy", "tasks": "t", "env_vars": {}, "x": [1, [2, {"y": 1E400}]]}',
    ],
)
async def test_non_finite_numbers_are_422(tmp_path: Path, raw: str) -> None:
    async with judge(tmp_path) as client:
        response = await client.post(
            "/job", content=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert "non-finite" in response.text


async def test_the_server_never_emits_invalid_json(tmp_path: Path) -> None:
    """A results file lm-eval wrote with NaN (it can) is served as strict JSON, and a
    listing stays parseable by a strict parser."""
    settings = make_settings(tmp_path)
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            sup: Supervisor = app.extensions[SUPERVISOR_KEY]
            job_id = (await client.post("/job", json=fake_job("env"))).json()["job_id"]
            await sup.wait(job_id)
            record = await sup.get(job_id)
            assert record.status is JobStatus.COMPLETED
            out = record.output_dir / "dummy"
            out.mkdir(parents=True)
            nan = '{"results": {"t": {"acc,none": NaN, "acc_stderr,none": Infinity}}}'
            (out / "results_2026.json").write_text(nan)
            for path in (f"/job/{job_id}/results", "/jobs", f"/job/{job_id}"):
                text = (await client.get(path)).text
                strict = json.loads(text, parse_constant=_no_constants)
                assert strict is not None
            results = (await client.get(f"/job/{job_id}/results")).json()
            assert results["metrics"][0]["value"] is None
        shutdown.set()


def _no_constants(name: str) -> Any:
    raise AssertionError(f"invalid JSON constant {name}")


async def test_the_job_reads_the_config_as_judged(tmp_path: Path) -> None:
    """The config file changed after its verdict changes nothing: the job reads a copy."""
    config = tmp_path / "shared" / "c.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text("limit: 2\n")
    settings = make_settings(tmp_path, max_concurrency=1)
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        sup: Supervisor = app.extensions[SUPERVISOR_KEY]
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            body = {**fake_job("env"), "config": str(config)}
            job_id = (await client.post("/job", json=body)).json()["job_id"]
            config.write_text("trust_remote_code: true\n")  # swapped after the verdict
            record = await sup.wait(job_id)
            assert record.status is JobStatus.COMPLETED
            argv = json.loads(record.stdout_path.read_text())["argv"]
            copy = next(w.split("=", 1)[1] for w in argv if w.startswith("--config="))
            assert Path(copy).parent == record.job_dir
            assert await trio.Path(copy).read_text() == "limit: 2\n"
        shutdown.set()


async def test_jobs_run_with_code_execution_switched_off(tmp_path: Path) -> None:
    """Whatever the server's own environment says, a job's effective setting is off."""
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, make_settings(tmp_path))
        sup: Supervisor = app.extensions[SUPERVISOR_KEY]
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            job_id = (await client.post("/job", json=fake_job("env"))).json()["job_id"]
            record = await sup.wait(job_id)
            env = json.loads(await trio.Path(record.stdout_path).read_text())["env"]
            assert env["HF_ALLOW_CODE_EVAL"] == env["HF_DATASETS_TRUST_REMOTE_CODE"] == "0"
        shutdown.set()
