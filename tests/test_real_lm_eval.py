"""Real lm-eval runs, offline, through a real server: the dummy model and an API model."""

from __future__ import annotations

import json
from contextlib import aclosing
from typing import Any

import trio

from lmeval_trio.jobs.status import JobStatus
from tests.conftest import DUMMY_JOB, TASKS_DIR, Server, supervisor_of
from tests.support.stub_openai import StubHandle


def completions_job(stub: StubHandle, **extra: Any) -> dict[str, Any]:
    return {
        "model": "local-completions",
        "model_args": {
            "model": "stub-model",
            "base_url": stub.completions_url,
            "tokenizer_backend": "remote",
        },
        "tasks": "tiny_mc,tiny_gen",
        "include_path": str(TASKS_DIR),
        **extra,
    }


async def test_dummy_model_end_to_end(server: Server) -> None:
    job_id = await server.submit({**DUMMY_JOB, "log_samples": True})
    job = await server.wait_status(job_id, JobStatus.COMPLETED, JobStatus.FAILED)
    assert job["status"] == "Completed", job["reason"]
    assert job["exit_code"] == 0 and job["inference_progress_pct"] == 100
    phases = [p["name"] for p in job["progress"]["phases"]]
    assert phases == ["loglikelihood", "generate_until"]
    assert any("tiny_mc" in line for line in job["stdout"])  # lm-eval's results table
    results = (await server.client.get(f"/job/{job_id}/results")).json()
    metrics = {(m["task"], m["metric"], m["filter"]) for m in results["metrics"]}
    assert ("tiny_mc", "acc", "none") in metrics
    assert ("tiny_gen", "exact_match", "strip") in metrics
    assert results["lm_eval_version"] == "0.4.13"
    assert results["n_samples"]["tiny_mc"]["effective"] == 8
    names = [
        a["name"] for a in (await server.client.get(f"/job/{job_id}/artifacts")).json()["artifacts"]
    ]
    assert any(n.startswith("output/dummy/results_") for n in names)
    assert any(n.startswith("output/dummy/samples_tiny_mc_") for n in names)
    sample = next(n for n in names if "samples_tiny_gen" in n)
    download = await server.client.get(f"/job/{job_id}/artifacts/{sample}")
    assert download.status_code == 200
    assert json.loads(download.text.splitlines()[0])["doc_id"] == 0


async def test_api_model_progress_mid_run_and_perfect_scores(
    server: Server, stub: StubHandle
) -> None:
    stub.set_delay(0.15)
    job_id = await server.submit(completions_job(stub))
    supervisor = supervisor_of(server)
    seen: set[int] = set()
    with trio.fail_after(180):
        while True:
            pulse = supervisor.live_changes(job_id)
            if pulse is None:
                break
            version = pulse.version
            job = await server.job(job_id)
            if job["status"] == "Running":
                seen.add(job["inference_progress_pct"])
            await pulse.wait_past(version)
    assert any(0 < pct < 100 for pct in seen), seen  # progress observed mid-run
    job = await server.job(job_id)
    assert job["status"] == "Completed", job["reason"]
    assert job["inference_progress_pct"] == 100
    results = (await server.client.get(f"/job/{job_id}/results")).json()
    values = {(m["task"], m["metric"]): m["value"] for m in results["metrics"]}
    assert values[("tiny_mc", "acc")] == 1.0
    assert values[("tiny_gen", "exact_match")] == 1.0
    assert stub.stats()["v1_requests"] == 38


async def test_lm_eval_failure_is_reported(server: Server) -> None:
    job_id = await server.submit({**DUMMY_JOB, "tasks": "no_such_task"})
    job = await server.wait_status(job_id, JobStatus.FAILED, JobStatus.COMPLETED)
    assert job["status"] == "Failed" and job["exit_code"] == 1
    assert "no_such_task" in job["reason"]
    response = await server.client.get(f"/job/{job_id}/results")
    assert response.status_code == 404 and "no results" in response.json()["detail"]


