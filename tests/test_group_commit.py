"""Concurrent ``POST /job``: submissions stored together (one transaction per batch) still get
distinct fresh ids, skip ids whose folder exists, and are answered only once their row is
committed; lm-eval's shared parser judges concurrent requests each on its own.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from pathlib import Path

import httpx
import pytest
import trio

from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.harness import argv
from lmeval_trio.harness.request_model import RequestRejected, check_with_parser
from lmeval_trio.http.params import SUPERVISOR_KEY
from lmeval_trio.jobs.status import JobStatus
from tests.conftest import fake_job, make_settings, start_server

SUBMISSIONS = 40


def _committed_status(database: Path, job_id: int) -> str | None:
    """The job's status as another connection sees it: only committed rows."""
    with sqlite3.connect(database) as conn:
        row = conn.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
    return None if row is None else str(row[0])


async def test_concurrent_submissions_are_committed_before_their_answers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_concurrency=0)  # dispatch paused: all stay Queued
    taken = settings.data_dir / "jobs" / "5"
    database = settings.data_dir / "jobs.db"
    answered: list[int] = []
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        supervisor: Supervisor = app.extensions[SUPERVISOR_KEY]
        taken.mkdir(parents=True)  # made behind the server's back: id 5 must be skipped
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def submit_one(index: int) -> None:
                response = await client.post("/job", json=fake_job("ok", N=str(index)))
                assert response.status_code == 200, response.text
                job_id = response.json()["job_id"]
                status = await trio.to_thread.run_sync(_committed_status, database, job_id)
                assert status == JobStatus.QUEUED.value, (job_id, status)
                answered.append(job_id)

            async with trio.open_nursery() as clients:
                for index in range(SUBMISSIONS):
                    clients.start_soon(submit_one, index)
            assert supervisor.live.waiting() == SUBMISSIONS
            health = (await client.get("/healthz")).json()
            assert health["queued"] == SUBMISSIONS
            stored = await supervisor.store.select()
        shutdown.set()
    expected = [i for i in range(1, SUBMISSIONS + 2) if i != 5]
    assert sorted(answered) == expected
    assert sorted(r.id for r in stored) == expected
    for record in stored:  # each row holds its own request, under its own folder
        assert record.job_dir == settings.data_dir / "jobs" / str(record.id)
        assert str(record.job_dir) in " ".join(record.argv)
    by_index = {r.request["env_vars"]["N"] for r in stored}
    assert by_index == {str(i) for i in range(SUBMISSIONS)}
    assert list(taken.iterdir()) == []  # never handed out: nothing written into it


def test_the_shared_parser_judges_concurrent_requests_each_on_its_own() -> None:
    """Each parse swaps the shared parser's error hook: threads parsing at once must not
    restore each other's (a refusal would then exit the thread instead of raising)."""
    good = ["--model", "dummy", "--tasks", "arc_easy", "--limit", "3"]
    bad = ["--model", "dummy", "--tasks", "arc_easy", "--limit", "many"]
    failures: list[BaseException] = []

    def worker(words: list[str], refused: bool) -> None:
        for _ in range(100):
            try:
                check_with_parser(words)
                assert not refused, "a bad --limit was accepted"
            except RequestRejected as error:
                if not refused:
                    failures.append(error)
            except BaseException as error:  # SystemExit: the parser's own error hook
                failures.append(error)

    threads = [
        threading.Thread(target=worker, args=(bad if i % 2 else good, i % 2 == 1)) for i in range(8)
    ]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave within a parse (without the lock: fails)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert failures == []


def test_parsed_flags_are_a_copy() -> None:
    """The flags are parsed once per request and kept: a caller changing what it got must
    not change what the next check reads."""
    request = {"model": "dummy", "tasks": ["arc_easy"], "limit": 3}
    first = argv.check(request)
    first.limit = "changed"
    vars(first).clear()
    assert argv.check(request).limit == 3.0
    with pytest.raises(RequestRejected):
        argv.check({"model": "dummy", "tasks": ["arc_easy"], "limit": "many"})
