"""The ``lmeval-trio`` console script, run as a subprocess against a real server.

CLI processes run under ``trio.run_process`` so the in-process server keeps serving them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from lmeval_trio.cli import _render as render
from lmeval_trio.cli._serve import BUILTIN_ARGS, bind_for, find_hypercorn_config
from lmeval_trio.client import Phase, Progress, ProgressEvent, StatusEvent
from lmeval_trio.http.params import SUPERVISOR_KEY
from lmeval_trio.http.schemas import JobSummary
from lmeval_trio.jobs.status import JobStatus
from tests.conftest import (
    DUMMY_JOB,
    FAKE_LM_EVAL,
    Server,
    fake_job,
    make_settings,
    start_server,
)
from tests.test_client import closed_port_url, write_results

LMEVAL_TRIO = str(Path(sys.executable).parent / "lmeval-trio")
ROOT = Path(__file__).parents[1]
FAKE = ["--lm-eval-path", str(FAKE_LM_EVAL), "--model", "dummy", "--tasks", "fake"]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def _environment(url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMEVAL_")}
    if url is not None:
        env["LMEVAL_URL"] = url
    return {**env, **extra}


async def cli(url: str | None, *args: str, **env: str) -> Run:
    with trio.fail_after(240):
        result = await trio.run_process(
            [LMEVAL_TRIO, *args],
            env=_environment(url, **env),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return Run(result.returncode, result.stdout.decode(), result.stderr.decode())


async def cli_all(url: str | None, *commands: list[str]) -> list[Run]:
    """Independent commands at once: each process is mostly interpreter start-up."""
    runs: dict[int, Run] = {}

    async def one(index: int, args: list[str]) -> None:
        runs[index] = await cli(url, *args)

    async with trio.open_nursery() as nursery:
        for index, args in enumerate(commands):
            nursery.start_soon(one, index, args)
    return [runs[i] for i in range(len(commands))]


async def test_help_lists_commands_and_lm_evals_own_flags() -> None:
    top = await cli(None, "--help")
    assert top.code == 0
    for command in ("serve", "submit", "jobs", "show", "logs", "results", "stop", "delete"):
        assert f"    {command} " in top.out
    assert "LMEVAL_API_KEY" in top.out and "exit codes" in top.out
    submit = await cli(None, "submit", "--help")
    for flag in ("--model_args", "--model-args", "--num_fewshot", "--limit", "--log_samples"):
        assert flag in submit.out  # generated from lm-eval's parser
    serve = await cli(None, "serve", "--help")
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", serve.out))
    assert flags == {"--help", "--host", "--port", "--data-dir", "--concurrency", "--json"} | {
        "--hypercorn-config"
    }  # only what serve uses: no client options (--url, --api-key)


async def test_submit_flags_become_the_request(server: Server) -> None:
    run = await cli(
        server.url,
        "submit",
        *FAKE,
        "--env",
        "FAKE_MODE=env",
        "--limit",
        "3",
        "--num_fewshot",
        "2",
        "--model-args",
        "pretrained=a",
        "dtype=float32",
        "--gen_kwargs",
        '{"temperature": 0}',
        "--log_samples",
        "--num-gpus",
        "0",
        "--json",
    )
    assert run.code == 0, run.err
    job = await server.job(run.json()["job_id"])
    assert job["request"] == {
        "lm_eval_path": str(FAKE_LM_EVAL),
        "model": "dummy",
        "tasks": ["fake"],
        "env_vars": {"FAKE_MODE": "***"},
        "limit": 3.0,
        "num_fewshot": 2,
        "model_args": "pretrained=a,dtype=float32",
        "gen_kwargs": {"temperature": 0},
        "log_samples": True,
        "num_gpus": 0,
    }


async def test_submit_a_file_with_overrides(server: Server, tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps(fake_job("env")))
    run = await cli(server.url, "submit", str(request), "--tasks", "a,b", "c")
    assert run.code == 0, run.err
    assert re.fullmatch(r"Job (\d+) successfully queued.\n", run.out)
    job_id = int(run.out.split()[1])
    assert (await server.job(job_id))["request"]["tasks"] == ["a", "b", "c"]
    bad = await cli(server.url, "submit", str(tmp_path / "missing.json"))
    assert bad.code == 2 and "cannot read" in bad.err


async def test_follow_a_failing_job_exits_non_zero(server: Server) -> None:
    run = await cli(
        server.url, "submit", *FAKE, "--env", "FAKE_MODE=exit", "--env", "FAKE_CODE=3", "-f"
    )
    assert run.code == 1, run.err
    assert "job 1: Failed" in run.err
    assert "ValueError: fake failure for the test" in run.err  # the stderr tail
    assert run.err.rstrip().endswith(
        "error: job 1 failed: lm-eval exited with code 3: ValueError: fake failure for the test"
    )
    as_json = await cli(server.url, "follow", "1", "--json")
    assert as_json.code == 1 and as_json.json()["job"]["status"] == "Failed"
    assert json.loads(as_json.err.splitlines()[-1])["job_id"] == 1


async def test_submit_follow_a_real_dummy_run(server: Server) -> None:
    """The CI path: submit, watch the bars, read the results table, exit 0."""
    run = await cli(
        server.url,
        "submit",
        *("--model", DUMMY_JOB["model"], "--model_args", DUMMY_JOB["model_args"]),
        *("--tasks", *DUMMY_JOB["tasks"], "--include_path", DUMMY_JOB["include_path"]),
        "--follow",
    )
    assert run.code == 0, run.err
    assert "Job 1 successfully queued." in run.err and "job 1: Completed" in run.err
    bars = [line for line in run.err.splitlines() if "%" in line and "it/s" in line]
    assert any(re.match(r"loglikelihood\s+\[#+\]\s+100%\s+32/32", line) for line in bars), bars
    assert any(re.match(r"generate_until\s+\[#+\]\s+100%\s+6/6", line) for line in bars), bars
    header, *rows = run.out.splitlines()
    assert header.split() == ["TASK", "METRIC", "FILTER", "VALUE", "STDERR"]
    assert {tuple(r.split()[:3]) for r in rows} == {
        ("tiny_mc", "acc", "none"),
        ("tiny_gen", "exact_match", "strip"),
    }
    csv_run = await cli(server.url, "results", "1", "--format", "csv")
    assert [r["task"] for r in csv.DictReader(io.StringIO(csv_run.out))] == ["tiny_mc", "tiny_gen"]


async def test_readme_bind_hint_names_the_client_url(server: Server) -> None:
    """The README's "listen elsewhere" hint tells the first job where the server now is, and
    its first job, given that --url (and no LMEVAL_URL), runs to its results table."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    intro = readme.split("Your first evaluation", 1)[0]
    address = re.search(r"`--bind (\S+?)`", intro)
    assert address is not None, intro
    hint = " ".join(intro.split())
    assert f"`--url http://{address[1]}`" in hint and f"LMEVAL_URL=http://{address[1]}" in hint
    first_job = re.findall(r"```bash\n(.*?)```", readme, re.S)[1].strip()
    words = shlex.split(first_job.replace("$PWD", str(ROOT)))
    args = words[words.index("lmeval-trio") + 1 :]
    run = await cli(None, *args, "--url", server.url)
    assert run.code == 0, run.err
    assert "example_arith" in run.out and "acc" in run.out, run.out


