"""The lm-eval versions the server supports, each proved with real runs.

The main test run covers the locked lm-eval (0.4.13); ``.ci/run`` runs this module alone in a
fresh venv per older supported version. Each time: the server starts the way the README
launches it, derives its request model from that lm-eval's own ``run`` parser, runs a real
``dummy`` job and a ``local-completions`` job against the stub to Completed with results, and
its fast-start runner either serves the task index or says in the job's log why it fell back.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lmeval_trio.harness import effective, key_values, log_wording, request_model, versions
from lmeval_trio.harness.fastrun import _patch
from lmeval_trio.http.app import create_app
from tests.conftest import DUMMY_JOB, LOAD_SERVED_APP, Server, make_settings
from tests.support.stub_openai import StubHandle
from tests.test_real_lm_eval import completions_job
from tests.test_server_process import hypercorn_server

pytestmark = pytest.mark.compat

INSTALLED = importlib.metadata.version("lm_eval")
#: lm-eval before 0.4.12 ends every run by reading its model's tokenizer for the results'
#: metadata; the dummy model's imports transformers and downloads a real one, so offline (and
#: without the hf extra) a dummy run answers every request and then fails (fixed in 0.4.12).
DUMMY_NEEDS_A_TOKENIZER = versions.release(INSTALLED) < (0, 4, 12)


def test_installed_lm_eval_is_in_the_supported_range() -> None:
    assert versions.is_supported(INSTALLED), INSTALLED
    assert versions.untested_warning() is None
    assert versions.is_supported("0.4.10") and versions.is_supported("0.4.13.dev0")
    assert not versions.is_supported("0.4.9") and not versions.is_supported("0.4.14")
    assert not versions.is_supported("0.10.0") and not versions.is_supported("unknown")


def test_an_untested_lm_eval_is_named_at_start_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(versions, "SUPPORTED_LM_EVAL", ("0.4.1", "0.4.2"))
    with caplog.at_level(logging.WARNING, logger="lmeval_trio.http"):
        create_app(make_settings(tmp_path))
    assert (
        f"lm-eval {INSTALLED} is not one of the tested releases (0.4.1 through 0.4.2); "
        "the request model is derived from its parser as usual, but nothing else is checked"
    ) in caplog.messages


#: Python run before the server's own start-up, removing one internal it derives requests from.
BREAK_INTERNAL = {
    "lm_eval._cli.harness.HarnessCLI cannot be imported": (
        "import lm_eval._cli.harness as harness\ndel harness.HarnessCLI\n"
    ),
    'HarnessCLI()._subparsers.choices["run"] is missing': (
        "import lm_eval._cli.harness as harness\n"
        "init = harness.HarnessCLI.__init__\n"
        "def without_run(self, *args, **kwargs):\n"
        "    init(self, *args, **kwargs)\n"
        "    del self._subparsers.choices['run']\n"
        "harness.HarnessCLI.__init__ = without_run\n"
    ),
}
#: ``lmeval-trio serve`` (bound to loopback, in case it started anyway) and ``submit``.
SERVE = (
    "import sys\nfrom lmeval_trio.cli import main\n"
    "sys.exit(main(['serve', '--host', '127.0.0.1', '--port', '0']))"
)
SUBMIT = "import sys\nfrom lmeval_trio.cli import main\nsys.exit(main(['submit', '--help']))"


@pytest.mark.parametrize("internal", BREAK_INTERNAL)
@pytest.mark.parametrize("entry", ["asgi:app", "asgi:create_app()", "serve", "submit"])
def test_an_lm_eval_without_a_known_internal_stops_the_start(
    tmp_path: Path, internal: str, entry: str
) -> None:
    """Never a server that will not start without saying why: exit 2, one line naming it."""
    _assert_refused_start(tmp_path, internal, BREAK_INTERNAL[internal], entry)


#: Internals only the server needs (``submit`` derives its flags from the parser alone).
BREAK_SERVER_INTERNAL = {
    "lm_eval._cli.utils.key_val_to_dict is missing": (
        "import lm_eval._cli.utils as utils\ndel utils.key_val_to_dict\n"
    ),
    "lm_eval._cli.utils.try_parse_json is missing": (
        "import lm_eval._cli.utils as utils\ndel utils.try_parse_json\n"
    ),
}


@pytest.mark.parametrize("internal", BREAK_SERVER_INTERNAL)
@pytest.mark.parametrize("entry", ["asgi:app", "asgi:create_app()", "serve"])
def test_a_server_without_its_key_value_parser_stops_the_start(
    tmp_path: Path, internal: str, entry: str
) -> None:
    _assert_refused_start(tmp_path, internal, BREAK_SERVER_INTERNAL[internal], entry)


def _assert_refused_start(tmp_path: Path, internal: str, breaking: str, entry: str) -> None:
    prefix, code = {
        "asgi:app": ("lmeval-trio: ", LOAD_SERVED_APP["app"]),
        "asgi:create_app()": ("lmeval-trio: ", LOAD_SERVED_APP["create_app()"]),
        "serve": ("lmeval-trio: error: ", SERVE),
        "submit": ("lmeval-trio: error: ", SUBMIT),
    }[entry]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMEVAL_")}
    env["LMEVAL_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-c", breaking + code],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,  # a start that went ahead anyway would serve until killed
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"{prefix}lm-eval {INSTALLED} is not supported: {internal}")
    assert result.stderr.rstrip().endswith("(supported: lm-eval 0.4.10 through 0.4.13)")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_the_lm_eval_wording_and_defaults_the_server_relies_on_are_this_lm_eval_s() -> None:
    """The upgrade checklist's entries marked test_compat (lmeval_trio/harness/__init__.py)."""
    import lm_eval
    from lm_eval.config.evaluate_config import EvaluatorConfig

    source = Path(str(lm_eval.__file__)).parent
    for module, pattern in log_wording.SOURCES:
        assert re.search(pattern, (source / module).read_text()), (module, pattern)
    assert EvaluatorConfig().model == effective.LM_EVAL_DEFAULT_MODEL
    mapping_flags = {
        action.dest
        for action in request_model.run_parser()._actions
        if type(action).__name__ == "MergeDictAction"
    }
    assert mapping_flags and mapping_flags <= set(key_values.MAPPING_FLAGS)


