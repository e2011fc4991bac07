"""Each touch of lm-eval's internals, with the internal taken away: the server either stops at
start-up with a message naming it, or falls back to stock lm-eval and says so in the log.

The start-up checks of the request model's own internals (``HarnessCLI``, its ``run`` parser)
and fastrun's task-index patch are covered in ``test_compat.py`` and ``test_fastrun.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmeval_trio.harness import effective, key_values, request_model, versions
from lmeval_trio.harness.effective import effective_run
from lmeval_trio.harness.request_model import RequestRejected

BASE: dict[str, Any] = {"model": "dummy", "tasks": "tiny_mc"}
SUPPORTED = "(supported: lm-eval 0.4.10 through 0.4.13)"


@pytest.fixture(autouse=True)
def _fresh_lookups() -> Iterator[None]:
    """The lookups are cached per process: start and end each test without a stale one."""
    key_values.parsers.cache_clear()
    effective.evaluator_config.cache_clear()
    yield
    key_values.parsers.cache_clear()
    effective.evaluator_config.cache_clear()


def test_the_installed_lm_eval_has_every_internal() -> None:
    versions.require_internals()
    assert request_model.request_model() is request_model.request_model()


@pytest.mark.parametrize("name", ["key_val_to_dict", "try_parse_json"])
def test_a_missing_key_value_parser_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    import lm_eval._cli.utils

    monkeypatch.delattr(lm_eval._cli.utils, name)
    with pytest.raises(versions.LmEvalUnsupported) as refused:
        versions.require_internals()
    message = str(refused.value)
    assert f"is not supported: lm_eval._cli.utils.{name} is missing; " in message
    assert "model_args" in message and message.endswith(SUPPORTED)


def test_the_start_up_reads_lm_eval_s_config_class_without_importing_it(
    tmp_path: Path,
) -> None:
    installed = effective._installed_source()
    effective.require_evaluator_config(installed)
    renamed = tmp_path / "evaluate_config.py"
    renamed.write_text(installed.read_text().replace("def _parse_dict_args(", "def _parse("))
    with pytest.raises(versions.LmEvalUnsupported) as refused:
        effective.require_evaluator_config(renamed)
    assert "EvaluatorConfig._parse_dict_args is missing; the server merges a request's " in str(
        refused.value
    )
    gone = tmp_path / "gone.py"
    gone.write_text("class Other:\n    pass\n")
    with pytest.raises(versions.LmEvalUnsupported, match="EvaluatorConfig is missing from"):
        effective.require_evaluator_config(gone)
    with pytest.raises(versions.LmEvalUnsupported, match="EvaluatorConfig cannot be read"):
        effective.require_evaluator_config(tmp_path / "absent.py")


def test_a_config_class_gone_under_a_running_server_refuses_the_request_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not a 500: a RequestRejected (422) on the config field, naming the internal."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    monkeypatch.delattr(EvaluatorConfig, "_parse_dict_args")
    with pytest.raises(RequestRejected) as refused:
        effective_run(BASE, {"limit": 1})
    assert refused.value.field == "config"
    assert "EvaluatorConfig._parse_dict_args is missing" in refused.value.message


def test_a_config_seed_is_read_as_the_installed_lm_eval_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """lm-eval 0.4.13 normalises a file's seed; older releases have no ``_normalize_seed`` and
    use it as it is, so the server does the same instead of refusing every config file."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    normalised = [42, 42, 42, 42] if hasattr(EvaluatorConfig, "_normalize_seed") else 42
    assert effective_run(BASE, {"seed": 42}).values["seed"] == normalised
    monkeypatch.delattr(EvaluatorConfig, "_normalize_seed", raising=False)
    assert effective_run(BASE, {"seed": 42}).values["seed"] == 42


#: fastrun's entry point, with lm-eval's ``cli_evaluate`` taken away first.
_WITHOUT_CLI_EVALUATE = (
    "import lm_eval.__main__ as entry\n"
    "del entry.cli_evaluate\n"
    "from lmeval_trio.harness.fastrun._main import main\n"
    "main()\n"
)


def test_fastrun_without_cli_evaluate_runs_lm_eval_the_stock_way(tmp_path: Path) -> None:
    args = ["--index-cache", str(tmp_path / "cache"), "--", "run", "--help"]
    fallback = _run([sys.executable, "-c", _WITHOUT_CLI_EVALUATE, *args], tmp_path)
    stock = _run([sys.executable, "-m", "lm_eval", "run", "--help"], tmp_path)
    assert fallback.returncode == stock.returncode == 0, fallback.stderr
    assert "[fastrun] fastrun: lm_eval.__main__.cli_evaluate is missing; running lm_eval's " in (
        fallback.stderr
    )
    assert fallback.stdout == stock.stdout  # lm-eval's own help, as the stock run prints it


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMEVAL_")}
    return subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )
