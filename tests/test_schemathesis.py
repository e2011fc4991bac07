"""Schemathesis fuzzes a real server from its OpenAPI: no 5xx, and every response (status,
content type, body, headers) as documented.

The CLI runs as a subprocess against the in-process hypercorn (its requests are blocking and
the server shares our Trio loop). Stateless phases only (examples, coverage, fuzzing), a few
examples per operation and one worker (Python 3.11's AST parser, which Hypothesis uses, is
not thread-safe), so the run stays well under a minute. Schemathesis 4 runs every check
unless told otherwise (passing --checks=all would override the per-operation settings);
the exceptions are in tests/support/schemathesis.toml, each with its reason.

Fuzzed jobs cannot start anything: dispatch is paused and no lm_eval_path is allowlisted. A
few jobs exist beforehand, so that per-job routes also answer with real records. An API key
is configured, so the "ignored_auth" check proves that every protected operation refuses a
request without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import trio

from tests.conftest import SUPPORT, make_settings, start_server

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFIG = SUPPORT / "schemathesis.toml"
KEY = "schemathesis-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def command(url: str) -> list[str]:
    return [
        str(SCHEMATHESIS),
        "--no-color",
        f"--config-file={CONFIG}",
        "run",
        f"{url}/openapi.json",
        "--phases=examples,coverage,fuzzing",
        "--max-examples=12",
        "--seed=20240601",
        "--generation-database=none",
        "--workers=1",
        "--request-timeout=20",
        f"--header=Authorization: {AUTH['Authorization']}",
    ]


async def seed_jobs(url: str) -> None:
    """Jobs 1-3 (queued) and 4 (stopped); sweep 1 (jobs 5-6, queued)."""
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        for _ in range(4):
            response = await client.post("/job", json={"model": "dummy", "tasks": "tiny_mc"})
            assert response.status_code == 200, response.text
        assert (await client.post("/job/4/stop")).status_code == 200
        sweep = {"name": "s", "base": {"model": "dummy"}, "matrix": {"tasks": ["tiny_mc", "x"]}}
        response = await client.post("/sweeps", json=sweep)
        assert response.status_code == 200, response.text


async def test_openapi_contract_holds_under_fuzzing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_concurrency=0, allowed_lm_eval_paths=(), api_keys=(KEY,))
    async with trio.open_nursery() as nursery:
        url, shutdown, _app = await start_server(nursery, settings)
        await seed_jobs(url)
        with trio.fail_after(240):  # a hang guard; the run takes ~30 s
            result = await trio.run_process(
                command(url), cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False
            )
        shutdown.set()
    report = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert result.returncode == 0, report[-30_000:]
    assert " passed" in report and "Server error" not in report