async def test_request_model_is_the_installed_parsers(server: Server) -> None:
    """Every long option of this lm-eval's ``run`` is a documented field, judged its way."""
    options = {
        action.dest: action
        for action in request_model.run_parser()._actions
        if any(o.startswith("--") for o in action.option_strings) and action.dest != "help"
    }
    schema = (await server.client.get("/openapi.json")).json()
    body = schema["paths"]["/job"]["post"]["requestBody"]["content"]["application/json"]
    fields = body["schema"]["properties"]
    assert set(options) <= set(fields)
    assert set(fields) - set(options) == set(request_model.SERVER_FIELDS)
    help_text = " ".join(str(options["num_fewshot"].help).split())
    assert fields["num_fewshot"]["description"] == help_text  # lm-eval's own help
    # A value only lm-eval's own parser refuses (seed takes 1 or 4 comma-separated values).
    response = await server.client.post("/job", json={**DUMMY_JOB, "seed": "1,2"})
    assert response.status_code == 422, response.text
    assert any("seed" in item["loc"] for item in response.json()["detail"])


def _fastrun_verdict(stderr: str) -> str:
    """What the fast-start runner did, from the job's log: it must have said one or the other."""
    if "[fastrun] fastrun disabled: " in stderr:
        return "fell back"
    if "[fastrun] task index: " in stderr:
        return "served the index"
    raise AssertionError(f"fastrun said neither how it served the index nor why not:\n{stderr}")


@dataclass
class Finished:
    """A job at its end, as the API shows it."""

    job: dict[str, Any]
    stderr: str
    results: dict[str, Any]

    def values(self) -> dict[tuple[str, str], Any]:
        return {(m["task"], m["metric"]): m["value"] for m in self.results["metrics"]}


async def _run_to_end(client: httpx.AsyncClient, body: dict[str, Any]) -> Finished:
    """Submit and follow the job's event stream to its end."""
    response = await client.post("/job", json=body)
    assert response.status_code == 200, response.text
    job_id = response.json()["job_id"]
    with trio.fail_after(240):
        async with client.stream("GET", f"/job/{job_id}/events") as events:
            async for _ in events.aiter_lines():
                pass
    job = (await client.get(f"/job/{job_id}")).json()
    logs = (await client.get(f"/job/{job_id}/logs?stream=stderr&limit=1048576")).json()
    results = (await client.get(f"/job/{job_id}/results")).json()
    return Finished(job, logs["text"], results)


def _assert_completed(run: Finished) -> None:
    assert run.job["status"] == "Completed", (run.job["reason"], run.stderr)
    assert run.job["inference_progress_pct"] == 100
    assert run.results["lm_eval_version"] == INSTALLED


def _assert_dummy_bug(run: Finished) -> None:
    """lm-eval < 0.4.12: every request answered, then the run dies reading the dummy's tokenizer."""
    assert run.job["status"] == "Failed" and run.job["exit_code"] == 1, run.stderr
    assert "No module named 'transformers'" in run.job["reason"], run.job["reason"]
    phases = run.job["progress"]["phases"]
    assert {p["name"] for p in phases} == {"loglikelihood", "generate_until"}
    assert all(p["n"] == p["total"] > 0 for p in phases), phases
    assert "results" not in run.results


async def test_launched_server_runs_real_jobs_through_fastrun(
    tmp_path: Path, stub: StubHandle
) -> None:
    async with (
        hypercorn_server(tmp_path / "data", LMEVAL_FORK_SERVERS="1") as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as client,
    ):
        dummy = await _run_to_end(client, DUMMY_JOB)
        api = await _run_to_end(client, completions_job(stub))
        server_log = server.log_tail()

    if DUMMY_NEEDS_A_TOKENIZER:
        _assert_dummy_bug(dummy)
    else:
        _assert_completed(dummy)
        assert {("tiny_mc", "acc"), ("tiny_gen", "exact_match")} <= set(dummy.values())
    _assert_completed(api)
    assert {p["name"] for p in api.job["progress"]["phases"]} == {"loglikelihood", "generate_until"}
    assert api.values()[("tiny_mc", "acc")] == 1.0
    assert api.values()[("tiny_gen", "exact_match")] == 1.0
    assert stub.stats()["v1_requests"] == 38

    validated = INSTALLED in _patch.VALIDATED_SOURCES
    for run in (dummy, api):
        assert _fastrun_verdict(run.stderr) == ("served the index" if validated else "fell back")
    # the job was forked by the fork server (the server's log says why if not)
    assert "[fastrun] warm start" in dummy.stderr, server_log
    if not validated:
        assert f"lm_eval {INSTALLED} has not been validated" in dummy.stderr
