"""A job's command: which program starts it, its words, and the folders it runs in.

The words come from ``harness/argv.py`` (lm-eval's flags, judged by its own parser); this
module adds the program (stock lm-eval or fastrun, also as a fork server) and the job's folders. Its
environment comes from ``environment.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmeval_trio.harness import argv


@dataclass(frozen=True)
class Launcher:
    """How the server starts its own lm-eval."""

    executable: tuple[str, ...]
    #: The same command as a fork server (``fastrun --fork-server``, see ``fork_server.py``),
    #: if it has one.
    fork_server: tuple[str, ...] | None = None

    @classmethod
    def default(cls, *, fast_start: bool, index_cache: Path) -> Launcher:
        if fast_start:
            fastrun = argv.fastrun_prefix(index_cache)
            return cls(fastrun, fork_server=(*fastrun, "--fork-server"))
        return cls(argv.stock_prefix())


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]
    output_dir: Path


def job_dir_for(data_dir: Path, job_id: int) -> Path:
    return data_dir / "jobs" / str(job_id)


def normalise(values: Mapping[str, Any]) -> dict[str, Any]:
    """The request as stored: fields the client set, nulls dropped."""
    return {key: value for key, value in values.items() if value is not None}


def build(request: Mapping[str, Any], job_dir: Path, launcher: Launcher) -> Command:
    """The full command for ``request``; its flags were already checked by lm-eval's parser."""
    values = argv.flag_values(request, job_dir)
    executable: Sequence[str] = (
        [request["lm_eval_path"]] if request.get("lm_eval_path") else launcher.executable
    )
    output = Path(values["output_path"])
    output_dir = output.parent if output.suffix == ".json" else output
    return Command(
        argv=argv.words(executable, values),
        env=dict(request.get("env_vars") or {}),
        output_dir=output_dir,
    )
