"""Turns a validated job request into the child's argv, environment and folders.

No shell is involved anywhere: the argv is a list, every value one word (``--flag=value``).
Unless the client chose its own, each job writes results under its own folder and keeps its
own lm-eval response cache there, which is what makes resume cheap.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmeval_trio import cli_schema


@dataclass(frozen=True)
class Launcher:
    """How the server starts its own lm-eval."""

    executable: tuple[str, ...]
    #: The same command as a spare (``fastrun --warm``, see ``warm.py``), if it has one.
    warm: tuple[str, ...] | None = None

    @classmethod
    def default(cls, *, fast_start: bool, index_cache: Path) -> Launcher:
        if fast_start:
            fastrun = (
                sys.executable,
                "-m",
                "lmeval_trio.fastrun",
                "--index-cache",
                str(index_cache),
            )
            return cls(fastrun, warm=(*fastrun, "--warm"))
        return cls((sys.executable, "-m", "lm_eval"))


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]
    output_dir: Path


def job_dir_for(data_dir: Path, job_id: int) -> Path:
    return data_dir / "jobs" / str(job_id)


def cache_prefix(job_dir: Path) -> Path:
    """lm-eval's ``--use_cache`` takes a path prefix; it adds ``_rank<N>.db``."""
    return job_dir / "cache" / "lm_cache"


def normalise(values: Mapping[str, Any]) -> dict[str, Any]:
    """The request as stored: fields the client set, nulls dropped."""
    return {key: value for key, value in values.items() if value is not None}


def flag_values(request: Mapping[str, Any], job_dir: Path) -> dict[str, Any]:
    """The request's lm-eval flags plus the per-job defaults the server adds."""
    values = {k: v for k, v in request.items() if k not in cli_schema.SERVER_FIELDS}
    values.setdefault("output_path", str(job_dir / "output"))
    values.setdefault("use_cache", str(cache_prefix(job_dir)))
    return values


def build(request: Mapping[str, Any], job_dir: Path, launcher: Launcher) -> Command:
    """The full command for ``request``; its flags were already checked by lm-eval's parser."""
    values = flag_values(request, job_dir)
    executable: Sequence[str] = (
        [request["lm_eval_path"]] if request.get("lm_eval_path") else launcher.executable
    )
    argv = [*executable, "run", *cli_schema.flag_words(values)]
    output = Path(values["output_path"])
    output_dir = output.parent if output.suffix == ".json" else output
    return Command(argv=argv, env=dict(request.get("env_vars") or {}), output_dir=output_dir)


def check(request: Mapping[str, Any]) -> argparse.Namespace:
    """Let lm-eval's own parser judge the flags (raises cli_schema.RequestRejected); returns
    what it read from them."""
    return cli_schema.check_with_parser(cli_schema.flag_words(flag_values(request, Path("/job"))))
