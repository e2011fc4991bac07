"""Load: 1000 concurrent submissions through a real server, then list, stop and delete them.

Dispatch is paused (max_concurrency=0), so every job stays queued: the test measures the
API, the policy, lm-eval's parser and the store under concurrency, not lm-eval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.http.params import SUPERVISOR_KEY
from lmeval_trio.jobs.status import JobStatus
from tests.conftest import make_settings, start_server

JOBS = 1000
IN_FLIGHT = 100
PAGE = 128
BODY: dict[str, Any] = {"model": "dummy", "tasks": "tiny_mc", "env_vars": {"HF_TOKEN": "t"}}


async def submit_all(url: str) -> list[int]:
    """POST /job JOBS times from IN_FLIGHT workers; every answer must be a success.

    Each worker has its own client: one httpx pool shared by 100 busy connections spends
    more CPU matching requests to connections than the server spends answering them."""
    ids: list[int] = []
    send, receive = trio.open_memory_channel[int](JOBS)
    for n in range(JOBS):
        send.send_nowait(n)
    send.close()

    async def worker() -> None:
        # Plain HTTP: verify=False only spares each client loading the CA bundle (~0.1 s).
        async with httpx.AsyncClient(base_url=url, timeout=60, verify=False) as client:
            async for n in receive:
                response = await client.post("/job", json={**BODY, "limit": n + 1})
                assert response.status_code == 200, response.text
                ids.append(response.json()["job_id"])

    async with trio.open_nursery() as nursery:
        for _ in range(IN_FLIGHT):
            nursery.start_soon(worker)
    return ids


async def list_paged(client: httpx.AsyncClient, query: str = "") -> tuple[list[int], int]:
    """Every job id, page by page; and the total the server reports."""
    ids: list[int] = []
    totals = set()
    while True:
        response = await client.get(f"/jobs?limit={PAGE}&offset={len(ids)}{query}")
        assert response.status_code == 200, response.text
        page = response.json()
        totals.add(page["total"])
        ids.extend(job["job_id"] for job in page["jobs"])
        if len(page["jobs"]) < PAGE:
            assert len(totals) == 1, totals  # the total does not drift between pages
            return ids, totals.pop()


async def test_a_thousand_concurrent_submissions(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_concurrency=0)
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            with trio.fail_after(120):  # a hang guard; it takes ~10 s
                submitted = await submit_all(url)
                await check_load(client, app.extensions[SUPERVISOR_KEY], submitted)
        shutdown.set()
    assert list((settings.data_dir / "jobs").glob("*")) == []  # no folder left behind


async def check_load(
    client: httpx.AsyncClient, supervisor: Supervisor, submitted: list[int]
) -> None:
    assert len(set(submitted)) == JOBS
    assert (await supervisor.store.counts())[JobStatus.QUEUED] == JOBS
    listed, total = await list_paged(client)
    assert total == JOBS and sorted(listed) == sorted(submitted) == listed
    limits = {job["request"]["limit"] for job in (await client.get("/jobs")).json()["jobs"]}
    assert limits == set(range(1, JOBS + 1))  # each stored request is its own

    stopped = (await client.post("/jobs/stop")).json()["job_ids"]
    assert sorted(stopped) == listed
    assert (await list_paged(client, "&status=Queued"))[1] == 0
    assert (await list_paged(client, "&status=Stopped")) == (listed, JOBS)

    deleted = await client.delete("/jobs")
    assert deleted.json()["message"] == f"Deleted {JOBS} jobs."
    assert await list_paged(client) == ([], 0)
    assert sum((await supervisor.store.counts()).values()) == 0
