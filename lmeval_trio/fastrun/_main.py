"""Entry point: strip fastrun's own options, then run lm_eval's real CLI.

Only leading options are fastrun's (``--index-cache DIR`` and an optional
``--`` terminator); everything after them reaches lm_eval's ``HarnessCLI``
untouched through ``sys.argv``, so parsing, the legacy flat form, help text,
output and exit codes (0 ok, 1 exception, 2 usage, death by signal) are
lm_eval's own.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from lmeval_trio.fastrun import ENV_DISABLE, default_cache_dir

USAGE = "usage: python -m lmeval_trio.fastrun [--index-cache DIR] [--] <lm_eval arguments>"


class UsageError(Exception):
    """Bad fastrun option (exit 2, like argparse)."""


def split_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """Return (index cache dir or None, lm_eval argv).

    Options are recognised only before the first non-fastrun word, so an
    lm_eval argument is never consumed by fastrun.
    """
    cache_dir: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if arg == "--index-cache":
            if i + 1 >= len(args) or not args[i + 1]:
                raise UsageError("--index-cache needs a directory")
            cache_dir = args[i + 1]
            i += 2
        elif arg.startswith("--index-cache="):
            cache_dir = arg.split("=", 1)[1]
            if not cache_dir:
                raise UsageError("--index-cache needs a directory")
            i += 1
        else:
            break
    return cache_dir, list(args[i:])


def _match_console_script_sys_path() -> None:
    """Make sys.path[0] what the ``lm_eval`` console script would have.

    ``python -m`` puts the CWD first on sys.path; the console script puts its
    own bin directory there. lm_eval resolves ``!function mod.fn`` by
    ``__import__`` when no ``mod.py`` sits next to the YAML, so a stray module
    in the job's CWD must not become importable only under fastrun.
    """
    if sys.flags.safe_path or not sys.path:
        return
    if sys.path[0] in ("", os.getcwd()):
        sys.path[0] = sysconfig.get_path("scripts")


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``lm_eval`` with the built-in task index served from the cache."""
    try:
        cache_arg, lm_eval_args = split_args(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        print(f"{USAGE}\nfastrun: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

    _match_console_script_sys_path()
    sys.argv = [sys.argv[0], *lm_eval_args]

    disabled = os.environ.get(ENV_DISABLE, "")
    if disabled and disabled != "0":
        from lmeval_trio.fastrun._log import get_logger

        get_logger().info("fastrun: disabled by %s; running stock lm_eval", ENV_DISABLE)
    else:
        from lmeval_trio.fastrun import _patch
        from lmeval_trio.fastrun._log import get_logger

        cache_dir = Path(cache_arg or default_cache_dir()).expanduser().absolute()
        _patch.install(cache_dir, get_logger())

    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
