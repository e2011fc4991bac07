"""Drop-in ``lm_eval`` runner that skips the ~20 s re-index of built-in tasks.

Every stock ``lm_eval`` process parses all ~14,000 YAML files under
``lm_eval/tasks/`` before it evaluates anything, even for one tiny
``--include_path`` task. ``python -m lmeval_trio.harness.fastrun [--index-cache DIR]
<lm_eval args>`` runs the unmodified lm_eval CLI, but serves that one
directory's part of the task index from a pickle cache keyed on the lm_eval
version, the tasks directory and a stat fingerprint of every file under it.
Everything else (argv parsing, include paths, logging, outputs, exit codes) is
lm_eval's own code.

This module stays import-light on purpose: the server imports it only to build
command lines; all lm_eval work happens in the child process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["ENV_DISABLE", "ENV_INDEX_CACHE", "MODULE", "command", "default_cache_dir"]

#: ``python -m`` target.
MODULE = "lmeval_trio.harness.fastrun"
#: Default for ``--index-cache`` when the flag is absent.
ENV_INDEX_CACHE = "LMEVAL_FASTRUN_INDEX_CACHE"
#: Set to a non-empty value other than ``0`` to run plain stock lm_eval (escape hatch).
ENV_DISABLE = "LMEVAL_FASTRUN_DISABLE"


def default_cache_dir() -> str:
    """Cache dir when neither ``--index-cache`` nor the env var is given.

    Read per process (not at server start) so each job sees its own environment.
    """
    env = os.environ.get(ENV_INDEX_CACHE)
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lmeval-trio", "task-index")


def command(
    lm_eval_args: Sequence[str],
    *,
    index_cache: str | os.PathLike[str] | None = None,
    python: str | None = None,
) -> list[str]:
    """Argv that runs ``lm_eval <lm_eval_args>`` through fastrun.

    A ``--`` always separates fastrun's options from lm_eval's, so no lm_eval
    argument can ever be mistaken for a fastrun option.
    """
    argv = [python or sys.executable, "-m", MODULE]
    if index_cache is not None:
        argv += ["--index-cache", os.fspath(index_cache)]
    return [*argv, "--", *lm_eval_args]
