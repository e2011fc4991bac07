"""Durability features: resume reuses the response cache, logs API, store schema, retention."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import trio

from lmeval_trio.config import Settings
from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.store.sqlite import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Draft,
    IdTaken,
    JobStore,
    StoreError,
)
from tests.conftest import Server, fake_job, make_settings, supervisor_of
from tests.support.stub_openai import StubHandle
from tests.test_real_lm_eval import completions_job


async def _wait_progress(server: Server, job_id: int, percent: int) -> None:
    supervisor = supervisor_of(server)
    with trio.fail_after(120):
        while True:
            pulse = supervisor.live_changes(job_id)
            assert pulse is not None, "the job ended early"
            version = pulse.version
            if (await server.job(job_id))["inference_progress_pct"] >= percent:
                return
            await pulse.wait_past(version)


async def test_resume_sends_only_the_remainder(server: Server, stub: StubHandle) -> None:
    stub.set_delay(0.1)
    job_id = await server.submit(completions_job(stub))
    await _wait_progress(server, job_id, 40)
    stopped = (await server.client.post(f"/job/{job_id}/stop")).json()
    assert stopped["job_status"] == "Stopped"
    first_run = stub.stats()["v1_requests"]
    assert 10 <= first_run < 38
    stub.reset_stats()
    stub.set_delay(0)
    response = await server.client.post(f"/job/{job_id}/resume")
    assert response.status_code == 200, response.text
    resumed = response.json()["job_id"]
    job = await server.wait_status(resumed, JobStatus.COMPLETED, JobStatus.FAILED)
    assert job["status"] == "Completed", job["reason"]
    assert job["resumed_from"] == job_id
    remainder = stub.stats()["v1_requests"]
    assert remainder <= 38 - first_run + 2  # at most the in-flight requests are repeated
    results = (await server.client.get(f"/job/{resumed}/results")).json()
    values = {(m["task"], m["metric"]): m["value"] for m in results["metrics"]}
    assert values == {("tiny_mc", "acc"): 1.0, ("tiny_gen", "exact_match"): 1.0}


async def test_only_stopped_or_failed_jobs_resume(server: Server) -> None:
    job_id = await server.submit(fake_job("env"))
    await server.wait_status(job_id, JobStatus.COMPLETED)
    response = await server.client.post(f"/job/{job_id}/resume")
    assert response.status_code == 409
    assert "only Stopped or Failed" in response.json()["detail"]


async def test_logs_api_offsets_tail_and_collapsed_redraws(server: Server) -> None:
    job_id = await server.submit(fake_job("flood", FAKE_MB="1"))
    await server.wait_status(job_id, JobStatus.COMPLETED)
    first = (await server.client.get(f"/job/{job_id}/logs?stream=stderr&limit=1000")).json()
    assert first["offset"] == 0 and first["next_offset"] == 1000
    assert first["size"] > 1024 * 1024
    second = (
        await server.client.get(
            f"/job/{job_id}/logs?stream=stderr&offset={first['next_offset']}&limit=1000"
        )
    ).json()
    assert second["offset"] == 1000
    tail = (await server.client.get(f"/job/{job_id}/logs?stream=stderr&tail=500")).json()
    assert tail["next_offset"] == tail["size"]
    assert all("\r" not in line for line in tail["lines"])  # redraws collapsed
    stdout = (await server.client.get(f"/job/{job_id}/logs?stream=stdout")).json()
    assert stdout["lines"][0].endswith("bytes written\n")
    bad = await server.client.get(f"/job/{job_id}/logs?stream=stdin")
    assert bad.status_code == 422


async def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = JobStore(path)
    await store.open()
    await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        conn.commit()
    with pytest.raises(StoreError, match="newer than this server"):
        await JobStore(path).open()


async def test_ids_never_repeat_across_restarts_and_deletes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with Supervisor(settings) as supervisor:
        first = await supervisor.submit(fake_job("env"))
        await supervisor.wait(first.id)
        await supervisor.delete(first.id)
    async with Supervisor(settings) as supervisor:
        second = await supervisor.submit(fake_job("env"))
        assert second.id == first.id + 1
        await supervisor.wait(second.id)


async def test_the_store_never_stores_a_draft_under_an_id_handed_out_before(
    tmp_path: Path,
) -> None:
    """A draft names the id it was made for (its argv and folder carry it): the store takes
    it only as a fresh id, never one handed out before, even to a job deleted since."""
    store = JobStore(tmp_path / "jobs.db")
    await store.open()
    try:

        def draft(job_id: int) -> Draft:
            job_dir = tmp_path / "jobs" / str(job_id)
            return Draft({"tasks": "x"}, ["lm_eval"], {}, job_dir, job_dir, job_id=job_id)

        assert await store.next_id() == 1
        first = await store.create(draft(1), "2026-01-01T00:00:00+00:00")
        assert (first.id, first.job_dir) == (1, tmp_path / "jobs" / "1")
        later = await store.create(draft(5), "2026-01-01T00:00:00+00:00")  # ids 2-4 skipped
        assert later.id == 5 and await store.next_id() == 6
        await store.delete([1, 5])
        for taken in (1, 3, 5):
            with pytest.raises(IdTaken, match=f"job id {taken} has been handed out"):
                await store.create(draft(taken), "2026-01-01T00:00:00+00:00")
        assert await store.select() == [] and await store.next_id() == 6
    finally:
        await store.close()


async def test_retention_prunes_old_finished_jobs(tmp_path: Path) -> None:
    settings: Settings = make_settings(tmp_path, retention_max_jobs=2)
    async with Supervisor(settings) as supervisor:
        ids = []
        for _ in range(4):
            record = await supervisor.submit(fake_job("env"))
            ids.append(record.id)
            await supervisor.wait(record.id)
        remaining = [r.id for r in await supervisor.list_jobs()]
        assert remaining == ids[-2:]
        assert not (settings.data_dir / "jobs" / str(ids[0])).exists()


async def test_a_version_1_database_is_migrated_with_its_records(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(MIGRATIONS[0])
        conn.execute(
            "INSERT INTO jobs (status, request, argv, env, job_dir, output_dir, created_at,"
            " queued_at) VALUES ('Completed', '{\"tasks\": \"x\"}', '[\"lm_eval\"]', '{}',"
            " '/j', '/j/output', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')"
        )
        conn.execute("PRAGMA user_version=1")
        conn.commit()
    store = JobStore(path)
    await store.open()
    try:
        record = await store.get(1)
        assert record is not None and record.request == {"tasks": "x"}
        assert record.backend == "local" and record.external_id is None
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_interrupted_jobs_fail_when_requeue_is_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, requeue_interrupted=False)
    store = JobStore(settings.data_dir / "jobs.db")
    await store.open()
    draft = Draft(
        request={"tasks": "x"},
        argv=["lm_eval"],
        env={},
        job_dir=tmp_path / "j",
        output_dir=tmp_path / "j" / "output",
    )
    record = await store.create(draft, "2026-01-01T00:00:00+00:00")
    await store.transition(record.id, JobStatus.QUEUED, JobStatus.RUNNING, pid=None)
    await store.close()
    async with Supervisor(settings) as supervisor:
        failed = await supervisor.get(record.id)
    assert failed.status is JobStatus.FAILED
    assert failed.reason is not None and failed.reason.startswith("interrupted: the server")


async def test_retention_by_age(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, retention_max_age_s=3600)
    async with Supervisor(settings) as supervisor:
        old = await supervisor.submit(fake_job("env"))
        await supervisor.wait(old.id)
        await supervisor.store.update(old.id, finished_at="2020-01-01T00:00:00+00:00")
        new = await supervisor.submit(fake_job("env"))
        await supervisor.wait(new.id)
        assert [r.id for r in await supervisor.list_jobs()] == [new.id]


async def test_a_requeued_job_goes_on_honestly(tmp_path: Path, stub: StubHandle) -> None:
    """Interrupted by a shutdown mid-phase, then completed by the next supervisor: its new
    attempt starts on a line of its own under a marker, the cached answers count as done
    (the phase is not restarted at 0 over the remainder) and the old reason is gone."""
    settings = make_settings(tmp_path, max_concurrency=1)
    stub.set_delay(0.1)
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit(completions_job(stub))
        with trio.fail_after(120):
            while supervisor.progress_dict(await supervisor.get(record.id))["percent"] < 40:
                pulse = supervisor.live_changes(record.id)
                assert pulse is not None, "the job ended early"
                await pulse.wait_past(pulse.version)
    first_run = stub.stats()["v1_requests"]
    stub.set_delay(0)
    async with Supervisor(settings) as supervisor:
        requeued = await supervisor.get(record.id)
        assert requeued.status is JobStatus.QUEUED and "requeued" in (requeued.reason or "")
        final = await supervisor.wait(record.id)
    assert final.status is JobStatus.COMPLETED and final.reason is None and final.attempts == 2
    assert stub.stats()["v1_requests"] <= 38 + 2  # the first attempt's answers were reused
    assert first_run >= 10
    phases = {p["name"]: (p["n"], p["total"]) for p in (final.progress or {})["phases"]}
    assert phases == {"loglikelihood": (32, 32), "generate_until": (6, 6)}
    log = final.stderr_path.read_text(encoding="utf-8")
    marker = next(line for line in log.split("\n") if "[lmeval-trio] attempt 2" in line)
    assert marker.startswith("[lmeval-trio] attempt 2 started at ")
    assert "after: interrupted: the server" in marker
