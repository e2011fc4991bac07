"""The words of a job's command line: which lm-eval to start, and the request's flags as
``lm-eval run`` words, judged by lm-eval's own parser.

No shell is involved anywhere: the argv is a list, every value one word (``--flag=value``).
Unless the client chose its own, each job writes results under its own folder and keeps its
own lm-eval response cache there, which is what makes resume cheap.
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmeval_trio.harness import fastrun, request_model

#: Parsed flag words kept (the checks of concurrent submissions, each its own request).
PARSED_CACHE_SIZE = 64


def stock_prefix() -> tuple[str, ...]:
    """The server's own lm-eval, started the stock way."""
    return (sys.executable, "-m", "lm_eval")


def fastrun_prefix(index_cache: Path) -> tuple[str, ...]:
    """The server's own lm-eval through fastrun (its task index served from ``index_cache``)."""
    return (sys.executable, "-m", fastrun.MODULE, "--index-cache", str(index_cache))


def cache_prefix(job_dir: Path) -> Path:
    """lm-eval's ``--use_cache`` takes a path prefix; it adds ``_rank<N>.db``."""
    return job_dir / "cache" / "lm_cache"


def flag_values(request: Mapping[str, Any], job_dir: Path) -> dict[str, Any]:
    """The request's lm-eval flags plus the per-job defaults the server adds."""
    values = {k: v for k, v in request.items() if k not in request_model.SERVER_FIELDS}
    values.setdefault("output_path", str(job_dir / "output"))
    values.setdefault("use_cache", str(cache_prefix(job_dir)))
    return values


def words(executable: Sequence[str], values: Mapping[str, Any]) -> list[str]:
    """``<executable> run <flags>`` for the flag ``values`` (see :func:`flag_values`)."""
    return [*executable, "run", *request_model.flag_words(dict(values))]


def check(request: Mapping[str, Any]) -> argparse.Namespace:
    """Let lm-eval's own parser judge the flags (raises request_model.RequestRejected);
    returns what it read from them (a copy: the caller may change it)."""
    words = request_model.flag_words(flag_values(request, Path("/job")))
    return copy.deepcopy(_parsed(tuple(words)))


@functools.lru_cache(maxsize=PARSED_CACHE_SIZE)
def _parsed(words: tuple[str, ...]) -> argparse.Namespace:
    """A submission is judged by several checks that each need the parsed flags: lm-eval's
    parser reads the same words once (a refusal raises, and is not kept)."""
    return request_model.check_with_parser(list(words))
