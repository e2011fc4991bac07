"""Comparisons of real lm-eval runs (local-completions against the stub, whose answer
pattern makes scores differ deterministically): z and p checked against values computed
here from the results JSON, McNemar counts against the samples files read here, each
comparability mismatch detected, flips paged; and every kind of bad query refused."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lmeval_trio.jobs.status import JobStatus
from tests.conftest import (
    SUPPORT,
    TASKS_DIR,
    Server,
    fake_job,
    job_files,
    make_settings,
    start_server,
)
from tests.support.stub_openai import StubHandle, start_stub

COMPARE_TASKS = SUPPORT / "compare_tasks"


def cmp_job(stub: StubHandle, model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "local-completions",
        "model_args": {
            "model": model,
            "base_url": stub.completions_url,
            "tokenizer_backend": "remote",
        },
        "tasks": "cmp_mc",
        "include_path": str(COMPARE_TASKS),
        "log_samples": True,
        **extra,
    }


async def run_all(server: Server, bodies: list[dict[str, Any]]) -> list[int]:
    ids = [await server.submit(body) for body in bodies]
    for job_id in ids:
        job = await server.wait_status(job_id, JobStatus.COMPLETED, JobStatus.FAILED)
        assert job["status"] == "Completed", job["reason"]
    return ids


async def get(server: Server, path: str, status: int = 200) -> dict[str, Any]:
    response = await server.client.get(path)
    assert response.status_code == status, response.text
    data: dict[str, Any] = response.json()
    return data


async def raw_results(server: Server, job_id: int) -> dict[str, Any]:
    results: dict[str, Any] = (await get(server, f"/job/{job_id}/results"))["results"]
    return results


async def samples_lines(server: Server, job_id: int, task: str) -> list[dict[str, Any]]:
    """The job's samples file for ``task``, downloaded and parsed here."""
    listing = await get(server, f"/job/{job_id}/artifacts")
    name = next(a["name"] for a in listing["artifacts"] if f"/samples_{task}_" in a["name"])
    text = (await server.client.get(f"/job/{job_id}/artifacts/{name}")).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def expected_z_p(base: dict[str, Any], other: dict[str, Any], key: str) -> tuple[float, float]:
    """z and the two-sided normal p, from the results JSON alone."""
    metric, filter_name = key.split(",")
    a, b = base["results"]["cmp_mc"], other["results"]["cmp_mc"]
    se_key = f"{metric}_stderr,{filter_name}"
    z = (b[key] - a[key]) / math.hypot(a[se_key], b[se_key])
    p = 1.0 - math.erf(abs(z) / math.sqrt(2.0))
    return z, p


def binomial_two_sided(k: int, n: int) -> float:
    """2 * P(X <= k) for X ~ Binomial(n, 1/2), capped at 1, from the pmf recurrence."""
    pmf, total = 0.5**n, 0.0
    for i in range(k + 1):
        total += pmf
        pmf = pmf * (n - i) / (i + 1)
    return min(1.0, 2.0 * total)


def edited_tasks(tmp_path: Path) -> Path:
    """A copy of the comparison task with a new version and another prompt wording."""
    folder = job_files(tmp_path) / "edited-tasks"
    shutil.copytree(COMPARE_TASKS, folder)
    yaml = folder / "cmp_mc.yaml"
    text = yaml.read_text().replace("version: 1.0", "version: 2.0")
    yaml.write_text(text.replace('"Question: {{question}}\\nAnswer:"', '"Q: {{question}}\\nA:"'))
    return folder


def no_stderr_tasks(tmp_path: Path) -> Path:
    """The same task aggregated by a custom mean: lm-eval writes its stderr as "N/A"."""
    folder = job_files(tmp_path) / "no-stderr-tasks"
    shutil.copytree(COMPARE_TASKS, folder)
    yaml = folder / "cmp_mc.yaml"
    text = yaml.read_text()
    yaml.write_text(text.replace("aggregation: mean", "aggregation: !function cmp_data.plain_mean"))
    return folder


@pytest.fixture
def cmp_stub() -> Any:
    handle = start_stub(tasks_dir=COMPARE_TASKS)
    try:
        yield handle
    finally:
        handle.close()


