"""The original server's API, route by route, through a real hypercorn (fake lm_eval child)."""

from __future__ import annotations

import json
import shlex

import pytest

from lmeval_trio.jobs.status import JobStatus
from tests.conftest import FAKE_LM_EVAL, Server, fake_job, supervisor_of

SUMMARY_KEYS = {"job_id", "argument", "status", "timestamp", "exit_code", "inference_progress_pct"}


async def test_submit_returns_the_original_shape(server: Server) -> None:
    response = await server.client.post("/job", json=fake_job("env"))
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "status": "success",
        "message": f"Job {body['job_id']} successfully queued.",
        "job_id": body["job_id"],
    }
    assert list(body) == ["status", "message", "job_id"]  # the original's order, too


async def test_completed_job_summary_and_detail(server: Server) -> None:
    job_id = await server.submit(fake_job("env", SECRET_TOKEN="s3cret-value"))
    job = await server.wait_status(job_id, JobStatus.COMPLETED)
    assert job.keys() >= SUMMARY_KEYS
    assert job["status"] == "Completed"
    assert job["exit_code"] == 0
    assert job["inference_progress_pct"] == 100
    assert job["timestamp"] == job["started_at"] and job["timestamp"].endswith("+00:00")
    argv = shlex.split(job["argument"])
    assert argv[:2] == [str(FAKE_LM_EVAL), "run"]
    assert "--model=dummy" in argv and "--tasks=fake" in argv
    child = json.loads("".join(job["stdout"]))
    # env_vars reach the child (its own log says so); the API shows its output masked.
    record = await supervisor_of(server).get(job_id)
    assert json.loads(record.stdout_path.read_text())["env"]["SECRET_TOKEN"] == "s3cret-value"
    assert child["env"]["SECRET_TOKEN"] == "***"
    assert child["env"]["PYTHONUNBUFFERED"] == "1"
    assert child["env"]["HF_HUB_OFFLINE"] == "1"
    assert job["request"]["env_vars"]["SECRET_TOKEN"] == "***"  # never echoed back
    assert child["argv"][1:] == argv[1:]


async def test_list_and_running_only_filters(server: Server) -> None:
    done = await server.submit(fake_job("env"))
    await server.wait_status(done, JobStatus.COMPLETED)
    running = await server.submit(fake_job("block"))
    await server.wait_status(running, JobStatus.RUNNING)
    everything = (await server.client.get("/jobs")).json()["jobs"]
    assert [j["job_id"] for j in everything] == [done, running]
    assert all(j.keys() >= SUMMARY_KEYS for j in everything)
    for query in ("include_completed=False", "include_finished=false", "include_completed=0"):
        active = (await server.client.get(f"/jobs?{query}")).json()["jobs"]
        assert [j["job_id"] for j in active] == [running], query
    by_status = (await server.client.get("/jobs?status=Completed")).json()
    assert [j["job_id"] for j in by_status["jobs"]] == [done] and by_status["total"] == 1
    newest = (await server.client.get("/jobs?order=desc&limit=1")).json()
    assert [j["job_id"] for j in newest["jobs"]] == [running] and newest["total"] == 2
    await server.client.get(f"/job/{running}/stop")


@pytest.mark.parametrize("path", ["/job/{id}/stop", "/job/{id}/dequeue"])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_stop_a_running_job(server: Server, path: str, method: str) -> None:
    job_id = await server.submit(fake_job("block"))
    await server.wait_status(job_id, JobStatus.RUNNING)
    response = await server.client.request(method, path.format(id=job_id))
    assert response.status_code == 200
    assert response.json()["job_status"] == "Stopped"
    job = await server.job(job_id)
    assert job["status"] == "Stopped" and job["reason"] == "stopped by request"
    again = await server.client.get(f"/job/{job_id}/stop")
    assert again.status_code == 200 and "already finished" in again.json()["message"]


@pytest.mark.parametrize("path", ["/jobs/stop", "/jobs/dequeue"])
async def test_stop_all(server: Server, path: str) -> None:
    ids = [await server.submit(fake_job("block")) for _ in range(6)]  # 4 run, 2 queue
    await server.wait_status(ids[0], JobStatus.RUNNING)
    response = await server.client.post(path)
    assert response.status_code == 200 and sorted(response.json()["job_ids"]) == ids
    jobs = (await server.client.get("/jobs")).json()["jobs"]
    assert {j["status"] for j in jobs} == {"Stopped"}


