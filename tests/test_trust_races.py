"""Races: records, folders, processes and counters stay consistent under interleavings of
submit, stop, delete and delete-all, with real child processes and a real store.

The interleaving that broke it: delete-all stopped a job that takes its whole grace (its
grandchild ignores SIGTERM), a job submitted meanwhile started, and delete-all then deleted
that newer job's record and folder while it ran.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import threading
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from lmeval_trio.config import Settings
from lmeval_trio.engine.live import LiveJob, StopReason
from lmeval_trio.engine.supervisor import StopOutcome, Supervisor
from lmeval_trio.errors import JobNotFound
from lmeval_trio.http.params import SUPERVISOR_KEY
from lmeval_trio.jobs.status import JobStatus
from tests.conftest import Server, fake_job, make_settings, pid_alive, start_server


async def assert_consistent(supervisor: Supervisor, settings: Settings) -> None:
    """Every folder has a record, every Running record a live process, and the counters
    (what /healthz reports) agree with the records (what the listing reports)."""
    records = {r.id: r for r in await supervisor.store.select()}
    jobs_dir = settings.data_dir / "jobs"
    folders = {int(p.name) for p in jobs_dir.iterdir()} if jobs_dir.exists() else set()
    assert folders <= records.keys(), f"folders without records: {folders - records.keys()}"
    stats = supervisor.statistics()
    by_status = {s: [r for r in records.values() if r.status is s] for s in JobStatus}
    assert stats.running == len(by_status[JobStatus.RUNNING]), stats
    assert stats.queued == len(by_status[JobStatus.QUEUED]), stats
    for record in by_status[JobStatus.RUNNING]:
        assert record.pid is not None and pid_alive(record.pid), record
    for record in records.values():
        live_record = await supervisor.get(record.id)
        assert live_record.status is record.status


async def _wait_running(supervisor: Supervisor, job_id: int) -> None:
    with trio.fail_after(60):
        while True:
            version = supervisor.changed.version
            record = await supervisor.get(job_id)
            if record.status is JobStatus.RUNNING and record.pid is not None:
                return
            await supervisor.changed.wait_past(version)


async def _wait_tree(supervisor: Supervisor, job_id: int) -> None:
    """Until a "tree" job's grandchild (which ignores SIGTERM) is up: its stop takes the grace."""
    with trio.fail_after(60):
        while True:
            pulse = supervisor.live_changes(job_id)
            assert pulse is not None, "the job ended early"
            version = pulse.version
            record = await supervisor.get(job_id)
            if record.stdout_path.exists() and "grandchild" in record.stdout_path.read_text():
                return
            await pulse.wait_past(version)