async def test_jobs_show_logs_results(server: Server) -> None:
    done = await server.submit(fake_job("env"))
    await server.wait_status(done, JobStatus.COMPLETED)
    write_results(server.app.extensions["lmeval_trio.settings"], done)
    running = await server.submit(fake_job("block"))
    await server.wait_status(running, JobStatus.RUNNING)

    (
        table,
        running_only,
        limited,
        show,
        show_json,
        logs,
        logs_all,
        scores,
        raw,
        early,
    ) = await cli_all(
        server.url,
        ["jobs"],
        ["jobs", "--status", "Running", "--json"],
        ["jobs", "--limit", "1", "--oldest-first"],
        ["show", str(done)],
        ["--json", "show", str(done)],
        ["logs", str(done), "--stream", "stdout"],
        ["logs", str(done)],
        ["results", str(done)],
        ["results", str(done), "--json"],
        ["results", str(running)],
    )
    assert table.out.splitlines()[0].split() == [
        "ID", "STATUS", "PROGRESS", "MODEL", "TASKS", "CREATED", "DURATION"
    ]  # fmt: skip
    assert [line.split()[:2] for line in table.out.splitlines()[1:]] == [
        [str(running), "Running"],  # newest first, as the dashboard lists them
        [str(done), "Completed"],
    ]
    assert [j["job_id"] for j in running_only.json()["jobs"]] == [running]
    assert "(1 of 2 jobs" in limited.out and limited.out.splitlines()[1].split()[0] == str(done)
    assert show.out.startswith(f"Job {done}: Completed (exit code 0)")
    assert "command:" in show.out and str(FAKE_LM_EVAL) in show.out
    assert show_json.json()["exit_code"] == 0
    assert json.loads(logs.out)["argv"][1] == "run"
    assert logs_all.out.startswith("==> stdout <==\n{")
    assert scores.out.splitlines()[1].split() == ["tiny_mc", "acc", "none", "0.7500", "0.1600"]
    assert raw.json()["results"]["lm_eval_version"] == "0.4.13"
    assert early.code == 4 and f"job {running} is Running" in early.err
    await server.client.post(f"/job/{running}/stop")