async def test_delete_one_and_all(server: Server) -> None:
    first = await server.submit(fake_job("block"))
    second = await server.submit(fake_job("env"))
    await server.wait_status(first, JobStatus.RUNNING)
    job_dir = server.app.extensions["lmeval_trio.settings"].data_dir / "jobs" / str(first)
    assert job_dir.exists()
    assert (await server.client.delete(f"/job/{first}")).status_code == 200
    assert not job_dir.exists()
    assert (await server.client.get(f"/job/{first}")).status_code == 404
    assert (await server.client.delete("/jobs")).status_code == 200
    assert (await server.client.get("/jobs")).json()["jobs"] == []
    third = await server.submit(fake_job("env"))
    assert third > second  # ids never repeat


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/job/999"),
        ("GET", "/job/999/stop"),
        ("POST", "/job/999/dequeue"),
        ("DELETE", "/job/999"),
        ("POST", "/job/999/resume"),
        ("GET", "/job/999/logs"),
    ],
)
async def test_unknown_job_is_a_json_404(server: Server, method: str, path: str) -> None:
    response = await server.client.request(method, path)
    assert response.status_code == 404
    assert response.json() == {"detail": "No lm-evaluation-harness job with ID=999 found."}


async def test_unknown_route_is_json(server: Server) -> None:
    response = await server.client.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert "detail" in response.json()


async def test_boolean_flags_follow_their_value(server: Server) -> None:
    body = {
        **fake_job("env"),
        "log_samples": False,
        "write_out": True,
        "apply_chat_template": True,
        "fewshot_as_multiturn": False,
    }
    job_id = await server.submit(body)
    job = await server.wait_status(job_id, JobStatus.COMPLETED)
    argv = shlex.split(job["argument"])
    assert "--log_samples" not in argv
    assert "--write_out" in argv and "--apply_chat_template" in argv
    assert not any(a.startswith("--fewshot_as_multiturn") for a in argv)


async def test_list_and_mapping_fields(server: Server) -> None:
    body = {
        **fake_job("env"),
        "tasks": ["a", "b,c"],
        "model_args": {"pretrained": "x", "n": 2},
        "gen_kwargs": "temperature=0",
        "limit": 5,
        "seed": 42,
        "apply_chat_template": "chatml",
    }
    job = await server.wait_status(await server.submit(body), JobStatus.COMPLETED)
    argv = shlex.split(job["argument"])
    assert "--tasks=a,b,c" in argv
    assert '--model_args={"pretrained":"x","n":2}' in argv
    assert "--gen_kwargs=temperature=0" in argv
    assert "--limit=5.0" in argv and "--seed=42" in argv
    assert "--apply_chat_template=chatml" in argv


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tasks": "x", "no_such_flag": 1}, "no_such_flag"),
        ({"tasks": "x", "limit": "lots"}, "limit"),
        ({"tasks": "x", "num_fewshot": 1.5}, "num_fewshot"),
        ({"model": "dummy"}, "tasks"),
        ({"tasks": "x", "env_vars": {"A": 1}}, "env_vars"),
        ({"tasks": "x", "seed": "a,b"}, "seed"),
        ({"tasks": "x", "cache_requests": "sometimes"}, "cache_requests"),
    ],
)
async def test_bad_requests_name_the_field(
    server: Server, body: dict[str, object], field: str
) -> None:
    response = await server.client.post("/job", json=body)
    assert response.status_code == 422, response.text
    locations = [item["loc"] for item in response.json()["detail"]]
    assert any(field in loc for loc in locations), locations


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"", b'"text"'])
async def test_non_object_bodies_are_422(server: Server, raw: bytes) -> None:
    response = await server.client.post(
        "/job", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "body"]


async def test_bad_query_parameters(server: Server) -> None:
    for query in ("include_completed=maybe", "limit=0", "limit=x", "status=Done"):
        response = await server.client.get(f"/jobs?{query}")
        assert response.status_code == 422, query
        assert response.json()["detail"][0]["loc"][0] == "query"


async def test_failed_job_reports_exit_code_and_reason(server: Server) -> None:
    job_id = await server.submit(fake_job("exit", FAKE_CODE="3"))
    job = await server.wait_status(job_id, JobStatus.FAILED)
    assert job["exit_code"] == 3
    assert job["reason"] == "lm-eval exited with code 3: ValueError: fake failure for the test"


async def test_openapi_and_offline_docs(server: Server) -> None:
    spec = (await server.client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    request_schema = json.dumps(spec)
    for flag in ("model_args", "log_samples", "env_vars", "lm_eval_path", "include_path"):
        assert flag in request_schema
    docs = (await server.client.get("/docs")).text
    assert "/static/swagger-ui/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    asset = await server.client.get("/static/swagger-ui/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000
