"""``lmeval-trio``: run the server, submit and follow jobs, read their results.

Every client command takes ``--url`` / ``--api-key`` (or LMEVAL_URL / LMEVAL_API_KEY) and
``--json``. Exit codes are stable so CI pipelines can branch on them (see EPILOG).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from lmeval_trio.cli import _commands as commands
from lmeval_trio.cli import _compare, _serve, _sweeps
from lmeval_trio.cli._commands import Output
from lmeval_trio.cli._request import RequestError, add_lm_eval_flags
from lmeval_trio.client import ApiError, Client, ServerUnreachable, describe_detail
from lmeval_trio.harness.versions import LmEvalUnsupported

__all__ = ["main"]

Handler = Callable[[Client, argparse.Namespace, Output], int]

EPILOG = """\
environment:
  LMEVAL_URL      server URL (default http://127.0.0.1:8080)
  LMEVAL_API_KEY  API key sent as 'Authorization: Bearer <key>'

exit codes:
  0  success (a followed job completed)
  1  a followed job failed, was stopped or was deleted
  2  usage error
  3  the server could not be reached
  4  the server refused the request (its detail is printed)
  130 interrupted (a followed job keeps running)
"""


def _common() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name (SUPPRESS: no clobbering)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="server URL (LMEVAL_URL)")
    common.add_argument("--api-key", default=argparse.SUPPRESS, help="API key (LMEVAL_API_KEY)")
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    return common


def _job_id(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    parser.add_argument("job_id", type=int, nargs="?" if optional else None, metavar="ID")


def _follow_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="show live progress until the job ends, then its results; exit 1 if it fails",
    )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; lm-eval's flags (a ~0.5 s import) only when ``command`` is submit."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="lmeval-trio",
        description="Run lm-evaluation-harness jobs on an lmeval-trio server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler | None, help_text: str) -> argparse.ArgumentParser:
        # serve talks to no server: the client options (--url, --api-key) are not its own.
        parents = [] if handler is None else [common]
        command_parser = sub.add_parser(
            name, parents=parents, help=help_text, description=help_text
        )
        command_parser.set_defaults(handler=handler)
        return command_parser

    _serve.add_arguments(add("serve", None, "run the server (hypercorn, shipped config)"))
    _submit_parser(add("submit", commands.submit, "queue an lm-eval job"), command == "submit")
    _jobs_parser(add("jobs", commands.jobs, "list jobs"))
    _tasks_parser(add("tasks", commands.tasks, "search the server's task catalog"))
    _job_id(add("show", commands.show, "one job in detail, with the end of its stderr"))
    _logs_parser(add("logs", commands.logs, "print a job's logs"))
    _results_parser(add("results", commands.results, "a finished job's metrics"))
    _samples_parser(add("samples", commands.samples, "a finished job's logged samples"))
    _all_or_id(add("stop", commands.stop, "stop a job (or --all), killing its processes"))
    _delete_parser(add("delete", commands.delete, "delete a job (or --all) and its files"))
    resume = add("resume", commands.resume, "run a stopped or failed job again, reusing its cache")
    _job_id(resume)
    _follow_flag(resume)
    _job_id(add("follow", commands.follow, "follow a job's progress to its end, like submit -f"))
    _sweeps.add_parser(sub, common)
    _compare.add_parser(sub, common)
    return parser


def _submit_parser(parser: argparse.ArgumentParser, with_lm_eval_flags: bool) -> None:
    parser.add_argument(
        "request_file", nargs="?", metavar="REQUEST.json", help="request body as JSON ('-': stdin)"
    )
    _follow_flag(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run every admission check (and the endpoint pre-flight), queue nothing; "
        "exit 4 if a check fails",
    )
    parser.add_argument(
        "--env", action="append", metavar="NAME=VALUE", help="environment variable for the job"
    )
    parser.add_argument("--lm-eval-path", help="lm-eval executable (if the server allows it)")
    parser.add_argument("--num-gpus", type=int, metavar="N", help="GPUs the job holds")
    if with_lm_eval_flags:
        add_lm_eval_flags(parser)


def _tasks_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="?", metavar="QUERY", help="substring (any case)")
    parser.add_argument("--kind", choices=("task", "group", "tag"), help="only this kind")
    parser.add_argument("--output-type", help="e.g. generate_until, multiple_choice")
    parser.add_argument("--limit", type=int, default=100, help="at most this many (1-1000)")
    parser.add_argument("--offset", type=int, default=0, help="skip this many")
    parser.add_argument("--include-path", help="list this task folder (on the server) instead")


def _jobs_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", help="only these statuses, e.g. Running,Queued")
    parser.add_argument("--active", action="store_true", help="only queued and running jobs")
    parser.add_argument("--limit", type=int, help="at most this many jobs")
    parser.add_argument("--offset", type=int, default=0, help="skip this many jobs")
    parser.add_argument(
        "--oldest-first", action="store_true", help="oldest first (default: newest first)"
    )


def _logs_parser(parser: argparse.ArgumentParser) -> None:
    _job_id(parser)
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until the job ends"
    )
    parser.add_argument("--stream", choices=("stdout", "stderr", "all"), default="all")


def _results_parser(parser: argparse.ArgumentParser) -> None:
    _job_id(parser)
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")


def _samples_parser(parser: argparse.ArgumentParser) -> None:
    _job_id(parser)
    parser.add_argument("--task", help="which task (needed when the job ran several)")
    right = parser.add_mutually_exclusive_group()
    right.add_argument("--wrong", action="store_true", help="only samples a 0/1 metric failed")
    right.add_argument("--right", action="store_true", help="only samples it passed")
    parser.add_argument("--metric", help="the 0/1 metric --wrong/--right judge by")
    parser.add_argument("--filter", help="only this lm-eval filter (e.g. strict-match)")
    parser.add_argument("--grep", metavar="TEXT", help="text in prompt, target or response")
    parser.add_argument("--limit", type=int, default=10, help="at most this many (default 10)")


def _all_or_id(parser: argparse.ArgumentParser) -> None:
    _job_id(parser, optional=True)
    parser.add_argument("--all", action="store_true", help="every job")


def _delete_parser(parser: argparse.ArgumentParser) -> None:
    _all_or_id(parser)
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask before --all")


def _command_word(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (skipping global options and their values)."""
    words = iter(argv)
    for word in words:
        if word in ("--url", "--api-key"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _check_target(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if "all" in args and (args.job_id is None) == (not args.all):
        parser.error(f"{args.command}: give a job ID or --all (not both)")


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_command_word(argv))
    except LmEvalUnsupported as error:  # submit's flags come from lm-eval's parser
        print(f"lmeval-trio: error: {error}", file=sys.stderr)
        return commands.EXIT_USAGE
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    _check_target(parser, args)
    if args.handler is None:  # serve (sweep's handler is its command's, always set)
        return _serve.serve(args)
    out = Output(json=args.json)
    try:
        with Client(getattr(args, "url", None), api_key=getattr(args, "api_key", None)) as client:
            code: int = args.handler(client, args, out)
            return code
    except RequestError as error:
        out.error(str(error))
        return commands.EXIT_USAGE
    except ServerUnreachable as error:
        out.error(
            f"{error}\n  Is the server running (`lmeval-trio serve`)? Set --url or LMEVAL_URL."
        )
        return commands.EXIT_UNREACHABLE
    except ApiError as error:
        out.error(_refusal(error), status_code=error.status_code, detail=error.detail)
        return commands.EXIT_REFUSED
    except KeyboardInterrupt:
        return commands.EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return commands.EXIT_OK


def _refusal(error: ApiError) -> str:
    message = f"the server refused (HTTP {error.status_code}): {describe_detail(error.detail)}"
    if error.status_code in (401, 403) and error.field is None:
        message += "\n  Pass the server's key with --api-key or LMEVAL_API_KEY."
    return message