async def test_event_stream_follows_a_job_to_its_end(server: Server) -> None:
    job_id = await server.submit(DUMMY_JOB)
    events: list[tuple[str, dict[str, Any]]] = []
    last_id = None
    async with (
        server.client.stream("GET", f"/job/{job_id}/events") as stream,
        aclosing(stream.aiter_lines()) as lines,  # type: ignore[type-var]
    ):
        kind = ""
        async for line in lines:
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("id: "):
                last_id = line[4:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    kinds = [k for k, _ in events]
    statuses = [d["status"] for k, d in events if k == "status"]
    assert statuses[-1] == "Completed" and "Running" in statuses
    assert kinds[-1] == "end" and "progress" in kinds and "log" in kinds
    logged = "".join(line for k, d in events if k == "log" for line in d["lines"])
    assert "Running loglikelihood requests" in logged
    # Reconnecting with the last id sends no log line twice.
    assert last_id is not None
    async with server.client.stream(
        "GET", f"/job/{job_id}/events", headers={"Last-Event-ID": last_id}
    ) as stream:
        body = (await stream.aread()).decode()
    assert "event: log" not in body and "event: end" in body


async def test_chat_model_through_the_stub(server: Server, stub: StubHandle) -> None:
    body = {
        "model": "local-chat-completions",
        "model_args": f"model=stub-model,base_url={stub.chat_completions_url}",
        "apply_chat_template": True,
        "tasks": ["tiny_gen"],
        "include_path": str(TASKS_DIR),
    }
    job = await server.wait_status(await server.submit(body), JobStatus.COMPLETED, JobStatus.FAILED)
    assert job["status"] == "Completed", job["reason"]
    results = (await server.client.get(f"/job/{job['job_id']}/results")).json()
    assert [(m["task"], m["value"]) for m in results["metrics"]] == [("tiny_gen", 1.0)]
    assert stub.stats()["chat_requests"] == 6


async def _event_log_lines(server: Server, job_id: int, stream: str) -> list[str]:
    lines: list[str] = []
    async with server.client.stream("GET", f"/job/{job_id}/events") as events:
        kind = ""
        async for line in events.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "log":
                frame = json.loads(line[6:])
                if frame["stream"] == stream:
                    lines.extend(frame["lines"])
    return lines


async def test_every_log_view_shows_each_bar_once_in_its_last_state(
    server: Server, stub: StubHandle
) -> None:
    """A terminal shows one line per tqdm bar; so do GET /job, /logs (range and tail) and the
    event stream, fed by a real lm-eval run whose bars redraw many times."""
    stub.set_delay(0.05)
    job_id = await server.submit(completions_job(stub))
    streamed = await _event_log_lines(server, job_id, "stderr")  # live, from the start
    job = await server.wait_status(job_id, JobStatus.COMPLETED, JobStatus.FAILED)
    assert job["status"] == "Completed", job["reason"]
    raw = (await server.client.get(f"/job/{job_id}/logs?stream=stderr&limit=1048576")).json()
    text: str = raw["text"]
    bars = [line for line in text.split("\n") if "Requesting API" in line]
    redraws = [line.count("\rRequesting API") for line in bars]
    assert len(bars) == 2 and min(redraws) >= 2 and sum(redraws) > 10, redraws
    tail = (await server.client.get(f"/job/{job_id}/logs?stream=stderr&tail=1048576")).json()
    views = {
        "GET /job stderr": job["stderr"],
        "logs range": raw["lines"],
        "logs tail": tail["lines"],
        "events": streamed,
    }
    for view, lines in views.items():
        shown = [line for line in lines if "Requesting API" in line]
        assert len(shown) == len(bars), (view, shown)
        for line in shown:
            assert "\r" not in line and "100%|" in line and line.endswith("\n"), (view, line)
    assert views["logs range"] == views["events"]
    assert views["logs tail"] == views["logs range"]
