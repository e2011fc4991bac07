"""A sweep's cells are admitted like single jobs (admission_checks): the task catalog checks
with suggestions, the server's max_attempts limit, timeout bounds, and all of them before
anything is stored or queued. The catalog is looked up once per distinct set of tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lmeval_trio.config import Settings
from lmeval_trio.engine import task_checks
from tests.conftest import DUMMY_JOB, Server, make_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Task checks on (conftest turns them off), a low attempts limit, dispatch paused."""
    return make_settings(tmp_path, check_tasks=True, max_attempts_limit=2, max_concurrency=0)


async def _refused(server: Server, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-cell errors of a refused sweep, by cell key; nothing stored or queued."""
    response = await server.client.post("/sweeps", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert (await server.client.get("/jobs")).json()["total"] == 0
    assert (await server.client.get("/sweeps")).json() == {"sweeps": [], "total": 0}
    jobs_dir = server.app.extensions["lmeval_trio.settings"].data_dir / "jobs"
    assert not jobs_dir.exists() or not any(jobs_dir.iterdir())
    return {error["cell"]: error for error in errors}


async def test_an_unknown_task_in_one_cell_refuses_the_sweep_with_a_suggestion(
    server: Server,
) -> None:
    body = {
        "name": "typo",
        "base": DUMMY_JOB,
        "cells": [{"key": "fine", "tasks": "tiny_mc"}, {"key": "typo", "tasks": "tiny_mcc"}],
    }
    by_cell = await _refused(server, body)
    assert list(by_cell) == ["typo"]
    error = by_cell["typo"]
    assert error["loc"] == ["body", "cells", 1, "tasks"]
    assert error["type"] == "unknown_task"
    assert "'tiny_mcc' (did you mean tiny_mc" in error["msg"]
    assert error["unknown"] == ["tiny_mcc"] and "tiny_mc" in error["suggestions"]["tiny_mcc"]


async def test_max_attempts_above_the_limit_and_bad_timeouts_are_per_cell_errors(
    server: Server,
) -> None:
    body = {
        "name": "limits",
        "base": DUMMY_JOB,
        "cells": [
            {"key": "fine", "max_attempts": 2, "timeout_s": 60},
            {"key": "too many", "max_attempts": 3},
            {"key": "no time", "timeout_s": 0},
            {"key": "forever", "timeout_s": 31 * 24 * 3600},
        ],
    }
    by_cell = await _refused(server, body)
    assert sorted(by_cell) == ["forever", "no time", "too many"]
    assert by_cell["too many"]["loc"] == ["body", "cells", 1, "max_attempts"]
    assert "LMEVAL_MAX_ATTEMPTS_LIMIT" in by_cell["too many"]["msg"]
    assert by_cell["no time"]["loc"] == ["body", "cells", 2, "timeout_s"]
    assert by_cell["forever"]["loc"] == ["body", "cells", 3, "timeout_s"]


async def test_a_job_dry_run_holds_max_attempts_to_the_limit(server: Server) -> None:
    response = await server.client.post(
        "/job", params={"dry_run": "true"}, json={**DUMMY_JOB, "max_attempts": 3}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "max_attempts"]


async def test_cells_sharing_tasks_share_one_catalog_check(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six cells, two distinct task lists: two checks against the real catalog, and each
    cell of the unknown list refused with its own error."""
    checked: list[Any] = []
    real = task_checks._check_tasks

    async def counted(*args: Any) -> str:
        checked.append(args[2].values.get("tasks"))
        return await real(*args)

    monkeypatch.setattr(task_checks, "_check_tasks", counted)
    body = {
        "name": "shared",
        "base": DUMMY_JOB,
        "matrix": {"tasks": ["tiny_mc", "tiny_mcc"], "num_fewshot": [0, 1, 2]},
    }
    by_cell = await _refused(server, body)
    assert len(checked) == 2
    assert sorted(by_cell) == [f"tasks=tiny_mcc | num_fewshot={n}" for n in range(3)]
    assert {e["type"] for e in by_cell.values()} == {"unknown_task"}
    assert [e["loc"][2] for e in by_cell.values()] == [3, 4, 5]

    checked.clear()
    body["matrix"] = {"tasks": ["tiny_mc", "tiny_gen"], "num_fewshot": [0, 1, 2]}
    response = await server.client.post("/sweeps", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["job_ids"]) == 6 and len(checked) == 2
