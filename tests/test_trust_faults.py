"""Faults: a store that refuses writes (a full disk, a read-only database) never leaves a job
half-done. The fault is real SQLite refusing the store's own connection (``PRAGMA
query_only``: every write fails with sqlite3.OperationalError), around real child processes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
import trio

from lmeval_trio.config import Settings
from lmeval_trio.engine.supervisor import StopOutcome, Supervisor
from lmeval_trio.http.params import SUPERVISOR_KEY
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.store.sqlite import JobStore, StoreError
from tests.conftest import Server, fake_job, job_files, make_settings, pid_alive, start_server
from tests.test_trust_races import assert_consistent


async def refuse_writes(store: JobStore, refuse: bool) -> None:
    """Make the store's own connection refuse (or take again) every write."""
    await store._run(store.conn.execute, f"PRAGMA query_only={int(refuse)}")


async def _wait_until(supervisor: Supervisor, job_id: int, check: object) -> None:
    assert callable(check)
    with trio.fail_after(60):
        while not check():
            pulse = supervisor.live_changes(job_id)
            assert pulse is not None
            version = pulse.version
            if check():
                return
            await pulse.wait_past(version)


async def test_an_end_the_store_refused_is_recorded_once_it_takes_writes(
    tmp_path: Path,
) -> None:
    gate = job_files(tmp_path) / "gate"
    os.mkfifo(gate)
    settings = make_settings(tmp_path)
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit(fake_job("bars", FAKE_TOTAL="1", FAKE_GATE=str(gate)))
        writer = await trio.to_thread.run_sync(open, gate, "w")  # the job has opened it
        await _wait_until(supervisor, record.id, lambda: supervisor.live.jobs[record.id].record.pid)
        pid = supervisor.live.jobs[record.id].record.pid
        assert pid is not None
        await refuse_writes(supervisor.store, True)
        await trio.to_thread.run_sync(writer.write, "go\n")
        await trio.to_thread.run_sync(writer.close)  # the job finishes now
        await _wait_until(supervisor, record.id, lambda: record.id in supervisor.faults.unrecorded)
        assert not pid_alive(pid) or _is_zombie(pid)
        assert not await supervisor.store.writable()
        stored = await supervisor.store.get(record.id)
        assert stored is not None and stored.status is JobStatus.RUNNING  # nothing else yet
        await refuse_writes(supervisor.store, False)  # space freed
        final = await supervisor.wait(record.id)
        assert final.status is JobStatus.COMPLETED and final.exit_code == 0
        assert final.finished_at is not None
        await assert_consistent(supervisor, settings)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return False


async def test_a_stop_while_the_store_refuses_answers_and_records_later(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit(fake_job("block"))
        await _wait_until(supervisor, record.id, lambda: supervisor.live.jobs[record.id].record.pid)
        await refuse_writes(supervisor.store, True)
        with trio.fail_after(30):  # answers without waiting for the disk
            outcome, _ = await supervisor.stop(record.id)
        assert outcome is StopOutcome.STOPPED
        await refuse_writes(supervisor.store, False)
        final = await supervisor.wait(record.id)
        assert final.status is JobStatus.STOPPED
        await assert_consistent(supervisor, settings)


async def test_a_refused_start_keeps_the_queue_place(tmp_path: Path) -> None:
    """The write that marks a job Running fails: the job stays Queued (record, queue,
    counters), nothing runs, the queue does not wedge, and once the store takes writes the
    job runs to its end, once."""
    settings = make_settings(tmp_path, max_concurrency=1)
    async with Supervisor(settings) as supervisor:
        blocker = await supervisor.submit(fake_job("block"))
        await _wait_until(
            supervisor, blocker.id, lambda: supervisor.live.jobs[blocker.id].record.pid
        )
        waiting = [await supervisor.submit(fake_job("env")) for _ in range(2)]
        await refuse_writes(supervisor.store, True)
        await supervisor.stop(blocker.id)  # frees the slot; its end waits for the store
        await _wait_until(supervisor, waiting[0].id, lambda: supervisor.faults.held)
        stats = supervisor.statistics()
        assert stats.queued >= 1 and stats.running == 1  # the blocker, its end unrecorded
        for job in waiting:
            stored = await supervisor.store.get(job.id)
            assert stored is not None and stored.status is JobStatus.QUEUED
        await refuse_writes(supervisor.store, False)
        assert (await supervisor.wait(blocker.id)).status is JobStatus.STOPPED
        for job in waiting:
            final = await supervisor.wait(job.id)
            assert final.status is JobStatus.COMPLETED, final.reason
            assert final.attempts == 1
        await assert_consistent(supervisor, settings)


async def test_a_submission_the_store_refuses_is_503_and_leaves_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_concurrency=0)
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        supervisor: Supervisor = app.extensions[SUPERVISOR_KEY]
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert (await client.post("/job", json=fake_job("env"))).status_code == 200
            await refuse_writes(supervisor.store, True)
            for _ in range(5):
                response = await client.post("/job", json=fake_job("env"))
                assert response.status_code == 503, response.text
                assert response.json()["detail"] and response.headers["Retry-After"]
            health = await client.get("/healthz")
            assert health.status_code == 503 and health.json()["store"] == "unavailable"
            listing = (await client.get("/jobs")).json()["jobs"]
            assert [j["job_id"] for j in listing] == [1] and health.json()["queued"] == 1
            await refuse_writes(supervisor.store, False)
            assert (await client.post("/job", json=fake_job("env"))).status_code == 200
            await assert_consistent(supervisor, settings)
        shutdown.set()