async def test_logs_follow_streams_until_the_job_ends(server: Server) -> None:
    job_id = await server.submit(fake_job("block"))
    command = [LMEVAL_TRIO, "logs", str(job_id), "-f", "--json"]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, command, stdout=subprocess.PIPE, env=_environment(server.url))
        )
        assert process.stdout is not None
        received = b""
        with trio.fail_after(60):
            while b"ready" not in received:  # the job's first line, while it runs
                received += await process.stdout.receive_some()
            await server.client.post(f"/job/{job_id}/stop")
            async for chunk in process.stdout:
                received += chunk
    assert process.returncode == 0
    assert json.loads(received.splitlines()[0]) == {"stream": "stdout", "line": "ready\n"}


async def test_stop_resume_delete(server: Server) -> None:
    first = await server.submit(fake_job("block"))
    await server.wait_status(first, JobStatus.RUNNING)
    stopped = await cli(server.url, "stop", str(first))
    assert stopped.out == f"Job {first} stopped.\n"
    resumed = await cli(server.url, "resume", str(first), "--json")
    second = resumed.json()["job_id"]
    await server.wait_status(second, JobStatus.RUNNING)
    assert (await cli(server.url, "stop", "--all", "--json")).json()["job_ids"] == [second]
    assert (await cli(server.url, "delete", str(first))).out == f"Job {first} deleted.\n"
    assert (await cli(server.url, "delete", "--all")).out == "Deleted 1 jobs.\n"
    empty = await cli(server.url, "jobs")
    assert empty.out == "" and empty.err == "No jobs.\n"
    neither = await cli(server.url, "stop")
    assert neither.code == 2 and "give a job ID or --all" in neither.err


async def test_server_refusals_print_its_detail(server: Server) -> None:
    missing, invalid, as_json = await cli_all(
        server.url,
        ["show", "999"],
        ["submit", "--model", "dummy"],
        ["submit", "--model", "dummy", "--json"],
    )
    assert missing.code == 4
    assert "refused (HTTP 404): No lm-evaluation-harness job with ID=999 found." in missing.err
    assert invalid.code == 4 and "tasks: Field required" in invalid.err
    error = json.loads(as_json.err)
    assert error["status_code"] == 422 and error["detail"][0]["loc"] == ["body", "tasks"]


