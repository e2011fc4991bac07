"""Checks at submission against the real lm-eval task catalog: unknown names (request and
--config), output types a chat model cannot serve, and POST /job?dry_run=true's report.

Attacks: look-alike unicode names, huge names, globs that match nothing, names hidden in a
config file, a dry run that must never queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lmeval_trio.config import Settings
from lmeval_trio.jobs.status import JobStatus
from tests.conftest import (
    DUMMY_JOB,
    TASKS_DIR,
    Server,
    fake_job,
    job_files,
    make_settings,
    start_server,
)

CHAT = {
    "model": "local-chat-completions",
    "model_args": {"model": "stub-model", "base_url": "http://127.0.0.1:9/v1/chat/completions"},
    "apply_chat_template": True,
    "include_path": str(TASKS_DIR),
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The checks under test are on (conftest turns them off for every other test)."""
    return make_settings(tmp_path, check_tasks=True)


async def _refused(server: Server, body: dict[str, Any], status: int = 422) -> dict[str, Any]:
    response = await server.client.post("/job", json=body)
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _dry_run(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    response = await server.client.post("/job", params={"dry_run": "true"}, json=body)
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def _checks(report: dict[str, Any]) -> dict[str, bool]:
    return {check["name"]: check["ok"] for check in report["checks"]}


def _detail(report: dict[str, Any], name: str) -> str:
    (detail,) = [check["detail"] for check in report["checks"] if check["name"] == name]
    return str(detail)


async def _no_jobs(server: Server) -> None:
    assert (await server.client.get("/jobs")).json()["total"] == 0


async def test_unknown_builtin_task_is_refused_with_suggestions(server: Server) -> None:
    body = await _refused(server, {"model": "dummy", "tasks": "arc_easy,arc_easz"})
    (error,) = body["detail"]
    assert error["loc"] == ["body", "tasks"] and error["type"] == "unknown_task"
    assert "'arc_easz' (did you mean arc_easy" in error["msg"]
    assert body["unknown"] == ["arc_easz"]
    assert "arc_easy" in body["suggestions"]["arc_easz"]
    assert _checks(body) == {"policy": True, "parser": True, "gpus": True, "tasks": False}
    assert body["ok"] is False
    await _no_jobs(server)


async def test_include_path_tasks_and_globs_are_known(server: Server) -> None:
    body = await _refused(server, {**DUMMY_JOB, "tasks": ["tiny_mc", "tiny_mcq", "nothing_*"]})
    assert body["unknown"] == ["tiny_mcq", "nothing_*"]
    assert body["suggestions"]["tiny_mcq"][0] == "tiny_mc"
    assert "neither lm-eval nor include_path defines" in body["detail"][0]["msg"]
    report = await _dry_run(server, {**DUMMY_JOB, "tasks": "tiny_*,arc_easy"})
    assert report["ok"] is True, report
    # without the folder its tasks are unknown
    alone = await _refused(server, {"model": "dummy", "tasks": ["tiny_mc"]})
    assert alone["unknown"] == ["tiny_mc"]


async def test_tasks_are_judged_as_lm_eval_merges_a_config_file(
    server: Server, tmp_path: Path
) -> None:
    """The request must name tasks, and lm-eval takes them over the file's: an empty name
    (lm-eval's parser reads "" as [""]) is what runs, and is refused by name."""
    config = job_files(tmp_path) / "run.yaml"
    config.write_text("model: dummy\ntasks:\n  - arc_easy\n  - hellaswagg\n")
    body = await _refused(server, {"config": str(config), "tasks": ""})
    assert body["detail"][0]["loc"] == ["body", "tasks"] and body["unknown"] == [""]
    assert (await _dry_run(server, {"config": str(config), "tasks": "arc_easy"}))["ok"]
    wrong = await _refused(server, {"config": str(config), "tasks": "hellaswagg"})
    assert "hellaswag" in wrong["suggestions"]["hellaswagg"]


async def test_chat_model_refuses_loglikelihood_tasks(server: Server) -> None:
    body = await _refused(server, {**CHAT, "tasks": ["tiny_mc", "tiny_gen"]})
    (error,) = body["detail"]
    assert error["type"] == "output_type" and error["loc"] == ["body", "tasks"]
    assert "'local-chat-completions' cannot serve" in error["msg"]
    assert body["tasks"] == ["tiny_mc (multiple_choice)"]
    tag = await _refused(server, {**CHAT, "model": "openai-chat-completions", "tasks": "ai2_arc"})
    assert tag["tasks"] == ["arc_challenge (multiple_choice)", "arc_easy (multiple_choice)"]
    fine = await _dry_run(server, {**CHAT, "tasks": "tiny_gen"})
    assert _checks(fine)["tasks"] is True
    assert "suits 'local-chat-completions'" in _detail(fine, "tasks")
    assert _checks(fine)["endpoint"] is False  # nothing listens on port 9
    completions = {**CHAT, "model": "local-completions", "tasks": "tiny_mc"}
    assert _checks(await _dry_run(server, completions))["tasks"] is True
    await _no_jobs(server)


async def test_dry_run_reports_every_check_and_queues_nothing(server: Server) -> None:
    report = await _dry_run(server, DUMMY_JOB)
    assert report["ok"] is True
    names = [c["name"] for c in report["checks"]]
    assert names == ["queue", "policy", "parser", "gpus", "tasks", "endpoint"]
    assert all(c["ok"] and c["detail"] for c in report["checks"])
    bad = await _dry_run(server, {**DUMMY_JOB, "num_gpus": 2, "env_vars": {"LD_PRELOAD": "x"}})
    assert bad["ok"] is False
    checks = _checks(bad)
    assert checks["policy"] is False and checks["gpus"] is False and checks["queue"] is True
    assert "tasks" not in checks  # needs the policy's verdict on include_path
    detail = {c["name"]: c["detail"] for c in bad["checks"]}
    assert detail["policy"].startswith("env_vars.LD_PRELOAD:")
    unknown = await _dry_run(server, {"model": "dummy", "tasks": "tiny_mcq"})
    assert _checks(unknown)["tasks"] is False and "tiny_mcq" in _detail(unknown, "tasks")
    await _no_jobs(server)


async def test_failed_submission_keeps_its_shape_and_adds_the_report(server: Server) -> None:
    policy = await _refused(server, {**DUMMY_JOB, "env_vars": {"LD_PRELOAD": "x"}}, 403)
    assert policy["field"] == "env_vars.LD_PRELOAD" and policy["rule"]
    assert policy["checks"] == [{"name": "policy", "ok": False, "detail": policy["detail"]}]
    parser = await _refused(server, {**DUMMY_JOB, "seed": "1,2,3,4,5"})
    assert parser["detail"][0]["type"] == "lm_eval_rejected"
    assert _checks(parser)["policy"] is False  # the policy runs lm-eval's parser first
    await _no_jobs(server)


async def test_own_lm_eval_is_not_checked_against_the_servers_catalog(server: Server) -> None:
    report = await _dry_run(server, fake_job("env"))
    assert report["ok"] is True
    assert "lm_eval_path" in _detail(report, "tasks")


async def test_the_checks_can_be_turned_off(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, make_settings(tmp_path))
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            report = await _dry_run(Server(url, client, app), {"model": "dummy", "tasks": "nope"})
            assert report["ok"] is True
            assert _detail(report, "tasks") == "not checked: LMEVAL_CHECK_TASKS is off"
        shutdown.set()


async def test_a_path_named_as_a_task_is_judged_by_the_path_policy(server: Server) -> None:
    body = await _refused(server, {"model": "dummy", "tasks": "../../../../etc/x"}, 403)
    assert body["field"] == "tasks" and _checks(body) == {"policy": False}


@pytest.mark.parametrize(
    "name",
    [
        "\uff41rc_easy",  # fullwidth a
        "arc_easy\u200b",  # zero-width space
        "x" * 4000,  # under the body's string bound: the catalog must cope
    ],
)
async def test_odd_names_are_refused_by_name(server: Server, name: str) -> None:
    body = await _refused(server, {"model": "dummy", "tasks": [name]}, 422)
    assert body["detail"][0]["type"] == "unknown_task"
    assert body["unknown"] == [name] and len(body["detail"][0]["msg"]) < 2000


async def test_dry_run_reports_a_full_queue(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_queued_jobs=1, max_concurrency=1, check_tasks=True)
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            server = Server(url, client, app)
            running = await server.submit(fake_job("block"))
            await server.wait_status(running, JobStatus.RUNNING)
            await server.submit(fake_job("env"))
            report = await _dry_run(server, fake_job("env"))
            assert _checks(report)["queue"] is False and report["ok"] is False
            assert "queue holds 1 jobs" in report["checks"][0]["detail"]
            assert (await client.post("/jobs/stop")).status_code == 200
        shutdown.set()


async def test_remote_code_tasks_inside_tags_and_groups_are_refused(server: Server) -> None:
    """The policy matches names; the catalog expands ``longcxt`` (a tag of RULER tasks)."""
    body = await _refused(server, {"model": "dummy", "tasks": "arc_easy,longcxt"}, 403)
    assert body["field"] == "tasks" and "LMEVAL_ALLOW_CODE_EXECUTION" in body["rule"]
    assert "(in 'longcxt')" in body["rule"]
    assert _checks(body) == {"policy": True, "parser": True, "gpus": True, "tasks": False}


async def test_remote_code_tags_pass_with_code_execution_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, check_tasks=True, allow_code_execution=True)
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            report = await _dry_run(
                Server(url, client, app), {"model": "dummy", "tasks": "longcxt"}
            )
            assert report["ok"] is True, report
        shutdown.set()
