"""Sweeps: all-or-nothing admission, max_parallel at dispatch, stop/resume/delete, the
bad inputs an attacker would send, and a kill -9 of a real hypercorn mid-sweep."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.http.params import SUPERVISOR_KEY
from lmeval_trio.jobs.status import JobStatus
from tests.conftest import DUMMY_JOB, Server, fake_job, make_settings, start_server, supervisor_of
from tests.support.stub_openai import StubHandle
from tests.test_real_lm_eval import completions_job
from tests.test_server_process import _wait_all_finished, _wait_for_pids, hypercorn_server


async def _submit(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/sweeps", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def _until(server: Server, check: Callable[[Supervisor], bool]) -> None:
    """Wait (on the supervisor's change signal, no polling) until ``check`` holds."""
    supervisor = supervisor_of(server)
    with trio.fail_after(60):
        while True:
            version = supervisor.changed.version
            if check(supervisor):
                return
            await supervisor.changed.wait_past(version)


def _statuses(supervisor: Supervisor, ids: list[int]) -> list[JobStatus | None]:
    return [
        supervisor.live.jobs[i].record.status if i in supervisor.live.jobs else None for i in ids
    ]


def _running(ids: list[int]) -> Callable[[Supervisor], int]:
    def count(supervisor: Supervisor) -> int:
        return sum(s is JobStatus.RUNNING for s in _statuses(supervisor, ids))

    return count


async def _sweep(client: httpx.AsyncClient, sweep_id: int) -> dict[str, Any]:
    response = await client.get(f"/sweeps/{sweep_id}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def test_a_matrix_sweep_runs_each_cell_as_a_job(server: Server) -> None:
    body = {
        "name": "grid",
        "base": fake_job("env"),
        "matrix": {"num_fewshot": [0, 1], "limit": [1, 2]},
        "baseline": "num_fewshot=0 | limit=1",
    }
    submitted = await _submit(server.client, body)
    assert submitted["status"] == "success"
    ids = submitted["job_ids"]
    assert len(ids) == 4
    for job_id in ids:
        await server.wait_status(job_id, JobStatus.COMPLETED)
    sweep = await _sweep(server.client, submitted["sweep_id"])
    assert sweep["status"] == "Completed"
    assert sweep["counts"]["Completed"] == 4 and sweep["progress_pct"] == 100
    assert sweep["eta_s"] == 0.0
    keys = [cell["key"] for cell in sweep["cells"]]
    assert keys == [
        "num_fewshot=0 | limit=1",
        "num_fewshot=0 | limit=2",
        "num_fewshot=1 | limit=1",
        "num_fewshot=1 | limit=2",
    ]
    assert [cell["job_id"] for cell in sweep["cells"]] == ids
    listed = (await server.client.get("/jobs")).json()["jobs"]
    assert [(j["sweep_id"], j["sweep_cell"]) for j in listed] == [
        (submitted["sweep_id"], key) for key in keys
    ]
    for job, cell in zip(listed, sweep["cells"], strict=True):  # each ran its own request
        assert job["request"]["num_fewshot"] == cell["request"]["num_fewshot"]
        assert job["request"]["limit"] == cell["request"]["limit"]
        assert f"--limit={cell['request']['limit']}" in job["argument"]
    page = (await server.client.get("/sweeps?limit=1&order=desc")).json()
    assert page["total"] == 1 and page["sweeps"][0]["sweep_id"] == submitted["sweep_id"]
    assert "cells" not in page["sweeps"][0]


async def test_max_parallel_holds_a_sweep_without_blocking_other_jobs(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_concurrency=3)
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            server = Server(url, client, app)
            body = {
                "name": "narrow",
                "base": fake_job("env_block"),
                "matrix": {"limit": [1, 2, 3]},
                "max_parallel": 1,
            }
            sweep = await _submit(client, body)
            ids = sweep["job_ids"]
            other = await server.submit(fake_job("env_block"))  # after the sweep's jobs
            await server.wait_status(other, JobStatus.RUNNING)
            await _until(server, lambda s: _running(ids)(s) == 1)
            assert _statuses(app.extensions[SUPERVISOR_KEY], ids)[1:] == [JobStatus.QUEUED] * 2
            assert app.extensions[SUPERVISOR_KEY].slots.free == 1  # the waiting hold none
            await client.post(f"/job/{ids[0]}/stop")
            await server.wait_status(ids[1], JobStatus.RUNNING)
            assert _running(ids)(app.extensions[SUPERVISOR_KEY]) == 1
            stopped = (await client.post(f"/sweeps/{sweep['sweep_id']}/stop")).json()
            assert sorted(stopped["job_ids"]) == ids[1:]
            view = await _sweep(client, sweep["sweep_id"])
            assert view["status"] == "Stopped" and view["counts"]["Stopped"] == 3
            resumed = (await client.post(f"/sweeps/{sweep['sweep_id']}/resume")).json()
            assert len(resumed["job_ids"]) == 3
            await _until(server, lambda s: _running(resumed["job_ids"])(s) == 1)
            view = await _sweep(client, sweep["sweep_id"])
            assert [c["job_id"] for c in view["cells"]] == resumed["job_ids"]
            assert view["counts"]["Running"] == 1 and view["counts"]["Queued"] == 2
            for job_id in resumed["job_ids"]:
                assert (await server.job(job_id))["resumed_from"] in ids
            nothing = await client.post(f"/sweeps/{sweep['sweep_id']}/resume")
            assert nothing.status_code == 409, nothing.text
            deleted = (await client.delete(f"/sweeps/{sweep['sweep_id']}")).json()
            assert sorted(deleted["job_ids"]) == sorted(ids + resumed["job_ids"])
            assert (await client.get(f"/sweeps/{sweep['sweep_id']}")).status_code == 404
            left = (await client.get("/jobs")).json()["jobs"]
            assert [j["job_id"] for j in left] == [other]
            await client.post(f"/job/{other}/stop")
        shutdown.set()


async def test_one_bad_cell_refuses_the_whole_sweep(server: Server) -> None:
    body = {
        "name": "mixed",
        "base": fake_job("env"),
        "cells": [
            {"key": "fine"},
            {"key": "bad type", "num_fewshot": "many"},
            {"key": "not allowed", "lm_eval_path": "/bin/sh"},
        ],
    }
    response = await server.client.post("/sweeps", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    by_cell = {e["cell"]: e for e in errors}
    assert by_cell["bad type"]["loc"][:4] == ["body", "cells", 1, "num_fewshot"]
    assert by_cell["not allowed"]["loc"] == ["body", "cells", 2, "lm_eval_path"]
    assert by_cell["not allowed"]["type"] == "policy_violation"
    assert "fine" not in by_cell
    assert (await server.client.get("/jobs")).json()["total"] == 0
    assert (await server.client.get("/sweeps")).json() == {"sweeps": [], "total": 0}


BASE = fake_job("env")


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"name": "x", "base": BASE, "matrix": {"nope": [1]}}, ["body", "matrix", "nope"]),
        ({"name": "x", "base": BASE, "matrix": {"limit": []}}, ["body", "matrix", "limit"]),
        ({"name": "x", "base": BASE, "matrix": {}}, ["body", "matrix"]),
        ({"name": "x", "base": BASE}, ["body", "matrix"]),
        ({"name": "x", "base": BASE, "matrix": {"limit": [1]}, "cells": [{}]}, ["body", "matrix"]),
        ({"name": "x", "base": BASE, "cells": []}, ["body", "cells"]),
        ({"name": "x", "base": BASE, "cells": [{}] * 1001}, ["body", "cells"]),
        ({"name": "x", "base": BASE, "cells": [{"key": "a"}, {"key": "a"}]}, ["body", "cells"]),
        ({"name": "x", "base": BASE, "cells": [{"key": 7}]}, ["body", "cells", 0, "key"]),
        ({"name": "x", "base": BASE, "cells": [{"key": " "}]}, ["body", "cells", 0, "key"]),
        ({"name": "x", "base": BASE, "cells": ["limit"]}, ["body", "cells", 0]),
        (
            {"name": "x", "base": BASE, "matrix": {f: list(range(100)) for f in ("limit", "seed")}},
            ["body", "matrix"],
        ),
        (
            {"name": "x", "base": BASE, "matrix": {"limit": [1]}, "baseline": "limit=2"},
            ["body", "baseline"],
        ),
        ({"name": "x", "base": BASE, "matrix": {"limit": [1]}, "max_parallel": 0}, None),
        ({"name": "x", "base": BASE, "matrix": {"limit": [1]}, "max_parallel": "2"}, None),
        ({"name": "x", "base": BASE, "matrix": {"limit": [1]}, "max_parallel": 1.5}, None),
        ({"name": "", "base": BASE, "matrix": {"limit": [1]}}, ["body", "name"]),
        ({"name": "a\nb", "base": BASE, "matrix": {"limit": [1]}}, ["body", "name"]),
        ({"name": "x", "base": BASE, "matrix": {"limit": [1]}, "extra": 1}, ["body", "extra"]),
        ({"name": "x", "base": [], "matrix": {"limit": [1]}}, ["body", "base"]),
        ({"name": "x", "base": BASE, "matrix": {"limit": 1}}, ["body", "matrix", "limit"]),
        ({"name": "x", "base": {"nope": 1}, "matrix": {"limit": [1]}}, ["body", "cells", 0]),
        ({"name": "x", "base": BASE, "matrix": {"model_args": ["a" * 600]}}, ["body", "matrix"]),
        ({"name": "x" * 201, "base": BASE, "matrix": {"limit": [1]}}, ["body", "name"]),
        (
            {"name": "x", "base": BASE, "matrix": {"limit": [1]}, "baseline": 1},
            ["body", "baseline"],
        ),
        (
            {"name": "x", "base": BASE, "matrix": {"limit": [1], "seed": [[[[1]]]]}},
            ["body", "cells"],
        ),
        (
            {"name": "x", "base": BASE, "cells": [{"num_gpus": 64}]},
            ["body", "cells", 0, "num_gpus"],
        ),
        ({"name": "x", "base": BASE, "matrix": {"num_fewshot": [1, "x"]}}, ["body", "cells", 1]),
    ],
)
async def test_bad_sweeps_are_refused_naming_the_field(
    server: Server, body: dict[str, Any], loc: list[Any] | None
) -> None:
    response = await server.client.post("/sweeps", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    wanted = loc or ["body", "max_parallel"]
    assert any(e["loc"][: len(wanted)] == wanted for e in detail), detail
    assert (await server.client.get("/jobs")).json()["total"] == 0


@pytest.mark.parametrize(
    "raw", [b"[]", b"null", b"{", b'{"name": NaN}', b"\xff\xfe", b"[" * 100_000]
)
async def test_a_body_that_is_no_object_is_refused(server: Server, raw: bytes) -> None:
    response = await server.client.post(
        "/sweeps", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "body"


@pytest.mark.parametrize(
    "path",
    [
        "/sweeps/abc",
        "/sweeps/-1",
        "/sweeps/1.5",
        "/sweeps/999999999999999999999",
        "/sweeps/\uff11",
        "/sweeps/1/",
        "/sweeps/1/results",
        "/sweeps/9223372036854775808",
    ],
)
async def test_odd_sweep_ids_are_404(server: Server, path: str) -> None:
    response = await server.client.get(path)
    assert response.status_code == 404, response.text
    assert "detail" in response.json()


@pytest.mark.parametrize(
    ("query", "name"),
    [("limit=0", "limit"), ("limit=x", "limit"), ("offset=-1", "offset"), ("order=up", "order")],
)
async def test_bad_sweep_list_queries_name_the_parameter(
    server: Server, query: str, name: str
) -> None:
    response = await server.client.get(f"/sweeps?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", name]


async def test_a_sweep_that_would_overflow_the_queue_is_refused_whole(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_queued_jobs=3, max_concurrency=0)
    async with trio.open_nursery() as nursery:
        url, shutdown, _app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            body = {"name": "big", "base": BASE, "matrix": {"limit": [1, 2, 3, 4]}}
            response = await client.post("/sweeps", json=body)
            assert response.status_code == 429, response.text
            assert (await client.get("/jobs")).json()["total"] == 0
            body["matrix"] = {"limit": [1, 2, 3]}
            assert (await client.post("/sweeps", json=body)).status_code == 200
        shutdown.set()


async def test_secrets_in_cell_keys_are_masked(server: Server) -> None:
    secret = "sk-very-secret-value-123"
    body = {
        "name": "keys",
        "base": fake_job("env"),
        "matrix": {"model_args": [f"api_key={secret}", "api_key=another-secret-456"]},
    }
    submitted = await _submit(server.client, body)
    for job_id in submitted["job_ids"]:
        await server.wait_status(job_id)
    for path in (f"/sweeps/{submitted['sweep_id']}", "/jobs", "/sweeps"):
        text = (await server.client.get(path)).text
        assert secret not in text and "another-secret-456" not in text
        assert "model_args=api_key=***" in text or path == "/sweeps"


async def test_kill_9_mid_sweep_loses_nothing(tmp_path: Path) -> None:
    """A sweep of 3 cells, one slot and max_parallel 1: the server is killed while the
    first cell runs; after the restart the sweep is whole, the first cell is requeued and
    completes, the others run once each, and no two of its cells ever ran at once."""
    cells = [
        {"key": "first", "env_vars": {"FAKE_MODE": "tree_once", "FAKE_MARKER": "./ran-once"}},
        {"key": "second"},
        {"key": "third"},
    ]
    body = {"name": "durable", "base": BASE, "cells": cells, "max_parallel": 1}
    async with hypercorn_server(tmp_path / "data", MAX_CONCURRENCY="2") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            submitted = await _submit(client, body)
            ids = submitted["job_ids"]
            await _wait_for_pids(client, ids[0], server)
            before = await _sweep(client, submitted["sweep_id"])
            assert before["counts"]["Running"] == 1 and before["counts"]["Queued"] == 2
        os.killpg(server.proc.pid, signal.SIGKILL)
        await server.proc.wait()
    async with hypercorn_server(tmp_path / "data", MAX_CONCURRENCY="2") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            await _wait_all_finished(client, ids)
            after = await _sweep(client, submitted["sweep_id"])
            assert [c["key"] for c in after["cells"]] == ["first", "second", "third"]
            assert [c["job_id"] for c in after["cells"]] == ids
            assert after["status"] == "Completed" and after["job_ids"] == ids
            jobs = [(await client.get(f"/job/{i}")).json() for i in ids]
            assert [j["attempts"] for j in jobs] == [2, 1, 1]
            spans = sorted((j["started_at"], j["finished_at"]) for j in jobs)
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
        server.proc.send_signal(signal.SIGTERM)
        await server.proc.wait()


async def test_a_real_2x2_sweep_tabulates_each_jobs_own_results(server: Server) -> None:
    """Real lm-eval (dummy model, whose scores are random): two model settings x two tasks;
    the table and its CSV hold exactly each job's own metrics."""
    base = {k: v for k, v in DUMMY_JOB.items() if k not in ("tasks", "model_args")}
    settings = ["pretrained=dummy-a", "pretrained=dummy-b"]
    body = {
        "name": "real",
        "base": base,
        "matrix": {"model_args": settings, "tasks": ["tiny_mc", "tiny_gen"]},
        "baseline": "model_args=pretrained=dummy-a | tasks=tiny_mc",
    }
    submitted = await _submit(server.client, body)
    for job_id, (model_args, task) in zip(
        submitted["job_ids"], itertools.product(settings, ["tiny_mc", "tiny_gen"]), strict=True
    ):
        job = await server.wait_status(job_id, JobStatus.COMPLETED, JobStatus.FAILED)
        assert job["status"] == "Completed", job["reason"]
        assert f"--model_args={model_args}" in job["argument"] and task in job["argument"]
    sweep_id = submitted["sweep_id"]
    table = (await server.client.get(f"/sweeps/{sweep_id}/results")).json()
    assert table["baseline"] == "model_args=pretrained=dummy-a | tasks=tiny_mc"
    columns = [c["key"] for c in table["columns"]]
    assert [c["job_id"] for c in table["columns"]] == submitted["job_ids"]
    expected: dict[tuple[str, str, str], dict[str, Any]] = {}
    for key, job_id in zip(columns, submitted["job_ids"], strict=True):
        own = (await server.client.get(f"/job/{job_id}/results")).json()["metrics"]
        assert own, job_id
        for m in own:
            row = expected.setdefault((m["task"], m["metric"], m["filter"]), {})
            row[key] = (m["value"], m["stderr"])
    got = {
        (r["task"], r["metric"], r["filter"]): {
            k: (r["values"][k], r["stderr"][k]) for k in columns if r["values"][k] is not None
        }
        for r in table["rows"]
    }
    assert got == expected
    assert {r["task"] for r in table["rows"]} == {"tiny_mc", "tiny_gen"}
    csv_url = f"/sweeps/{sweep_id}/results"
    for response in (
        await server.client.get(csv_url, params={"format": "csv"}),
        await server.client.get(csv_url, headers={"Accept": "text/csv"}),
    ):
        assert response.headers["content-type"].startswith("text/csv")
        lines = list(csv.reader(io.StringIO(response.text)))
        assert lines[0] == ["task", "metric", "filter"] + [
            h for k in columns for h in (k, f"{k} stderr")
        ]
        for line in lines[1:]:
            row = expected[(line[0], line[1], line[2])]
            for index, key in enumerate(columns):
                value, stderr = line[3 + 2 * index], line[4 + 2 * index]
                if key not in row:
                    assert value == stderr == ""
                    continue
                assert float(value) == row[key][0]
                assert stderr == "" if row[key][1] is None else float(stderr) == row[key][1]
        assert len(lines) == 1 + len(expected)


async def test_csv_cells_cannot_smuggle_formulas(server: Server) -> None:
    """A cell key is the user's text: in the CSV it must not start a spreadsheet formula."""
    body = {
        "name": "csv",
        "base": DUMMY_JOB,
        "cells": [{"key": '=HYPERLINK("http://evil","x")', "tasks": ["tiny_mc"]}],
    }
    submitted = await _submit(server.client, body)
    await server.wait_status(submitted["job_ids"][0], JobStatus.COMPLETED)
    text = (await server.client.get(f"/sweeps/{submitted['sweep_id']}/results?format=csv")).text
    header = next(csv.reader(io.StringIO(text)))
    assert header[3] == '\'=HYPERLINK("http://evil","x")'
    assert not any(field.startswith(("=", "+", "@")) for field in header)
    response = await server.client.get(f"/sweeps/{submitted['sweep_id']}/results?format=xml")
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == [
        "query",
        "format",
    ]


async def test_the_readme_sweep_example_runs_offline(server: Server) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("cat > sweep.json <<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    body = json.loads(block.replace("$PWD", str(Path(__file__).parents[1])))
    submitted = await _submit(server.client, body)
    assert len(submitted["job_ids"]) == 4
    for job_id in submitted["job_ids"]:
        job = await server.wait_status(job_id, JobStatus.COMPLETED, JobStatus.FAILED)
        assert job["status"] == "Completed", job["reason"]
    table = (await server.client.get(f"/sweeps/{submitted['sweep_id']}/results")).json()
    assert table["baseline"] == "num_fewshot=0 | limit=6"
    [row] = table["rows"]
    assert (row["task"], row["metric"]) == ("example_arith", "acc")
    assert all(isinstance(v, float) for v in row["values"].values())


async def test_a_cell_resumed_as_a_job_stays_in_its_sweep(server: Server) -> None:
    body = {"name": "failing", "base": fake_job("exit"), "cells": [{"key": "a"}, {"key": "b"}]}
    submitted = await _submit(server.client, body)
    first, second = submitted["job_ids"]
    for job_id in (first, second):
        await server.wait_status(job_id, JobStatus.FAILED)
    sweep = await _sweep(server.client, submitted["sweep_id"])
    assert sweep["status"] == "Failed" and sweep["counts"]["Failed"] == 2
    resumed = (await server.client.post(f"/job/{first}/resume")).json()["job_id"]
    job = await server.wait_status(resumed, JobStatus.FAILED)
    assert (job["sweep_id"], job["sweep_cell"]) == (submitted["sweep_id"], "a")
    assert (await server.client.delete(f"/job/{second}")).status_code == 200
    sweep = await _sweep(server.client, submitted["sweep_id"])
    assert [(c["job_id"], c["status"]) for c in sweep["cells"]] == [
        (resumed, "Failed"),
        (None, None),
    ]
    assert sweep["job_ids"] == [first, resumed]
    table = (await server.client.get(f"/sweeps/{submitted['sweep_id']}/results")).json()
    assert table["rows"] == [] and [c["job_id"] for c in table["columns"]] == [resumed, None]
    again = (await server.client.post(f"/sweeps/{submitted['sweep_id']}/resume")).json()
    third, fourth = again["job_ids"]  # cell a's failed job resumed, cell b's deleted one afresh
    assert (await server.job(third))["resumed_from"] == resumed
    rerun = await server.job(fourth)
    assert rerun["resumed_from"] is None and rerun["sweep_cell"] == "b"


async def _progress_at_least(client: httpx.AsyncClient, job_id: int, n: int) -> None:
    """Until the job has answered ``n`` requests (its event stream's progress)."""
    with trio.fail_after(180):
        async with client.stream("GET", f"/job/{job_id}/events") as stream:
            kind = ""
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    kind = line[len("event: ") :]
                elif (
                    kind == "progress"
                    and line.startswith("data: ")
                    and (json.loads(line[len("data: ") :]).get("n") or 0) >= n
                ):
                    return
    raise AssertionError(f"job {job_id} ended before {n} requests")


async def test_kill_9_mid_real_sweep_loses_nothing(tmp_path: Path, stub: StubHandle) -> None:
    """Real lm-eval against the stub model, one cell per task, max_parallel 1: the server
    (its whole process group) is killed while the first cell is part-way; after the restart
    that cell is requeued and completes, the second runs once, and the table has both."""
    stub.set_delay(0.1)
    body = {
        "name": "real-durable",
        "base": completions_job(stub),
        "matrix": {"tasks": ["tiny_mc", "tiny_gen"]},
        "max_parallel": 1,
    }
    async with hypercorn_server(tmp_path / "data", MAX_CONCURRENCY="2") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            submitted = await _submit(client, body)
            ids = submitted["job_ids"]
            await _progress_at_least(client, ids[0], 3)
        os.killpg(server.proc.pid, signal.SIGKILL)
        await server.proc.wait()
    async with hypercorn_server(tmp_path / "data", MAX_CONCURRENCY="2") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            with trio.fail_after(240):
                for job_id in ids:
                    async with client.stream("GET", f"/job/{job_id}/events") as stream:
                        await stream.aread()  # the stream ends when the job does
            after = await _sweep(client, submitted["sweep_id"])
            assert after["status"] == "Completed" and after["job_ids"] == ids
            jobs = [(await client.get(f"/job/{i}")).json() for i in ids]
            assert [j["attempts"] for j in jobs] == [2, 1]
            assert [a["outcome"] for a in jobs[0]["attempt_history"]] == ["Queued", "Completed"]
            table = (await client.get(f"/sweeps/{submitted['sweep_id']}/results")).json()
            assert {r["task"] for r in table["rows"]} == {"tiny_mc", "tiny_gen"}
            for row in table["rows"]:  # each task's rows hold its own cell's values only
                assert [k for k, v in row["values"].items() if v is not None] == [
                    f"tasks={row['task']}"
                ]
        server.proc.send_signal(signal.SIGTERM)
        await server.proc.wait()