async def test_unreachable_server() -> None:
    closed = closed_port_url()
    run, flagged = await cli_all(closed, ["jobs"], ["--url", closed, "jobs", "--json"])
    assert run.code == 3
    assert "cannot reach the lmeval-trio server" in run.err and "LMEVAL_URL" in run.err
    assert flagged.code == 3 and "cannot reach" in json.loads(flagged.err)["error"]


async def test_api_key_from_flag_or_environment(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys=("sesame",))
    async with trio.open_nursery() as nursery:
        url, shutdown, _app = await start_server(nursery, settings)
        refused, flagged = await cli_all(url, ["jobs"], ["jobs", "--api-key", "sesame"])
        assert refused.code == 4 and "missing API key" in refused.err
        assert "--api-key or LMEVAL_API_KEY" in refused.err
        assert flagged.code == 0
        assert (await cli(url, "jobs", LMEVAL_API_KEY="sesame")).code == 0
        shutdown.set()


async def test_serve_runs_hypercorn_with_the_flags(tmp_path: Path) -> None:
    command = [
        LMEVAL_TRIO,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "served"),
        "--concurrency",
        "2",
    ]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=_environment(None),
                check=False,
            )
        )
        url = await _served_url(process)
        nursery.start_soon(_drain, process)
        config = (await cli(url, "--json", "jobs")).json(), await _config(url)
        process.send_signal(signal.SIGTERM)
    assert config[0] == {"jobs": [], "total": 0}
    assert config[1]["data_dir"] == str(tmp_path / "served")
    assert config[1]["max_concurrency"] == 2
    assert process.returncode == 0


async def _served_url(process: trio.Process) -> str:
    assert process.stderr is not None
    seen = b""
    with trio.fail_after(60):
        while not (found := re.search(rb"Running on (http://[\d.:]+)", seen)):
            chunk = await process.stderr.receive_some()
            assert chunk, seen.decode()
            seen += chunk
    return found.group(1).decode()


async def _drain(process: trio.Process) -> None:
    assert process.stderr is not None
    async for _ in process.stderr:
        pass


async def _config(url: str) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(base_url=url) as client:
        data: dict[str, Any] = (await client.get("/config")).json()
        return data


def test_serve_finds_the_shipped_config_and_honours_the_flags() -> None:
    shipped = find_hypercorn_config(None)
    assert shipped == ROOT / "hypercorn.toml"
    assert bind_for(None, None, shipped) is None  # the toml's bind stays
    assert bind_for(None, 9000, shipped) == "0.0.0.0:9000"
    assert bind_for("127.0.0.1", None, shipped) == "127.0.0.1:8080"
    assert bind_for(None, None, None) == "0.0.0.0:8080"  # no toml: the built-in defaults
    assert "--worker-class=trio" in BUILTIN_ARGS


def _summary(status: str) -> JobSummary:
    return JobSummary.model_validate(
        {
            "job_id": 4,
            "argument": "lm-eval run",
            "status": status,
            "timestamp": None,
            "exit_code": None,
            "inference_progress_pct": 0,
            "created_at": "2025-01-01T00:00:00+00:00",
            "queued_at": "2025-01-01T00:00:00+00:00",
            "started_at": None,
            "finished_at": None,
            "reason": None,
            "resumed_from": None,
            "attempts": 0,
            "gpus": [],
            "progress": {},
            "request": {},
        }
    )


