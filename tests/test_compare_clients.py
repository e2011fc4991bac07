"""``lmeval-trio compare`` and the client's comparison methods, and GET /compare?sweep=ID,
against a real server running a real dummy sweep (num_fewshot 0 and 1, samples logged)."""

from __future__ import annotations

from pathlib import Path

from lmeval_trio.client import AsyncClient
from lmeval_trio.jobs.status import JobStatus
from tests.conftest import DUMMY_JOB, Server
from tests.test_cli import cli_all


async def run_sweep(server: Server) -> tuple[int, int]:
    """The ids of the num_fewshot=0 and num_fewshot=1 cells' jobs, once completed."""
    sweep = {
        "name": "shots",
        "base": {**DUMMY_JOB, "tasks": ["tiny_mc"], "log_samples": True},
        "matrix": {"num_fewshot": [0, 1]},
        "baseline": "num_fewshot=1",
    }
    response = await server.client.post("/sweeps", json=sweep)
    assert response.status_code == 200, response.text
    zero, one = response.json()["job_ids"]
    for job_id in (zero, one):
        job = await server.wait_status(job_id, JobStatus.COMPLETED, JobStatus.FAILED)
        assert job["status"] == "Completed", job["reason"]
    return zero, one


async def test_sweep_cli_and_clients_compare(server: Server, tmp_path: Path) -> None:
    zero, one = await run_sweep(server)
    by_sweep = (await server.client.get("/compare?sweep=1&alpha=0.1")).json()
    assert by_sweep["baseline"] == one and by_sweep["jobs"] == [one, zero]  # its baseline cell
    assert by_sweep["cells"] == {str(one): "num_fewshot=1", str(zero): "num_fewshot=0"}
    assert by_sweep["alpha"] == 0.1
    kinds = {m["kind"] for m in by_sweep["mismatches"]}
    assert {"n_shot", "task_hash"} <= kinds
    report = tmp_path / "report.html"
    table, as_json, saved = await cli_all(
        server.url,
        ["compare", str(zero), str(one)],
        ["compare", "--sweep", "1", "--json"],
        ["compare", str(zero), str(one), "--baseline", str(one), "--report", str(report)],
    )
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert lines[0] == f"Baseline: job {zero}; alpha = 0.05"
    assert lines[1].split()[:5] == ["TASK", "METRIC", "FILTER", "JOB", str(zero)]
    row = lines[2].split()
    assert row[:3] == ["tiny_mc", "acc", "none"] and row[-1] == "!"  # not comparable
    assert "Mismatches:" in table.out and "n_shot" in table.out
    assert "Paired (from samples" in table.out
    assert as_json.code == 0 and as_json.json()["sweep_id"] == 1
    assert saved.code == 0 and report.read_text().startswith("<!DOCTYPE html>")
    async with AsyncClient(server.url) as client:
        found = await client.compare([zero, one], baseline=one, alpha=0.2)
        assert found.baseline == one and found.alpha == 0.2
        assert found.rows[0].jobs[0].job_id == zero
        assert found.rows[0].jobs[0].significant is False  # mismatched: never significant
        paired = found.paired[0]
        assert paired.correct_to_wrong is not None and paired.wrong_to_correct is not None
        flips = await client.compare_flips(one, zero, "tiny_mc", limit=3)
        assert flips.total == paired.correct_to_wrong + paired.wrong_to_correct
        assert len(flips.flips) == min(3, flips.total)
        for flip in flips.flips:
            assert set(flip.documents) == {str(one), str(zero)}
        html = await client.job_report(zero)
        assert f"job {zero}" in html and "<svg" in html and "tiny_mc" in html
        assert (await client.compare_report([zero, one])).startswith("<!DOCTYPE html>")
