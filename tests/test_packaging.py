"""The launch paths we document stay true: README commands, example.json, Dockerfile, CI."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from lmeval_trio.config import Settings
from lmeval_trio.harness.request_model import request_model
from lmeval_trio.policy.rules import Policy

ROOT = Path(__file__).parent.parent
LAUNCH = "hypercorn --config hypercorn.toml lmeval_trio.asgi:app"


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert first_block is not None and readme.index("```bash") < 200
    return [line for line in first_block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_commands() -> None:
    serve, test = _readme_commands()
    assert serve.endswith(LAUNCH)
    assert test.endswith("pytest")


def test_ci_runs_the_readme_test_command() -> None:
    _serve, test = _readme_commands()
    assert test in (ROOT / ".ci" / "run").read_text()


def test_example_json_is_a_valid_request(tmp_path: Path) -> None:
    body = json.loads((ROOT / "example.json").read_text())
    request = request_model().model_validate(body)
    settings = Settings.from_env({}, data_dir=tmp_path, allow_online=True)
    Policy(settings, ("lm_eval",)).check(request.model_dump(exclude_unset=True))
    assert body["model"] == "local-completions" and "base_url=" in body["model_args"]


def test_dockerfile_matches_the_readme() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd is not None and " ".join(json.loads(cmd.group(1))) == LAUNCH
    assert re.search(r"^EXPOSE 8080$", dockerfile, re.M)
    user = re.search(r"^USER (\S+)$", dockerfile, re.M)
    assert user is not None and user.group(1) not in ("root", "0")
    assert "uv sync --frozen" in dockerfile


def test_lock_file_is_current() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = {p["name"] for p in lock["package"]}
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=~! ]", requirement, maxsplit=1)[0].lower()
        assert name in locked, name


def test_serving_installs_only_what_serving_needs() -> None:
    """The README's serve command leaves out the dev group (test, lint, browser, Ray tools);
    the test command installs everything."""
    serve, test = _readme_commands()
    assert "uv run --frozen --no-dev hypercorn" in serve and "--no-dev" not in test
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = {
        re.split(r"[\[<>=~! ]", r, maxsplit=1)[0] for r in project["project"]["dependencies"]
    }
    dev = {re.split(r"[\[<>=~! ]", r, maxsplit=1)[0] for r in project["dependency-groups"]["dev"]}
    for tool in ("ray", "playwright", "mypy", "schemathesis", "pytest", "ruff"):
        assert tool in dev and tool not in runtime, tool


def test_docker_build_context_leaves_out_environment_data_and_history() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "lmeval-data", "**/__pycache__"} <= ignored
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY examples/tasks ./examples/tasks" in dockerfile  # the README's first job