async def test_real_runs_compared_with_z_mcnemar_flips_and_every_mismatch(
    tmp_path: Path, cmp_stub: StubHandle
) -> None:
    # The stub's /v1/models lists only stub-model: the pre-flight would hold the
    # answer-pattern models (stub-wrong-<m>-<r>), which the stub serves all the same.
    settings = make_settings(tmp_path, max_concurrency=2, preflight="off")
    edited = edited_tasks(tmp_path)
    bodies = [
        cmp_job(cmp_stub, "stub-wrong-5-0"),  # rows 0,5,..,35 wrong: acc 0.8
        cmp_job(cmp_stub, "stub-wrong-2-0"),  # even rows wrong: acc 0.5
        cmp_job(cmp_stub, "stub-wrong-5-0", num_fewshot=1),
        cmp_job(cmp_stub, "stub-wrong-5-0", limit=20),
        cmp_job(cmp_stub, "stub-wrong-5-0", include_path=str(edited)),
        cmp_job(cmp_stub, "stub-wrong-2-0", include_path=str(no_stderr_tasks(tmp_path))),
    ]
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            server = Server(url, client, app)
            a, b, fewshot, limited, renamed, no_stderr = await run_all(server, bodies)
            await check_z_and_mcnemar(server, a, b)
            await check_without_stderr(server, a, no_stderr)
            await check_flips_paged(server, a, b)
            await check_mismatches(server, a, fewshot, limited, renamed)
        shutdown.set()


async def check_z_and_mcnemar(server: Server, a: int, b: int) -> None:
    answer = await get(server, f"/compare?jobs={a},{b}&alpha=0.01")
    assert answer["baseline"] == a and answer["mismatches"] == []
    assert answer["pairs"] == [
        {"job_id": b, "baseline": a, "comparable": True, "mismatch_kinds": []}
    ]
    row = next(r for r in answer["rows"] if (r["task"], r["metric"]) == ("cmp_mc", "acc"))
    base_cell, cell = row["jobs"]
    results_a, results_b = await raw_results(server, a), await raw_results(server, b)
    assert results_a["results"]["cmp_mc"]["acc,none"] == 0.8
    assert results_b["results"]["cmp_mc"]["acc,none"] == 0.5
    z, p = expected_z_p(results_a, results_b, "acc,none")
    assert base_cell["delta"] is None and base_cell["value"] == 0.8
    assert cell["delta"] == pytest.approx(-0.3)
    assert cell["z"] == pytest.approx(z, rel=1e-12) and cell["p_value"] == pytest.approx(p)
    assert cell["significant"] is (p < 0.01) and cell["test"] == "z"
    # McNemar from the samples files, read here.
    docs_a = {s["doc_id"]: s for s in await samples_lines(server, a, "cmp_mc")}
    docs_b = {s["doc_id"]: s for s in await samples_lines(server, b, "cmp_mc")}
    down = sum(1 for d in docs_a if docs_a[d]["acc"] == 1 and docs_b[d]["acc"] == 0)
    up = sum(1 for d in docs_a if docs_a[d]["acc"] == 0 and docs_b[d]["acc"] == 1)
    assert (down, up) == (16, 4)  # the stub's patterns: even rows not /5; odd rows /5
    (paired,) = answer["paired"]
    assert paired["matched"] == 40 and paired["test"] == "mcnemar_exact"
    assert (paired["correct_to_wrong"], paired["wrong_to_correct"]) == (down, up)
    assert paired["p_value"] == pytest.approx(binomial_two_sided(min(down, up), down + up))
    assert paired["significant"] is (paired["p_value"] < 0.01)
    # alpha moves the verdict, never the numbers.
    strict = await get(server, f"/compare?jobs={a},{b}&alpha=0.000001")
    assert strict["rows"][0]["jobs"][1]["p_value"] == cell["p_value"]
    assert strict["rows"][0]["jobs"][1]["significant"] is False
    # The other job as the baseline: the sign flips.
    flipped = await get(server, f"/compare?jobs={a},{b}&baseline={b}")
    assert flipped["rows"][0]["jobs"][0]["delta"] == pytest.approx(0.3)
    assert flipped["paired"][0]["wrong_to_correct"] == down