def _progress(n: int) -> ProgressEvent:
    phase = Phase(name="loglikelihood", n=n, total=40, rate_per_s=4.0, elapsed_s=n / 4, eta_s=1)
    return ProgressEvent(4, Progress(percent=n * 100 // 40, phases=[phase]))


def test_progress_view_on_a_terminal_redraws_in_place() -> None:
    screen = io.StringIO()
    view = render.ProgressView(screen, live=True)
    view.show(StatusEvent(_summary("Running")))
    view.show(_progress(10))
    view.show(_progress(20))
    view.show(StatusEvent(_summary("Completed")))
    text = screen.getvalue()
    assert text.count("\x1b[1F\x1b[J") == 2  # one redraw, then the status line above the bar
    assert text.endswith("job 4: Completed\nloglikelihood    [############------------]  50%"
                         "  20/40  4.00 it/s  0:05<0:01\n")  # fmt: skip


def test_progress_view_in_a_log_prints_every_tenth() -> None:
    log = io.StringIO()
    view = render.ProgressView(log, live=False)
    for n in range(41):
        view.show(_progress(n))
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and "\x1b" not in log.getvalue()
    assert lines[-1].startswith("loglikelihood    [########################] 100%  40/40")


def test_clock_and_table() -> None:
    assert [render.clock(s) for s in (None, 5, 65, 3725)] == ["?", "0:05", "1:05", "1:02:05"]
    assert render.table(("A", "LONG"), [("xyz", "1")]) == "A    LONG\nxyz  1"


async def test_usage_errors_exit_2() -> None:
    runs = await cli_all(None, ["jobs", "--url"], ["show", "x"], ["results", "1", "--format", "x"])
    assert [run.code for run in runs] == [2, 2, 2]


def test_a_phase_without_a_known_total_shows_no_zero_of_zero() -> None:
    starting = render.phase_line(Phase(name="generate_until"))
    assert "0/0" not in starting and "starting" in starting
    windows = render.phase_line(Phase(name="loglikelihood_rolling", n=12, rate_per_s=3.0))
    assert "12 done" in windows and "/0" not in windows
    shown = render.phase_line(Phase(name="loglikelihood", n=84, total=228))
    assert " 37%  84/228" in shown  # as tqdm shows it


async def test_show_lists_attempts_and_the_next_try(tmp_path: Path) -> None:
    """A transient failure (connection refused) with attempts left: ``show`` names when the
    next attempt may start and lists each attempt (outcome, exit, reason, log offsets); the
    Python client's types carry the same."""
    from lmeval_trio.client import AsyncClient

    error = tmp_path / "job-files" / "error.txt"
    settings = make_settings(tmp_path, retry_base_delay_s=600)
    error.write_text("requests.exceptions.ConnectionError: Connection refused\n")
    body = {**fake_job("exit", FAKE_ERROR_FILE=str(error)), "max_attempts": 2}
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with AsyncClient(url) as client:
            submitted = await client.submit(body)
            job_id = submitted.job_id
            supervisor = app.extensions[SUPERVISOR_KEY]
            with trio.fail_after(60):  # on the change signal, no polling
                while True:
                    version = supervisor.changed.version
                    if (await supervisor.get(job_id)).retry_at is not None:
                        break
                    await supervisor.changed.wait_past(version)
            job = await client.get_job(job_id)
            assert job.retry_at is not None
            [attempt] = job.attempt_history
            assert attempt.retried and attempt.exit_code == 1 and attempt.stderr_offset == 0
            shown = await cli(url, "show", str(job_id))
            await client.stop(job_id)
            stopped = await cli(url, "show", str(job_id))
        shutdown.set()
    assert shown.code == 0, shown.err
    assert f"Job {job_id}: Queued" in shown.out
    assert f"next try:  {render._timestamp(job.retry_at)} (after a transient" in shown.out
    head, row = shown.out.split("--- attempts")[1].splitlines()[1:3]
    assert head.split() == ["#", "STARTED", "FINISHED", "OUTCOME", "EXIT", "LOG", "FROM", "REASON"]
    words = row.split()
    assert words[0] == "1" and words[5:9] == ["Failed,", "retried", "1", "0/0"]
    assert "lm-eval exited with code 1: requests.exceptions" in row
    assert "next try" not in stopped.out and f"Job {job_id}: Stopped" in stopped.out
    assert "Failed, retried" in stopped.out.split("--- attempts")[1]
