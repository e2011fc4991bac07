"""``lmeval-trio sweep ...`` and the client's sweep methods, against a real server."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path

import trio

from lmeval_trio.client import ApiError, AsyncClient
from lmeval_trio.jobs.status import JobStatus
from tests.conftest import DUMMY_JOB, Server, fake_job, job_files, make_settings, start_server
from tests.test_cli import LMEVAL_TRIO, cli, cli_all


async def test_sweep_submit_follow_a_real_dummy_sweep(server: Server, tmp_path: Path) -> None:
    sweep = {
        "name": "cli",
        "base": {**DUMMY_JOB, "tasks": ["tiny_mc"]},
        "matrix": {"num_fewshot": [0, 1]},
        "baseline": "num_fewshot=0",
    }
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep))
    run = await cli(server.url, "sweep", "submit", str(path), "--follow")
    assert run.code == 0, run.err
    assert "Sweep 1 queued with 2 jobs." in run.err
    assert any(line.startswith("sweep 1") and "100%" in line for line in run.err.splitlines())
    cell_bars = [line for line in run.err.splitlines() if line.startswith("num_fewshot=")]
    assert cell_bars and all("%  ETA" in line for line in cell_bars)  # a running cell's bar
    header, *rows = run.out.splitlines()
    assert header.split()[:3] == ["TASK", "METRIC", "FILTER"]
    assert "num_fewshot=0" in header and "num_fewshot=1" in header
    assert [row.split()[:3] for row in rows] == [["tiny_mc", "acc", "none"]]
    shown, as_csv, listed = await cli_all(
        server.url, ["sweep", "show", "1"], ["sweep", "results", "1", "--csv"], ["sweep", "list"]
    )
    assert shown.code == 0 and "Sweep 1 (cli): Completed, 2/2 completed" in shown.out
    assert "num_fewshot=0 (baseline)" in shown.out
    table = list(csv.reader(io.StringIO(as_csv.out)))
    assert table[0] == [
        *("task", "metric", "filter"),
        "num_fewshot=0",
        "num_fewshot=0 stderr",
        "num_fewshot=1",
        "num_fewshot=1 stderr",
    ]
    async with AsyncClient(server.url) as client:
        results = await client.sweep_results(1)
        own = await client.results(results.columns[1].job_id or 0)
        assert float(table[1][5]) == own.metrics[0].value == results.rows[0].values["num_fewshot=1"]
    assert "cli" in listed.out and "2/2 completed" in listed.out


async def test_sweep_stop_resume_delete_and_refusals(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "sweep.json"
    body = {"name": "blocking", "base": fake_job("block"), "matrix": {"limit": [1, 2]}}
    path.write_text(json.dumps(body))
    submitted = await cli(server.url, "sweep", "submit", str(path), "--json")
    ids = submitted.json()["job_ids"]
    for job_id in ids:
        await server.wait_status(job_id, JobStatus.RUNNING)
    stopped = await cli(server.url, "sweep", "stop", "1")
    assert stopped.out == "Sweep 1: stopped 2 jobs.\n"
    resumed = await cli(server.url, "sweep", "resume", "1", "--json")
    new_ids = resumed.json()["job_ids"]
    assert len(new_ids) == 2 and not set(new_ids) & set(ids)
    async with AsyncClient(server.url) as client:
        detail = await client.get_sweep(1)
        assert [c.job_id for c in detail.cells] == new_ids
        assert (await client.list_sweeps()).total == 1
        try:
            await client.get_sweep(2)
        except ApiError as error:
            assert error.status_code == 404
        else:
            raise AssertionError("sweep 2 does not exist")
    deleted = await cli(server.url, "sweep", "delete", "1")
    assert deleted.out == "Sweep 1 deleted with 4 jobs.\n"
    missing, bad_file, refused = await cli_all(
        server.url,
        ["sweep", "show", "1"],
        ["sweep", "submit", str(tmp_path / "nope.json")],
        ["sweep", "submit", "-", "--json"],
    )
    assert missing.code == 4 and "No sweep with ID=1 found." in missing.err
    assert bad_file.code == 2 and "cannot read the sweep" in bad_file.err
    assert refused.code == 2  # stdin is empty: not JSON
    path.write_text(json.dumps({**body, "matrix": {"nope": [1]}}))
    refused = await cli(server.url, "sweep", "submit", str(path), "--json")
    refusal = json.loads(refused.err)
    assert refused.code == 4 and refusal["detail"][0]["loc"] == ["body", "matrix", "nope"]
    assert (await cli(server.url, "sweep", "show", "x")).code == 2


async def test_follow_draws_a_bar_per_running_cell_and_an_overall_bar(tmp_path: Path) -> None:
    """Two cells held mid-progress (each reads its own FIFO gate): the follow view shows the
    overall bar and one bar per running cell at its own percentage, then the results."""
    gates = [job_files(tmp_path) / f"gate{i}" for i in (1, 2)]
    for gate in gates:
        os.mkfifo(gate)
    body = {
        "name": "bars",
        "base": fake_job("bars", FAKE_TOTAL="4"),
        "matrix": {
            "env_vars": [
                {"FAKE_MODE": "bars", "FAKE_TOTAL": "4", "FAKE_GATE": str(g)} for g in gates
            ]
        },
    }
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(body))
    settings = make_settings(tmp_path, max_concurrency=2)
    async with trio.open_nursery() as nursery:
        url, shutdown, _app = await start_server(nursery, settings)
        command = [LMEVAL_TRIO, "sweep", "submit", str(path), "--follow"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMEVAL_")}
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**env, "LMEVAL_URL": url}
        )
        assert process.stdout is not None and process.stderr is not None
        seen = bytearray()

        async def shown(*parts: str) -> str:
            """The CLI's stderr once one line holds all ``parts`` (read as it comes)."""
            assert process.stderr is not None
            with trio.fail_after(60):
                while not any(all(p in line for p in parts) for line in seen.decode().splitlines()):
                    chunk = await process.stderr.receive_some()
                    assert chunk, seen.decode()
                    seen.extend(chunk)
            return seen.decode()

        writers = [await trio.to_thread.run_sync(open, gate, "w") for gate in gates]
        for writer, steps in zip(writers, (1, 3), strict=True):
            await trio.to_thread.run_sync(writer.write, "go\n" * steps)
            await trio.to_thread.run_sync(writer.flush)
        await shown("env_vars#1", "[", " 25%")
        text = await shown("env_vars#2", "[", " 75%")
        assert any(line.startswith("sweep 1") and "%  ETA" in line for line in text.splitlines())
        for writer, steps in zip(writers, (3, 1), strict=True):
            await trio.to_thread.run_sync(writer.write, "go\n" * steps)
            await trio.to_thread.run_sync(writer.close)
        with trio.fail_after(60):
            out = b"".join([chunk async for chunk in process.stdout])
            seen.extend(b"".join([chunk async for chunk in process.stderr]))
            assert await process.wait() == 0, seen.decode()
        shutdown.set()
    last = seen.decode().splitlines()
    assert any(line.startswith("sweep 1") and " 100%" in line for line in last)
    assert out.decode() == "Sweep 1: no results yet\n"  # the fake lm_eval writes none