async def test_an_end_refused_until_shutdown_is_recorded_at_the_next_start(
    tmp_path: Path,
) -> None:
    """The store refuses the end until the server stops: the next start records that end
    (kept beside the job's logs) instead of running the finished job again."""
    gate = job_files(tmp_path) / "gate"
    os.mkfifo(gate)
    settings = make_settings(tmp_path)
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit(fake_job("bars", FAKE_TOTAL="1", FAKE_GATE=str(gate)))
        writer = await trio.to_thread.run_sync(open, gate, "w")
        await _wait_until(supervisor, record.id, lambda: supervisor.live.jobs[record.id].record.pid)
        await refuse_writes(supervisor.store, True)
        await trio.to_thread.run_sync(writer.write, "go\n")
        await trio.to_thread.run_sync(writer.close)
        await _wait_until(supervisor, record.id, lambda: record.id in supervisor.faults.unrecorded)
    async with Supervisor(settings) as restarted:
        final = await restarted.get(record.id)
        assert final.status is JobStatus.COMPLETED and final.exit_code == 0, final
        assert final.attempts == 1 and restarted.statistics().queued == 0
        await assert_consistent(restarted, settings)


# -- a database that does not match its data directory -------------------------------------


async def _one_finished_job(settings: Settings) -> int:
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit(fake_job("env"))
        assert (await supervisor.wait(record.id)).status is JobStatus.COMPLETED
        return record.id


def _database_files(settings: Settings) -> list[Path]:
    db = settings.data_dir / "jobs.db"
    return [db, db.with_name("jobs.db-wal"), db.with_name("jobs.db-shm")]


async def test_a_missing_or_empty_database_beside_job_folders_refuses_to_start(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    job_id = await _one_finished_job(settings)
    results = (settings.data_dir / "jobs" / str(job_id) / "stdout.log").read_bytes()
    for damage in ("missing", "empty"):
        for path in _database_files(settings):
            path.unlink(missing_ok=True)
        if damage == "empty":
            _database_files(settings)[0].write_bytes(b"")
        with pytest.raises(StoreError, match=f"folder of job {job_id} exists"):
            async with Supervisor(settings):
                raise AssertionError("started on a database that lost its jobs")
    # The old job's files are untouched, ready for the operator to restore the database.
    assert (settings.data_dir / "jobs" / str(job_id) / "stdout.log").read_bytes() == results


async def test_an_older_database_refuses_to_start(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    await _one_finished_job(settings)
    backup = tmp_path / "backup.db"
    async with Supervisor(settings) as supervisor:  # a consistent copy, as sqlite3 makes one
        await supervisor.store._run(supervisor.store.conn.execute, f"VACUUM INTO '{backup}'")
    await _one_finished_job(settings)  # job 2
    for path in _database_files(settings):
        path.unlink(missing_ok=True)
    shutil.copy(backup, settings.data_dir / "jobs.db")
    with pytest.raises(StoreError, match="handed out ids only up to 1"):
        async with Supervisor(settings):
            raise AssertionError("started on an older database")


async def test_an_id_whose_folder_exists_is_never_handed_out(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_concurrency=0)
    async with Supervisor(settings) as supervisor:
        for stray in ("1", "2", "4"):  # appear while the server runs
            (settings.data_dir / "jobs" / stray).mkdir(parents=True)
            (settings.data_dir / "jobs" / stray / "stdout.log").write_text(f"old {stray}\n")
        ids = [(await supervisor.submit(fake_job("env"))).id for _ in range(3)]
        assert ids == [3, 5, 6]
        for stray in ("1", "2", "4"):
            log = settings.data_dir / "jobs" / stray / "stdout.log"
            assert log.read_text() == f"old {stray}\n"


ODD_RESULTS = [
    "[]",
    '"results"',
    "1",
    "null",
    '{"results": []}',
    '{"results": {"task": []}}',
    '{"results": {"task": {"acc,none": 1, "acc_stderr,none": "x"}}, "groups": 7}',
    '{"results": {"1": {"2": 3}}, "config": [1], "n-samples": "x", "lm_eval_version": {}}',
    "[" * 100_000 + "]" * 100_000,
    '{"results": {"task": {"acc,none": {"deep": [1, 2]}}}}',
]


async def test_results_of_an_unexpected_shape_are_never_a_5xx(server: Server) -> None:
    job_id = await server.submit(fake_job("env"))
    await server.wait_status(job_id)
    settings = server.app.extensions["lmeval_trio.settings"]
    model_dir = settings.data_dir / "jobs" / str(job_id) / "output" / "model"
    model_dir.mkdir(parents=True)
    for n, text in enumerate(ODD_RESULTS):
        (model_dir / f"results_2026-01-01T00-00-{n:02d}.json").write_text(text)  # the newest
        response = await server.client.get(f"/job/{job_id}/results")
        assert response.status_code in (200, 404), (text[:80], response.text)
        body = response.json()
        assert body["detail"] if response.status_code == 404 else body["job_id"] == job_id
        if response.status_code == 200:
            assert isinstance(body["metrics"], list)
