"""The catalog and dry runs from the Python clients (async and blocking) and the CLI
(``lmeval-trio tasks``, ``submit --dry-run``), against a real server and lm-eval's tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from lmeval_trio.client import ApiError, AsyncClient, Client
from lmeval_trio.config import Settings
from tests.conftest import DUMMY_JOB, TASKS_DIR, Server, make_settings
from tests.test_cli import cli


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, check_tasks=True)


async def test_async_client_tasks_task_and_dry_run(server: Server) -> None:
    async with AsyncClient(server.url) as client:
        found = await client.tasks("arc_e", kind="task", limit=5)
        assert "arc_easy" in [e.name for e in found.tasks] and found.limit == 5
        folder = await client.tasks(include_path=str(TASKS_DIR))
        assert [e.name for e in folder.tasks] == ["tiny_gen", "tiny_mc"]
        mmlu = await client.task("mmlu")
        assert mmlu.kind == "group" and mmlu.config is not None
        with pytest.raises(ApiError) as missing:
            await client.task("arc_easz")
        assert missing.value.status_code == 404 and "arc_easy" in str(missing.value)
        report = await client.submit(DUMMY_JOB, dry_run=True)
        assert report.ok and [c.name for c in report.checks][-1] == "endpoint"
        refused = await client.submit({**DUMMY_JOB, "tasks": "tiny_mcq"}, dry_run=True)
        assert not refused.ok
    assert (await server.client.get("/jobs")).json()["total"] == 0


async def test_blocking_client_tasks(server: Server) -> None:
    def scenario() -> tuple[int, bool]:
        with Client(server.url) as client:
            total = client.tasks(kind="tag").total
            return total, client.submit(DUMMY_JOB, dry_run=True).ok

    total, ok = await trio.to_thread.run_sync(scenario)
    assert total > 500 and ok


async def test_cli_tasks_table_and_json(server: Server) -> None:
    table = await cli(server.url, "tasks", "arc_easy", "--kind", "task")
    assert table.code == 0, table.err
    header, *rows = table.out.splitlines()
    assert header.split() == ["NAME", "KIND", "OUTPUT", "TYPE", "DESCRIPTION"]
    assert any(r.startswith("arc_easy ") and "multiple_choice" in r for r in rows)
    assert rows[-1].endswith(f"of {len(rows) - 1}")
    as_json = await cli(server.url, "tasks", "--include-path", str(TASKS_DIR), "--json")
    assert [e["name"] for e in as_json.json()["tasks"]] == ["tiny_gen", "tiny_mc"]
    bad = await cli(server.url, "tasks", "--limit", "0")
    assert bad.code == 4 and "limit" in bad.err


async def test_cli_submit_dry_run(server: Server) -> None:
    args = ["submit", "--dry-run", "--model", "dummy", "--include_path", str(TASKS_DIR)]
    good = await cli(server.url, *args, "--tasks", "tiny_mc")
    assert good.code == 0, good.err
    assert "would be queued" in good.out and "tasks" in good.out
    bad = await cli(server.url, *args, "--tasks", "tiny_mcq", "--json")
    assert bad.code == 4
    report = bad.json()
    assert report["ok"] is False
    assert any(c["name"] == "tasks" and not c["ok"] for c in report["checks"])
    assert (await server.client.get("/jobs")).json()["total"] == 0