class ObservedSupervisor(Supervisor):
    """The real supervisor, telling the test when it starts stopping a job."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.stopping: dict[int, trio.Event] = {}

    def _cancel(self, live: LiveJob, reason: StopReason) -> None:
        super()._cancel(live, reason)
        self.stopping.setdefault(live.id, trio.Event()).set()

    async def wait_stopping(self, job_id: int) -> None:
        await self.stopping.setdefault(job_id, trio.Event()).wait()


async def test_delete_all_spares_a_job_submitted_during_a_stop_grace(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, kill_grace_s=2.0, max_concurrency=2)
    supervisor = ObservedSupervisor(settings)
    async with supervisor:
        slow = await supervisor.submit(fake_job("tree"))  # takes its whole grace to stop
        queued_before = await supervisor.submit(fake_job("block"))
        await _wait_tree(supervisor, slow.id)
        async with trio.open_nursery() as nursery:
            deleted: list[int] = []

            async def delete_all() -> None:
                deleted.append(await supervisor.delete_all())

            nursery.start_soon(delete_all)
            with trio.fail_after(30):
                await supervisor.wait_stopping(slow.id)
            newer = await supervisor.submit(fake_job("block"))
            await _wait_running(supervisor, newer.id)
        assert deleted == [2]
        for gone in (slow.id, queued_before.id):
            try:
                await supervisor.get(gone)
                raise AssertionError(f"job {gone} survived delete-all")
            except JobNotFound:
                pass
        record = await supervisor.get(newer.id)
        assert record.status is JobStatus.RUNNING and record.job_dir.is_dir()
        await assert_consistent(supervisor, settings)
        outcome, stopped = await supervisor.stop(newer.id)
        assert outcome is StopOutcome.STOPPED and stopped.status is JobStatus.STOPPED
        assert stopped.finished_at is not None  # its end was recorded
        await assert_consistent(supervisor, settings)


async def test_delete_of_a_job_stopping_under_a_concurrent_delete_all(tmp_path: Path) -> None:
    """delete, stop and delete-all of the same jobs at once: each job ends once, its
    record and folder go, and nothing is left half-done."""
    settings = make_settings(tmp_path, kill_grace_s=1.0, max_concurrency=2)
    async with Supervisor(settings) as supervisor:
        ids = [(await supervisor.submit(fake_job(mode))).id for mode in ("tree", "block", "block")]
        await _wait_tree(supervisor, ids[0])
        await _wait_running(supervisor, ids[1])

        async def quietly(op: Any, *args: Any) -> None:
            with contextlib.suppress(JobNotFound):  # lost the race to another delete
                await op(*args)

        async with trio.open_nursery() as nursery:
            for job_id in ids:
                nursery.start_soon(quietly, supervisor.delete, job_id)
                nursery.start_soon(quietly, supervisor.stop, job_id)
            nursery.start_soon(supervisor.delete_all)
        assert await supervisor.store.select() == []
        await assert_consistent(supervisor, settings)


async def test_storm_of_submits_stops_and_deletes_through_the_server(tmp_path: Path) -> None:
    """Concurrent submissions during delete-alls, stops and deletes through a real server;
    afterwards the listing, /healthz, the folders and the processes agree, every job that is
    left can be stopped, and a last delete-all leaves nothing."""
    settings = make_settings(tmp_path, kill_grace_s=1.0, max_concurrency=3)
    rng = random.Random(1405)
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        supervisor: Supervisor = app.extensions[SUPERVISOR_KEY]
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for _ in range(3):
                assert (await client.post("/job", json=fake_job("tree"))).status_code == 200
            await _wait_running(supervisor, 1)
            async with trio.open_nursery() as storm:
                for n in range(60):
                    storm.start_soon(_one_operation, client, rng.random(), n)
            await _quiesce(supervisor)
            await assert_consistent(supervisor, settings)
            listing = (await client.get("/jobs")).json()["jobs"]
            health = (await client.get("/healthz")).json()
            statuses = [job["status"] for job in listing]
            assert health["running"] == statuses.count("Running"), (health, statuses)
            assert health["queued"] == statuses.count("Queued"), (health, statuses)
            for job in listing:
                response = await client.post(f"/job/{job['job_id']}/stop")
                assert response.status_code == 200, response.text
            assert (await client.delete("/jobs")).status_code == 200
            assert (await client.get("/jobs")).json()["jobs"] == []
            health = (await client.get("/healthz")).json()
            assert (health["running"], health["queued"]) == (0, 0)
            jobs_dir = settings.data_dir / "jobs"
            assert not jobs_dir.exists() or list(jobs_dir.iterdir()) == []
        shutdown.set()


async def _one_operation(client: httpx.AsyncClient, roll: float, n: int) -> None:
    if roll < 0.6:
        mode = "tree" if n % 4 == 0 else "block"
        assert (await client.post("/job", json=fake_job(mode))).status_code == 200
    elif roll < 0.7:
        assert (await client.delete("/jobs")).status_code == 200
    elif roll < 0.85:
        assert (await client.post(f"/job/{n % 20 + 1}/stop")).status_code in (200, 404)
    else:
        assert (await client.delete(f"/job/{n % 20 + 1}")).status_code in (200, 404)


async def _quiesce(supervisor: Supervisor) -> None:
    """Until every surviving job that can have a slot runs (no dispatch in flight): a job
    holding a slot counts only once its Running record, with its pid, is stored."""
    with trio.fail_after(60):
        while True:
            version = supervisor.changed.version
            stats = supervisor.statistics()
            live = stats.queued + stats.running
            running = [r for r in await supervisor.store.select([JobStatus.RUNNING])]
            settled = len(running) == stats.running and all(r.pid for r in running)
            if stats.running == min(live, stats.slots_total) and settled:
                return
            await supervisor.changed.wait_past(version)


async def test_artifacts_while_the_job_folder_churns(server: Server) -> None:
    """Files appear and vanish (and a file turns into a folder) while artifacts are listed
    and downloaded: every answer is a 200 listing or a JSON 404, never a 5xx."""
    job_id = await server.submit(fake_job("env"))
    await server.wait_status(job_id)
    settings = server.app.extensions["lmeval_trio.settings"]
    folder = settings.data_dir / "jobs" / str(job_id) / "output"
    folder.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            path = folder / f"f{n % 50}"
            try:
                if path.is_dir():
                    path.rmdir()
                elif path.exists():
                    path.unlink()
                    if n % 7 == 0:
                        path.mkdir()
                else:
                    path.write_bytes(b"x" * (n % 100))
            except OSError:
                pass
            n += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.to_thread.run_sync, churn))
        try:
            for _ in range(150):
                listing = await server.client.get(f"/job/{job_id}/artifacts")
                assert listing.status_code == 200, listing.text
                for artifact in listing.json()["artifacts"][-3:]:
                    response = await server.client.get(artifact["url"])
                    assert response.status_code in (200, 404), response.text
                    if response.status_code == 404:
                        assert response.json()["detail"]
        finally:
            stop.set()


async def test_resume_copies_the_cache_without_following_symlinks(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the job\n")
    (tmp_path / "secret-dir").mkdir()
    (tmp_path / "secret-dir" / "key").write_text("k\n")
    settings = make_settings(tmp_path)
    async with Supervisor(settings) as supervisor:
        failed = [await supervisor.submit(fake_job("exit")) for _ in range(2)]
        for record in failed:
            assert (await supervisor.wait(record.id)).status is JobStatus.FAILED
        planted = failed[0].job_dir / "cache"
        (planted / "responses_rank0.db").write_text("real cache\n")
        (planted / "leak.db").symlink_to(secret)
        (planted / "sub").mkdir()
        (planted / "sub" / "leak").symlink_to(tmp_path / "secret-dir", target_is_directory=True)
        whole = failed[1].job_dir / "cache"
        shutil.rmtree(whole)
        whole.symlink_to(tmp_path / "secret-dir", target_is_directory=True)
        resumed = [await supervisor.resume(record.id) for record in failed]
        copied = resumed[0].job_dir / "cache"
        assert (copied / "responses_rank0.db").read_text() == "real cache\n"
        assert not (copied / "leak.db").exists() and not (copied / "leak.db").is_symlink()
        assert list((copied / "sub").iterdir()) == []
        assert not (resumed[1].job_dir / "cache" / "key").exists()
        for record in resumed:
            await supervisor.wait(record.id)
