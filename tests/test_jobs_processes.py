"""Job processes through the server: trees die on stop, floods drain, slots are respected."""

from __future__ import annotations

import os
import re
import resource
from pathlib import Path

import httpx
import trio

from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.runners import process
from tests.conftest import (
    FAKE_LM_EVAL,
    Server,
    fake_job,
    job_files,
    make_settings,
    start_server,
    supervisor_of,
)


def _pids(stdout: list[str]) -> dict[str, int]:
    pids = {}
    for line in stdout:
        found = re.fullmatch(r"(leader|grandchild) (\d+)\n", line)
        if found:
            pids[found.group(1)] = int(found.group(2))
    return pids


async def _wait_for_lines(server: Server, job_id: int, count: int) -> list[str]:
    supervisor = supervisor_of(server)
    with trio.fail_after(30):
        while True:
            pulse = supervisor.live_changes(job_id)
            assert pulse is not None
            version = pulse.version
            lines = (await server.job(job_id))["stdout"]
            if len(_pids(lines)) >= count:
                return list(lines)
            await pulse.wait_past(version)


async def test_stop_kills_a_tree_whose_grandchild_ignores_sigterm(server: Server) -> None:
    job_id = await server.submit(fake_job("tree"))
    pids = _pids(await _wait_for_lines(server, job_id, 2))
    group = os.getpgid(pids["leader"])  # the job's first process leads it (reaper.py)
    assert process.group_alive(group)
    response = await server.client.post(f"/job/{job_id}/stop")
    assert response.json()["job_status"] == "Stopped"
    assert not process.group_alive(group)
    assert process.process_start_ticks(pids["grandchild"]) is None


async def test_delete_kills_the_tree_too(server: Server) -> None:
    job_id = await server.submit(fake_job("tree"))
    pids = _pids(await _wait_for_lines(server, job_id, 2))
    group = os.getpgid(pids["leader"])
    assert (await server.client.delete(f"/job/{job_id}")).status_code == 200
    assert not process.group_alive(group)


async def test_output_flood_finishes_with_flat_memory(server: Server) -> None:
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    job_id = await server.submit(fake_job("flood", FAKE_MB="200"))
    job = await server.wait_status(job_id, JobStatus.COMPLETED, JobStatus.FAILED)
    assert job["status"] == "Completed", job["reason"]
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024
    assert growth_mb < 50, growth_mb  # the log went to disk, not into memory
    settings = server.app.extensions["lmeval_trio.settings"]
    stderr_log = settings.data_dir / "jobs" / str(job_id) / "stderr.log"
    assert stderr_log.stat().st_size >= 200 * 1024 * 1024
    assert job["inference_progress_pct"] == 100
    assert len(job["stderr"]) <= settings.log_tail_lines


async def test_concurrency_limit_and_queue_order(server: Server) -> None:
    supervisor = supervisor_of(server)
    ids = [await server.submit(fake_job("block")) for _ in range(6)]
    await server.wait_status(ids[3], JobStatus.RUNNING)
    statuses = [(await server.job(i))["status"] for i in ids]
    assert statuses == ["Running"] * 4 + ["Queued"] * 2
    stats = supervisor.statistics()
    assert (stats.running, stats.queued, stats.slots_free) == (4, 2, 0)
    assert (await server.job(ids[4]))["timestamp"] is None
    await server.client.post(f"/job/{ids[0]}/stop")
    job = await server.wait_status(ids[4], JobStatus.RUNNING)  # the next in line starts
    assert job["status"] == "Running"
    assert (await server.job(ids[5]))["status"] == "Queued"
    await server.client.post("/jobs/stop")


async def test_a_stopped_queued_job_never_runs(server: Server) -> None:
    blockers = [await server.submit(fake_job("block")) for _ in range(4)]
    queued = await server.submit(fake_job("env"))
    await server.wait_status(blockers[3], JobStatus.RUNNING)
    response = await server.client.get(f"/job/{queued}/stop")
    assert response.json()["message"] == f"Job {queued} removed from the queue."
    for blocker in blockers:
        await server.client.post(f"/job/{blocker}/stop")
    after = await server.submit(fake_job("env"))
    await server.wait_status(after, JobStatus.COMPLETED)
    job = await server.job(queued)
    assert job["status"] == "Stopped" and job["timestamp"] is None and job["stdout"] == []


async def test_missing_executable_fails_the_job_not_the_server(tmp_path: Path) -> None:
    missing = tmp_path / "missing-lm-eval"
    missing.write_text("#!/bin/sh\n")
    missing.chmod(0o755)
    settings = make_settings(tmp_path, allowed_lm_eval_paths=(str(FAKE_LM_EVAL), str(missing)))
    missing.unlink()  # allowed at start (settings refuse a missing one), gone since
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url) as client:
            server = Server(url, client, app)
            job_id = await server.submit({**fake_job("env"), "lm_eval_path": str(missing)})
            job = await server.wait_status(job_id, JobStatus.FAILED)
            assert job["reason"].startswith("could not start: executable not found")
            healthy = await client.get("/healthz")
            assert healthy.status_code == 200 and healthy.json()["supervisor"] == "alive"
            after = await server.wait_status(await server.submit(fake_job("env")))
            assert after["status"] == "Completed"
        shutdown.set()


async def test_progress_is_live_mid_run(server: Server, tmp_path: Path) -> None:
    gate = job_files(tmp_path) / "gate"
    os.mkfifo(gate)
    job_id = await server.submit(fake_job("bars", FAKE_TOTAL="4", FAKE_GATE=str(gate)))
    supervisor = supervisor_of(server)
    writer = await trio.to_thread.run_sync(open, gate, "w")
    try:
        for step in range(1, 4):
            await trio.to_thread.run_sync(writer.write, "go\n")
            await trio.to_thread.run_sync(writer.flush)
            with trio.fail_after(30):
                while True:
                    pulse = supervisor.live_changes(job_id)
                    assert pulse is not None
                    version = pulse.version
                    pct = (await server.job(job_id))["inference_progress_pct"]
                    if pct >= step * 25:
                        break
                    await pulse.wait_past(version)
            assert pct == step * 25
        job = await server.job(job_id)
        assert job["progress"]["phase"] == "loglikelihood"
        assert job["progress"]["n"] == 3 and job["progress"]["total"] == 4
        await trio.to_thread.run_sync(writer.write, "go\n")
    finally:
        await trio.to_thread.run_sync(writer.close)
    job = await server.wait_status(job_id, JobStatus.COMPLETED)
    assert job["inference_progress_pct"] == 100
