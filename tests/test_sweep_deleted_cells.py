"""A sweep whose cells' jobs are deleted (DELETE /job/{id}, DELETE /jobs, retention pruning)
stays whole: GET /sweeps/{id} and its results answer, each such cell shows ``job_id`` and
``status`` null with the reason, and a sweep resume runs exactly the deleted, failed and
stopped cells again (deleted ones afresh, in their sweep)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import httpx
import trio

from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.engine.sweeps import DELETED_REASON
from lmeval_trio.http.params import SUPERVISOR_KEY
from tests.conftest import Server, fake_job, make_settings, start_server

CELLS = [
    {"key": "first", "env_vars": {"FAKE_MODE": "env"}},
    {"key": "second", "env_vars": {"FAKE_MODE": "env"}},
    {"key": "broken", "env_vars": {"FAKE_MODE": "exit"}},
]


async def _idle(app: Any) -> None:
    """Until no job is queued or running (on the change signal)."""
    supervisor: Supervisor = app.extensions[SUPERVISOR_KEY]
    with trio.fail_after(120):
        while True:
            version = supervisor.changed.version
            if not supervisor.live.jobs:
                return
            await supervisor.changed.wait_past(version)


async def _ended_sweep(client: httpx.AsyncClient, app: Any) -> dict[str, Any]:
    body = {"name": "cells", "base": fake_job("env"), "cells": CELLS}
    response = await client.post("/sweeps", json=body)
    assert response.status_code == 200, response.text
    await _idle(app)
    submitted: dict[str, Any] = response.json()
    return submitted


async def _view(client: httpx.AsyncClient, sweep_id: int) -> dict[str, Any]:
    response = await client.get(f"/sweeps/{sweep_id}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def _still_answers(client: httpx.AsyncClient, sweep_id: int, deleted: list[str]) -> None:
    """The sweep, its results and CSV answer; exactly ``deleted`` cells show as deleted."""
    view = await _view(client, sweep_id)
    shown = {c["key"]: c for c in view["cells"]}
    for key, cell in shown.items():
        if key in deleted:
            assert cell["job_id"] is None and cell["status"] is None
            assert cell["reason"] == DELETED_REASON
        else:
            assert cell["job_id"] is not None and cell["status"] is not None
    assert sum(view["counts"].values()) == len(CELLS) - len(deleted)
    assert len(view["job_ids"]) == len(CELLS) - len(deleted)
    table = await client.get(f"/sweeps/{sweep_id}/results")
    assert table.status_code == 200, table.text
    columns = {c["key"]: c for c in table.json()["columns"]}
    assert [k for k, c in columns.items() if c["job_id"] is None] == deleted
    as_csv = await client.get(f"/sweeps/{sweep_id}/results", params={"format": "csv"})
    assert as_csv.status_code == 200
    assert next(csv.reader(io.StringIO(as_csv.text)))[:3] == ["task", "metric", "filter"]


async def _resumed(server: Server, sweep_id: int, again: list[str]) -> dict[str, Any]:
    """A sweep resume runs exactly ``again`` (by cell key): deleted cells afresh in the
    sweep, the others as job resumes; then every cell has a job again."""
    before = {c["key"]: c for c in (await _view(server.client, sweep_id))["cells"]}
    response = await server.client.post(f"/sweeps/{sweep_id}/resume")
    assert response.status_code == 200, response.text
    new_ids = response.json()["job_ids"]
    await _idle(server.app)
    view = await _view(server.client, sweep_id)
    after = {c["key"]: c for c in view["cells"]}
    assert sorted(after[key]["job_id"] for key in again) == sorted(new_ids)
    for key, cell in after.items():
        if key not in again:
            assert cell["job_id"] == before[key]["job_id"]  # left as it was
            continue
        job = await server.job(cell["job_id"])
        assert job["sweep_id"] == sweep_id and job["sweep_cell"] == key
        assert job["resumed_from"] == before[key]["job_id"]  # None for a deleted cell
    return view


async def test_a_job_deleted_by_id_leaves_its_cell_deleted_and_resumable(server: Server) -> None:
    sweep = await _ended_sweep(server.client, server.app)
    first_job = sweep["job_ids"][0]
    assert (await server.client.delete(f"/job/{first_job}")).status_code == 200
    await _still_answers(server.client, sweep["sweep_id"], ["first"])
    view = await _resumed(server, sweep["sweep_id"], ["first", "broken"])
    assert {c["key"]: c["status"] for c in view["cells"]} == {
        "first": "Completed",
        "second": "Completed",
        "broken": "Failed",
    }


async def test_delete_all_jobs_leaves_every_cell_deleted(server: Server) -> None:
    sweep = await _ended_sweep(server.client, server.app)
    assert (await server.client.delete("/jobs")).status_code == 200
    await _still_answers(server.client, sweep["sweep_id"], ["first", "second", "broken"])
    view = await _view(server.client, sweep["sweep_id"])
    assert view["status"] == "Stopped" and view["job_ids"] == []
    await _resumed(server, sweep["sweep_id"], ["first", "second", "broken"])
    nothing = await server.client.post(f"/sweeps/{sweep['sweep_id']}/resume")
    assert nothing.status_code == 200  # the broken cell failed again: it is resumable


async def test_retention_pruning_leaves_the_sweep_whole(tmp_path: Path) -> None:
    """Retention keeps the two newest finished jobs: the first cell's job goes."""
    settings = make_settings(tmp_path, retention_max_jobs=2, max_concurrency=1)
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            sweep = await _ended_sweep(client, app)
            await _still_answers(client, sweep["sweep_id"], ["first"])
            resumed = await client.post(f"/sweeps/{sweep['sweep_id']}/resume")
            assert resumed.status_code == 200, resumed.text
            assert len(resumed.json()["job_ids"]) == 2  # the pruned cell and the failed one
            await _idle(app)
            view = await _view(client, sweep["sweep_id"])
            assert {
                c["key"] for c in view["cells"] if c["job_id"] in resumed.json()["job_ids"]
            } <= {
                "first",
                "broken",
            }
        shutdown.set()


async def test_a_sweep_with_nothing_to_resume_is_a_409(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            body = {"name": "fine", "base": fake_job("env"), "cells": CELLS[:2]}
            sweep = (await client.post("/sweeps", json=body)).json()
            await _idle(app)
            refused = await client.post(f"/sweeps/{sweep['sweep_id']}/resume")
            assert refused.status_code == 409
            assert "no failed, stopped or deleted cell" in refused.text
        shutdown.set()