async def check_without_stderr(server: Server, a: int, no_stderr: int) -> None:
    """lm-eval's "N/A" stderr: a delta, no z test, and a note saying so; the paired test
    from the samples still runs."""
    raw = await raw_results(server, no_stderr)
    assert raw["results"]["cmp_mc"]["acc_stderr,none"] == "N/A"
    answer = await get(server, f"/compare?jobs={a},{no_stderr}")
    assert answer["mismatches"] == []
    cell = answer["rows"][0]["jobs"][1]
    assert cell["value"] == 0.5 and cell["stderr"] is None
    assert cell["delta"] == pytest.approx(-0.3)
    assert cell["z"] is None and cell["p_value"] is None and cell["test"] is None
    assert cell["significant"] is False and "no standard error" in cell["note"]
    (paired,) = answer["paired"]
    assert (paired["correct_to_wrong"], paired["wrong_to_correct"]) == (16, 4)


async def check_flips_paged(server: Server, a: int, b: int) -> None:
    seen: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = await get(server, f"/compare/flips?jobs={a},{b}&task=cmp_mc&offset={offset}&limit=7")
        assert page["total"] == 20 and page["metric"] == "acc" and page["filter"] == "none"
        seen += page["flips"]
        if not page["flips"]:
            break
        offset += 7
    assert len(seen) == 20 and [f["doc_id"] for f in seen] == sorted(f["doc_id"] for f in seen)
    assert {f["direction"] for f in seen if f["doc_id"] % 2 == 0} == {"correct_to_wrong"}
    first = seen[0]
    base_doc, other_doc = first["documents"][str(a)], first["documents"][str(b)]
    question = f"compare item {first['doc_id']}?"
    assert (
        question in json.dumps(base_doc["arguments"]) and base_doc["target"] == other_doc["target"]
    )
    assert base_doc["metrics"]["acc"] != other_doc["metrics"]["acc"]
    assert base_doc["filtered_resps"] != other_doc["filtered_resps"]
    for query, field in [("task=nope", "task"), ("task=cmp_mc&filter=nope", "filter")]:
        refused = await get(server, f"/compare/flips?jobs={a},{b}&{query}", 422)
        assert refused["detail"][0]["loc"] == ["query", field]
    refused = await get(server, f"/compare/flips?jobs={a},{b}&task=cmp_mc&metric=nope", 422)
    assert refused["detail"][0]["loc"] == ["query", "metric"]


async def check_mismatches(
    server: Server, a: int, fewshot: int, limited: int, renamed: int
) -> None:
    answer = await get(server, f"/compare?jobs={a},{fewshot},{limited},{renamed}")
    kinds = {(m["job_id"], m["kind"]) for m in answer["mismatches"]}
    assert {(fewshot, "n_shot"), (fewshot, "task_hash")} <= kinds
    assert {(limited, "limit"), (limited, "n_samples"), (limited, "sample_set")} <= kinds
    assert {(renamed, "version"), (renamed, "task_hash")} <= kinds
    assert (renamed, "sample_set") not in kinds  # same documents, other prompts
    assert all(not p["comparable"] for p in answer["pairs"])
    row = next(r for r in answer["rows"] if r["metric"] == "acc")
    for cell in row["jobs"][1:]:
        assert cell["significant"] is False and cell["mismatches"]
    limited_cell = row["jobs"][2]
    assert "limit" in limited_cell["mismatches"] and "never called significant" in (
        limited_cell["note"] or ""
    )
    # The paired comparison with the limited run uses the 20 documents both scored.
    paired = next(p for p in answer["paired"] if p["job_id"] == limited)
    assert paired["matched"] == 20 and paired["significant"] is False


