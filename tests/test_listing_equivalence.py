"""GET /jobs from the listing cache equals the model-based rendering (records → summary →
jsonify), in every job state and filter, and stays equal as jobs change."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from quart import jsonify

from lmeval_trio.engine.listing import summary
from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.http import listing_encoding
from lmeval_trio.http.params import SUPERVISOR_KEY
from lmeval_trio.jobs.status import JobStatus
from tests.conftest import Server, fake_job, job_files, make_settings, start_server

Q, R, C, F, S = (
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.COMPLETED,
    JobStatus.FAILED,
    JobStatus.STOPPED,
)
# (query string, what the route makes of it: statuses, limit, offset, newest first)
CASES: list[tuple[str, list[JobStatus] | None, int | None, int, bool]] = [
    ("", None, None, 0, False),
    ("?include_completed=false", [Q, R], None, 0, False),
    ("?include_finished=false", [Q, R], None, 0, False),
    ("?status=Running,Queued", [R, Q], None, 0, False),
    ("?status=failed,STOPPED,Completed", [F, S, C], None, 0, False),
    ("?include_completed=false&status=Running,Failed", [R], None, 0, False),
    ("?status=Stopped&include_finished=false", [], None, 0, False),
    ("?limit=2&offset=1", None, 2, 1, False),
    ("?limit=3&offset=100", None, 3, 100, False),
    ("?order=desc", None, None, 0, True),
    ("?order=desc&limit=3&offset=2&status=Failed,Completed,Running", [F, C, R], 3, 2, True),
]


@dataclass
class Scene:
    """A server holding jobs in every state; ``gate`` steps the running ``bars`` job."""

    server: Server
    sup: Supervisor
    ids: dict[str, int]
    gate: int  # a write end of the bars job's FIFO
    encoding: str  # what GET /jobs asks for (and, the listings being small, gets)

    async def step(self, count: int = 1) -> None:
        os.write(self.gate, b"go\n" * count)


async def model_body(
    scene: Scene,
    statuses: list[JobStatus] | None,
    limit: int | None = None,
    offset: int = 0,
    newest_first: bool = False,
) -> bytes:
    """What GET /jobs answered before the listing cache, from the same supervisor."""
    sup = scene.sup
    records = await sup.list_jobs(statuses, limit=limit, offset=offset, newest_first=newest_first)
    counts = await sup.store.counts()
    total = sum(counts[s] for s in statuses) if statuses else sum(counts.values())
    jobs = [summary(r, sup.progress_dict(r)) for r in records]
    async with scene.server.app.app_context():
        data = await jsonify({"jobs": jobs, "total": total}).get_data(as_text=False)
    return data


def ordered(body: bytes) -> Any:
    """The JSON with every object as its list of (key, value) pairs: order counts."""
    return json.loads(body, object_pairs_hook=list)


async def assert_same(scene: Scene, query: str, *model_args: Any) -> dict[str, Any]:
    headers = {"Accept-Encoding": scene.encoding}
    response = await scene.server.client.get("/jobs" + query, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers.get("content-encoding", "identity") == scene.encoding
    assert "Accept-Encoding" in response.headers["vary"]
    expected = await model_body(scene, *model_args)  # (httpx has undone any deflate)
    assert json.loads(response.content) == json.loads(expected)
    assert ordered(response.content) == ordered(expected)  # same keys in the same order
    assert response.content == expected  # and, as it happens, the very same bytes
    if scene.encoding == "identity":
        assert int(response.headers["content-length"]) == len(expected)
    body: dict[str, Any] = response.json()
    return body


async def wait_until(sup: Supervisor, job_id: int, check: Any) -> None:
    """Wait until ``check(record, progress)`` holds (the supervisor signals every status
    change and every stored progress change)."""
    with trio.fail_after(60):
        while True:
            version = sup.changed.version
            record = await sup.get(job_id)
            if check(record, sup.progress_dict(record)):
                return
            await sup.changed.wait_past(version)


@pytest.fixture(params=["identity", "deflate"])
async def scene(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Scene]:
    if request.param == "deflate":  # compress even these small listings, in groups of 2
        monkeypatch.setattr(listing_encoding, "MIN_BYTES", 0)
        monkeypatch.setattr(listing_encoding, "GROUP_IDS", 2)
    settings = make_settings(tmp_path, max_concurrency=2)
    fifo = job_files(tmp_path) / "gate"
    os.mkfifo(fifo)
    gate = os.open(fifo, os.O_RDWR)  # opening read-write does not wait for the reader
    try:
        async with trio.open_nursery() as nursery:
            url, shutdown, app = await start_server(nursery, settings)
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                server = Server(url, client, app)
                sup = app.extensions[SUPERVISOR_KEY]
                ids = await _populate(server, sup, fifo)
                yield Scene(server, sup, ids, gate, request.param)
            shutdown.set()
    finally:
        os.close(gate)


async def _populate(server: Server, sup: Supervisor, fifo: Path) -> dict[str, int]:
    ids: dict[str, int] = {}
    ids["completed"] = await server.submit(
        {**fake_job("env", NOTE="ünïcødé ✓"), "model_args": "pretrained=dümmy"}
    )
    await server.wait_status(ids["completed"], C)
    ids["failed"] = await server.submit(fake_job("exit", FAKE_CODE="3"))
    await server.wait_status(ids["failed"], F)
    ids["stopped"] = await server.submit(fake_job("block"))
    await server.wait_status(ids["stopped"], R)
    await server.client.post(f"/job/{ids['stopped']}/stop")
    resumed = await server.client.post(f"/job/{ids['failed']}/resume")
    ids["resumed"] = resumed.json()["job_id"]
    await server.wait_status(ids["resumed"], F)
    ids["bars"] = await server.submit(fake_job("bars", FAKE_TOTAL="4", FAKE_GATE=str(fifo)))
    # Its first bar (0/4) comes before the gate: wait for it, or a listing could be rendered
    # just before it and the model rendering that follows just after.
    await wait_until(sup, ids["bars"], lambda _r, p: p["total"] == 4)
    ids["running"] = await server.submit(fake_job("block"))
    await server.wait_status(ids["running"], R)
    ids["queued"] = await server.submit(fake_job("env"))  # both slots are taken
    return ids


async def test_every_state_and_filter_renders_as_the_model_does(scene: Scene) -> None:
    await scene.step(2)
    await wait_until(scene.sup, scene.ids["bars"], lambda _r, p: p["percent"] == 50)
    first = await assert_same(scene, "", None)
    statuses = {job["job_id"]: job["status"] for job in first["jobs"]}
    assert [statuses[scene.ids[name]] for name in scene.ids] == [
        "Completed",
        "Failed",
        "Stopped",
        "Failed",
        "Running",
        "Running",
        "Queued",
    ]
    resumed = next(j for j in first["jobs"] if j["job_id"] == scene.ids["resumed"])
    assert resumed["resumed_from"] == scene.ids["failed"]
    completed = next(j for j in first["jobs"] if j["job_id"] == scene.ids["completed"])
    assert completed["request"]["env_vars"] == {"FAKE_MODE": "***", "NOTE": "***"}
    for query, *model_args in CASES * 2:  # the second round comes from the cache
        await assert_same(scene, query, *model_args)


async def test_changes_show_on_the_next_listing(scene: Scene) -> None:
    sup, ids = scene.sup, scene.ids
    await assert_same(scene, "", None)  # everything cached
    await scene.step()
    await wait_until(sup, ids["bars"], lambda _r, p: p["percent"] == 25)
    body = await assert_same(scene, "", None)
    bars = next(j for j in body["jobs"] if j["job_id"] == ids["bars"])
    assert bars["inference_progress_pct"] == 25 and bars["progress"]["n"] == 1

    await scene.step(3)
    await scene.server.wait_status(ids["bars"], C)
    await scene.server.wait_status(ids["queued"], C)  # it took the freed slot
    body = await assert_same(scene, "?status=Completed", [C])
    assert ids["bars"] in [j["job_id"] for j in body["jobs"]]
    await assert_same(scene, "?include_completed=false", [Q, R])

    await scene.server.client.delete(f"/job/{ids['completed']}")
    body = await assert_same(scene, "", None)
    assert ids["completed"] not in [j["job_id"] for j in body["jobs"]]

    await sup.store.update(ids["stopped"], reason="edited through the store")
    with closing(sqlite3.connect(sup.settings.data_dir / "jobs.db")) as conn, conn:
        conn.execute("UPDATE jobs SET exit_code = 42 WHERE id = ?", (ids["failed"],))
    body = await assert_same(scene, "?order=desc", None, None, 0, True)
    by_id = {j["job_id"]: j for j in body["jobs"]}
    assert by_id[ids["stopped"]]["reason"] == "edited through the store"
    assert by_id[ids["failed"]]["exit_code"] == 42  # another connection: the trigger saw it

    await scene.server.client.get(f"/job/{ids['running']}/stop")
    await assert_same(scene, "?status=Stopped,Running", [S, R])
    await scene.server.client.delete("/jobs")
    assert (await assert_same(scene, "", None)) == {"jobs": [], "total": 0}
