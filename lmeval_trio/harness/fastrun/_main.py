"""Entry point: strip fastrun's own options, then run lm_eval's real CLI.

Only leading options are fastrun's (``--index-cache DIR`` and an optional
``--`` terminator); everything after them reaches lm_eval's ``HarnessCLI``
untouched through ``sys.argv``, so parsing, the legacy flat form, help text,
output and exit codes (0 ok, 1 exception, 2 usage, death by signal) are
lm_eval's own.
"""

from __future__ import annotations

import logging
import os
import runpy
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmeval_trio.harness.fastrun import ENV_DISABLE, default_cache_dir
from lmeval_trio.runners import reaper
from lmeval_trio.runners.fork_launcher import environment_key

USAGE = (
    "usage: python -m lmeval_trio.harness.fastrun [--walls JSON] [--index-cache DIR] [--] "
    "<lm_eval arguments>\n"
    "       python -m lmeval_trio.harness.fastrun --fork-server [--listen-fd FD] [--grace-s S] "
    "[--preload-hf auto|on|off] [--index-cache DIR]"
)


class UsageError(Exception):
    """Bad fastrun option (exit 2, like argparse)."""


@dataclass
class Options:
    """fastrun's own options; ``lm_eval_args`` is everything after them."""

    cache_dir: str | None = None
    fork_server: bool = False  # preload, then fork a child per job (_fork.py)
    listen_fd: int | None = None  # the fork server's listening socket; none: preload and exit
    grace_s: float = 5.0  # the fork server's TERM-to-KILL grace when the server is gone
    preload_hf: str = "auto"  # the fork server also imports torch & co (_warm.HF_PRELOAD)
    walls: str | None = None  # the job's confinement (see confinement.Walls), put up first
    lm_eval_args: list[str] = field(default_factory=list)


def _value(args: Sequence[str], i: int, name: str, what: str) -> tuple[str, int]:
    """The value of the option at args[i] (``--name value`` or ``--name=value``), next index."""
    arg = args[i]
    if arg == name:
        if i + 1 >= len(args) or not args[i + 1]:
            raise UsageError(f"{name} needs {what}")
        return args[i + 1], i + 2
    value = arg.split("=", 1)[1]
    if not value:
        raise UsageError(f"{name} needs {what}")
    return value, i + 1


def parse_options(args: Sequence[str]) -> Options:
    """Options are recognised only before the first non-fastrun word, so an
    lm_eval argument is never consumed by fastrun."""
    opts = Options()
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if arg == "--":
            i += 1
            break
        if arg == "--fork-server":
            opts.fork_server, i = True, i + 1
        elif name == "--index-cache":
            opts.cache_dir, i = _value(args, i, name, "a directory")
        elif name == "--walls":
            opts.walls, i = _value(args, i, name, "a JSON object")
        elif name == "--listen-fd":
            raw, i = _value(args, i, name, "a file descriptor number")
            if not raw.isdigit():
                raise UsageError("--listen-fd needs a file descriptor number")
            opts.listen_fd = int(raw)
        elif name == "--grace-s":
            raw, i = _value(args, i, name, "a number of seconds")
            try:
                opts.grace_s = float(raw)
            except ValueError:
                raise UsageError("--grace-s needs a number of seconds") from None
        elif name == "--preload-hf":
            opts.preload_hf, i = _value(args, i, name, "auto, on or off")
            if opts.preload_hf not in ("auto", "on", "off"):
                raise UsageError("--preload-hf needs auto, on or off")
        else:
            break
    opts.lm_eval_args = list(args[i:])
    if opts.fork_server and opts.lm_eval_args:
        raise UsageError("--fork-server takes its jobs' arguments from its socket")
    return opts


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


def _confine(encoded: str) -> None:
    """Become the job behind its wall before anything of lm_eval is imported."""
    from lmeval_trio.runners.confinement import EXIT_NO_WALL, ConfinementError, Walls, enter

    try:
        enter(Walls.decode(encoded))
    except (ConfinementError, ValueError) as err:
        print(f"lmeval-trio: cannot confine the job: {err}", file=sys.stderr)
        raise SystemExit(EXIT_NO_WALL) from None


def run_lm_eval(log: logging.Logger) -> None:
    """lm-eval's own CLI (``lm_eval.__main__.cli_evaluate``) on ``sys.argv``. An lm-eval
    without that function has its ``__main__`` module run the stock way instead (as
    ``python -m lm_eval`` does), with a warning that says why. An lm-eval that cannot be
    imported at all fails here exactly as the stock run would."""
    import lm_eval.__main__ as entry

    cli_evaluate = getattr(entry, "cli_evaluate", None)
    if callable(cli_evaluate):
        cli_evaluate()
        return
    log.warning(
        "fastrun: lm_eval.__main__.cli_evaluate is missing; running lm_eval's __main__ "
        "the stock way"
    )
    runpy.run_path(str(entry.__file__), run_name="__main__")


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``lm_eval`` with the built-in task index served from the cache."""
    try:
        opts = parse_options(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        print(f"{USAGE}\nfastrun: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

    digest = environment_key(os.environ)  # before anything could change it (fork server)
    if opts.walls is not None:
        _confine(opts.walls)
    _match_console_script_sys_path()
    sys.argv = [sys.argv[0], *opts.lm_eval_args]
    cache_dir = Path(opts.cache_dir or default_cache_dir()).expanduser().absolute()

    from lmeval_trio.harness.fastrun._log import get_logger

    disabled = os.environ.get(ENV_DISABLE, "")
    if disabled and disabled != "0":
        get_logger().info("fastrun: disabled by %s; running stock lm_eval", ENV_DISABLE)
    else:
        from lmeval_trio.harness.fastrun import _patch

        _patch.install(cache_dir, get_logger())

    reaper.become_subreaper()  # a daemon the job starts is handed to us, not to init
    reaper.reap_on_sigterm()
    try:
        if opts.fork_server:
            if not _forked(opts, digest, get_logger()):
                return  # the fork server itself, at its end
            from lmeval_trio.harness.fastrun._fork import run_and_exit

            run_and_exit(lambda: run_lm_eval(get_logger()), reaper.kill_descendants)
        run_lm_eval(get_logger())
    finally:
        reaper.kill_descendants()  # the job is over: nothing it started outlives it


def _forked(opts: Options, digest: str, log: logging.Logger) -> bool:
    """Run a fork server; True in a forked child, which has become its job by now."""
    from lmeval_trio.harness.fastrun import _fork, _patch, _warm

    if opts.listen_fd is None:
        _warm.preload(log)  # only build the task index (the server does, after an upgrade)
        return False
    job = _fork.serve(opts.listen_fd, digest, opts.grace_s, log, preload_hf=opts.preload_hf)
    if job is None:
        return False
    reaper.become_subreaper()  # not inherited across fork
    reaper.reap_on_sigterm()
    patcher = _patch.active()
    if job.vouched and patcher is not None:
        patcher.vouch()
    disabled = _patch.disabled_message()
    if disabled is not None:  # said in the fork server's log: the job's must say it too
        log.warning("%s", disabled)
    _warm.become(job.spec, log)
    log.info(
        "warm start: forked by a fork server that started %.1f s before this job",
        time.monotonic() - job.server_started,
    )
    return True