async def test_chat_template_and_multiturn_mismatches(tmp_path: Path, stub: StubHandle) -> None:
    settings = make_settings(tmp_path, max_concurrency=2, preflight="off")  # model "m"
    plain = {
        "model": "local-completions",
        "model_args": {
            "model": "m",
            "base_url": stub.completions_url,
            "tokenizer_backend": "remote",
        },
        "tasks": "tiny_gen",
        "include_path": str(TASKS_DIR),
    }
    chat = {
        **plain,
        "model": "local-chat-completions",
        "model_args": {"model": "m", "base_url": stub.chat_completions_url},
        "apply_chat_template": True,
        "fewshot_as_multiturn": True,
    }
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            server = Server(url, client, app)
            first, second = await run_all(server, [plain, chat])
            answer = await get(server, f"/compare?jobs={first},{second}")
        shutdown.set()
    found = {m["kind"]: m for m in answer["mismatches"]}
    assert found["chat_template"]["baseline"] == "not applied"
    assert found["chat_template"]["value"].startswith("applied")
    assert found["fewshot_as_multiturn"]["value"] is True
    assert all(m["task"] is None for m in found.values())
    row = answer["rows"][0]
    assert (
        row["jobs"][1]["significant"] is False and "chat_template" in row["jobs"][1]["mismatches"]
    )


async def test_bad_compare_queries_name_their_field(server: Server) -> None:
    queued = await server.submit(
        {"model": "dummy", "tasks": "tiny_mc", "include_path": str(TASKS_DIR)}
    )
    supervisor = server.app.extensions["lmeval_trio.supervisor"]
    await supervisor.stop(queued)  # a job that ends without results
    cases = {
        "/compare?jobs=1,x": "jobs",
        "/compare?jobs=1,%D9%A3": "jobs",  # an Arabic-Indic digit is no job id
        "/compare?jobs=1,-2": "jobs",
        f"/compare?jobs={queued}": "jobs",
        f"/compare?jobs={queued},{queued}": "jobs",
        f"/compare?jobs={queued},999": "jobs",
        "/compare?jobs=" + ",".join(str(i) for i in range(1, 23)): "jobs",
        "/compare": "jobs",
        f"/compare?jobs={queued},999&alpha=1": "alpha",
        f"/compare?jobs={queued},999&alpha=0": "alpha",
        f"/compare?jobs={queued},999&alpha=nan": "alpha",
        f"/compare?jobs={queued},999&alpha=-0.1": "alpha",
        f"/compare?jobs={queued},999&baseline=7": "baseline",
        "/compare?sweep=1&jobs=1,2": "sweep",
        "/compare/flips?jobs=1,2": "task",
        "/compare/flips?jobs=1,2,3&task=t": "jobs",
        f"/compare/flips?jobs={queued},999&task=t&limit=100000": "limit",
        "/compare/report?jobs=1": "jobs",
    }
    for path, field in cases.items():
        response = await server.client.get(path)
        assert response.status_code == 422, (path, response.text)
        detail = response.json()["detail"]
        assert detail[0]["loc"] == ["query", field], (path, detail)
    response = await server.client.get(f"/compare?jobs={queued},{queued + 1}")
    assert response.status_code == 422 and "has no results" in response.text
    response = await server.client.get(f"/compare?jobs={queued + 1},{queued}")
    assert response.status_code == 422 and "no job with ID" in response.text
    running = await server.submit(fake_job("block"))
    await server.wait_status(running, JobStatus.RUNNING)
    response = await server.client.get(f"/compare?jobs={running},{queued}")
    assert response.status_code == 422 and "is Running" in response.text
    await supervisor.stop(running)
    assert (await server.client.get("/compare?sweep=99")).status_code == 404
    assert (await server.client.get("/job/999/report")).status_code == 404
    assert (await server.client.get(f"/job/{queued}/report")).status_code == 404


def test_mcnemar_exact_against_the_binomial_tail() -> None:
    """The exact test, in integers, against the pmf recurrence here: small, tied, empty,
    and counts whose 2**n no float can hold."""
    from lmeval_trio.engine.compare import mcnemar_exact

    for down, up in [(16, 4), (4, 16), (3, 3), (0, 7), (1, 0), (40, 25)]:
        expected = binomial_two_sided(min(down, up), down + up)
        assert mcnemar_exact(down, up) == pytest.approx(expected, rel=1e-9)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(700, 700) == 1.0
    assert 0 < mcnemar_exact(2000, 1800) < 0.01  # n = 3800: 2**n overflows a float
