"""The job request model, derived from the installed lm-eval's own ``run`` parser.

Deriving it (rather than copying the flag list) means a flag that a new lm-eval adds shows up
in the API, with its help text, without code changes. The same parser then validates the
command line we build, so a request lm-eval would reject is refused at submission with
lm-eval's own words instead of failing minutes later in a child process.

It relies on three lm-eval internals (0.4.10 through 0.4.13 have them all):
``lm_eval._cli.harness.HarnessCLI``, its ``_subparsers.choices["run"]`` parser, and the
``argparse`` actions on it. If one is missing, :func:`run_parser` raises
:class:`~lmeval_trio.harness.versions.LmEvalUnsupported` naming it, and the server does not
start (``lmeval-trio serve`` and ``asgi.py`` print it).
Unknown action classes are not an error: such a flag becomes free text that lm-eval's own
parser then judges.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import threading
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from lmeval_trio.errors import InvalidRequest
from lmeval_trio.harness.versions import unsupported
from lmeval_trio.jobs.notify import NotifyList

MAX_STRING_CHARS = 16_384
MAX_LIST_ITEMS = 1_000
MAX_ENV_VARS = 256

# No NUL: a process's argv and environment cannot carry one (the spawn would fail).
_Str = Annotated[str, StringConstraints(max_length=MAX_STRING_CHARS, pattern=r"^[^\x00]*$")]
_Scalar = _Str | int | float | bool | None
_Object = Annotated[dict[_Str, Any], Field(max_length=MAX_LIST_ITEMS)]
_StrList = Annotated[list[_Str], Field(min_length=1, max_length=MAX_LIST_ITEMS)]

# Fields the server adds to lm-eval's flags.
SERVER_FIELDS = (
    "env_vars",
    "lm_eval_path",
    "num_gpus",
    "num_cpus",
    "timeout_s",
    "max_attempts",
    "notify",
)
#: The longest ``timeout_s`` a request may ask for (30 days): beyond, a typo, not a limit.
MAX_TIMEOUT_S = 30 * 24 * 3600.0
#: The most ``max_attempts`` the model allows; LMEVAL_MAX_ATTEMPTS_LIMIT bounds it further.
MAX_ATTEMPTS = 100
# Flags whose value is a filesystem path: text only (the execution policy judges them).
PATH_FIELDS = ("output_path", "include_path", "use_cache", "config")


class FlagKind(Enum):
    """How a JSON value turns into command-line words."""

    SWITCH = "switch"  # store_true: true adds the flag, false leaves it out
    OPTIONAL_VALUE = "optional_value"  # nargs='?': true = bare flag, a string = its value
    LIST = "list"  # nargs='+' split on commas (tasks)
    MAPPING = "mapping"  # key=value pairs or a JSON object (model_args, gen_kwargs)
    INTEGER = "integer"
    NUMBER = "number"
    TEXT = "text"


@dataclass(frozen=True)
class FlagSpec:
    """One lm-eval ``run`` flag as the API exposes it."""

    name: str  # the JSON field and argparse dest, e.g. "model_args"
    option: str  # the long option, e.g. "--model_args"
    kind: FlagKind
    help: str
    default: Any

    def words(self, value: Any) -> list[str]:
        """Command-line words for ``value``; [] when the value means "flag not given"."""
        if value is None or value is False:
            return []
        if value is True and self.kind in (FlagKind.SWITCH, FlagKind.OPTIONAL_VALUE):
            return [self.option]
        return [f"{self.option}={_to_text(self.kind, value)}"]


class RequestRejected(InvalidRequest, ValueError):
    """lm-eval's parser refused the command line; ``field`` names the culprit if known."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _to_text(kind: FlagKind, value: Any) -> str:
    if kind is FlagKind.LIST and isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


@functools.cache
def run_parser() -> argparse.ArgumentParser:
    """lm-eval's ``run`` subcommand parser (imported lazily: ~0.2 s, no numpy/torch).

    Raises LmEvalUnsupported, naming the internal, if this lm-eval lacks one.
    """
    try:
        from lm_eval._cli.harness import HarnessCLI
    except ImportError as error:
        raise unsupported(
            "lm_eval._cli.harness.HarnessCLI", f"cannot be imported ({error})"
        ) from error
    try:
        parser = HarnessCLI()._subparsers.choices["run"]
    except (AttributeError, KeyError, TypeError) as error:
        raise unsupported(
            'HarnessCLI()._subparsers.choices["run"]',
            f"is missing ({type(error).__name__}: {error})",
        ) from None
    if not isinstance(parser, argparse.ArgumentParser):
        raise unsupported(
            'HarnessCLI()._subparsers.choices["run"]',
            f"is a {type(parser).__name__}, not an argparse parser",
        )
    return parser


@functools.cache
def flag_specs() -> tuple[FlagSpec, ...]:
    """Every long option of ``lm-eval run`` except help and the server's own fields."""
    specs = []
    for action in run_parser()._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest in ("help", *SERVER_FIELDS):
            continue
        specs.append(
            FlagSpec(
                name=action.dest,
                option=longs[0],
                kind=_kind(action),
                help=" ".join((action.help or "").split()),
                default=None if action.default is argparse.SUPPRESS else action.default,
            )
        )
    return tuple(specs)


def _kind(action: argparse.Action) -> FlagKind:
    if isinstance(action, argparse._StoreTrueAction):
        return FlagKind.SWITCH
    if action.nargs == "?":
        return FlagKind.OPTIONAL_VALUE
    if type(action).__name__ == "MergeDictAction":
        return FlagKind.MAPPING
    if action.nargs in ("+", "*"):
        return FlagKind.LIST
    if action.type is int:
        return FlagKind.INTEGER
    if action.type is float:
        return FlagKind.NUMBER
    return FlagKind.TEXT


_FIELD_TYPES: dict[FlagKind, Any] = {
    FlagKind.SWITCH: bool,
    FlagKind.OPTIONAL_VALUE: bool | _Str,
    FlagKind.LIST: _Str | _StrList,
    FlagKind.MAPPING: _Str | _Object,
    FlagKind.INTEGER: int,
    FlagKind.NUMBER: float,
    # Flags with custom converters (seed, samples, ...): lm-eval's parser validates them.
    FlagKind.TEXT: _Str | int | float | _Object,
}


def _description(spec: FlagSpec) -> str:
    text = spec.help or spec.option
    if spec.default not in (None, False):
        text += f" (lm-eval default: {spec.default})"
    return text


@functools.cache
def request_model() -> type[BaseModel]:
    """The pydantic model of ``POST /job`` bodies, built once from lm-eval's parser."""
    fields: dict[str, Any] = {}
    for spec in flag_specs():
        kind_type = _Str if spec.name in PATH_FIELDS else _FIELD_TYPES[spec.kind]
        fields[spec.name] = (kind_type | None, Field(default=None, description=_description(spec)))
    fields["tasks"] = (
        _Str | _StrList,
        Field(description="Tasks (or groups) to evaluate: 'a,b' or a list. Required."),
    )
    fields["env_vars"] = (
        Annotated[dict[_Str, _Str], Field(max_length=MAX_ENV_VARS)] | None,
        Field(default=None, description="Environment variables for the job's process."),
    )
    fields["lm_eval_path"] = (
        _Str | None,
        Field(
            default=None,
            description="The lm-eval executable to run (default: the server's own lm-eval).",
        ),
    )
    fields["num_gpus"] = (
        Annotated[int, Field(ge=0, le=1024)] | None,
        Field(
            default=None,
            description="GPUs the job holds exclusively (default: LMEVAL_GPUS_PER_JOB when "
            "the server has GPUs, else 0). On a Ray cluster, the GPUs Ray reserves for it "
            "(default: LMEVAL_RAY_NUM_GPUS_DEFAULT).",
        ),
    )
    fields["num_cpus"] = (
        Annotated[float, Field(ge=0, le=1024)] | None,
        Field(
            default=None,
            description="CPUs Ray reserves for the job (Ray backend only; default: "
            "LMEVAL_RAY_NUM_CPUS_DEFAULT).",
        ),
    )
    fields.update(_limit_fields())
    fields["notify"] = (
        NotifyList | None,
        Field(
            default=None,
            description="Webhooks told of this job's events (README: Webhooks): "
            '[{"url": "https://...", "events": ["job.completed", ...]}].',
        ),
    )
    model: type[BaseModel] = create_model(
        "JobRequest",
        __config__=ConfigDict(extra="forbid", title="JobRequest"),
        __doc__="An lm-eval run: lm-eval's CLI flags as JSON, plus the server's fields (env_vars, "
        "lm_eval_path, num_gpus, num_cpus, timeout_s, max_attempts, notify).",
        **fields,
    )
    return model


def _limit_fields() -> dict[str, Any]:
    """The time limit and retries (README "Time limits and retries"). Strict: ``"60"`` or
    ``true`` is refused rather than read as a number, and NaN/infinity never pass."""
    timeout = Annotated[float, Field(strict=True, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)]
    attempts = Annotated[int, Field(strict=True, ge=1, le=MAX_ATTEMPTS)]
    return {
        "timeout_s": (
            timeout | None,
            Field(
                default=None,
                description="Longest one attempt may run, in seconds; beyond it the job is "
                "stopped and ends Failed (default: LMEVAL_JOB_TIMEOUT_S, off unless set).",
            ),
        ),
        "max_attempts": (
            attempts | None,
            Field(
                default=None,
                description="Attempts in all when an attempt fails transiently (model "
                "endpoint refused or dropped connections, answered 5xx or 429; killed by "
                "the OOM killer); default 1, at most LMEVAL_MAX_ATTEMPTS_LIMIT.",
            ),
        ),
    }


def flag_words(values: dict[str, Any]) -> list[str]:
    """The ``lm-eval run`` words for the flags set in ``values`` (server fields excluded)."""
    words: list[str] = []
    for spec in flag_specs():
        if spec.name in values:
            words.extend(spec.words(values[spec.name]))
    return words


_OPTION_IN_ERROR = re.compile(r"argument (--[\w-]+)")
#: argparse names a converter without a __name__ by its repr ("invalid functools.partial(
#: <function … at 0x7f…>, …) value:"): an address and internals, no help to the client.
_CONVERTER_REPR = re.compile(r"invalid (?:functools\.partial\(.*?\)|<[^>]*>) value:")


#: One parse at a time: each swaps the shared parser's ``error`` for its own, and threads
#: parsing at once would restore each other's (a refusal would then exit the thread).
_PARSING = threading.Lock()


def check_with_parser(words: list[str]) -> argparse.Namespace:
    """Parse ``words`` with lm-eval's parser (raise RequestRejected with its message) and
    return what lm-eval would read from them."""
    with _PARSING:  # the parser is shared, and its error hook swapped for the call
        return _parse(run_parser(), words)


def _parse(parser: argparse.ArgumentParser, words: list[str]) -> argparse.Namespace:
    def fail(message: str) -> NoReturn:
        found = _OPTION_IN_ERROR.search(message)
        field = _field_for_option(found.group(1)) if found else None
        raise RequestRejected(field, _CONVERTER_REPR.sub("invalid value:", message))

    original = parser.error
    parser.error = fail  # type: ignore[method-assign]
    try:
        return parser.parse_args(words)
    except RequestRejected:
        raise
    except (ValueError, TypeError, AssertionError) as error:
        raise RequestRejected(None, str(error)) from None
    finally:
        parser.error = original  # type: ignore[method-assign]


def _field_for_option(option: str) -> str | None:
    return next((s.name for s in flag_specs() if s.option == option), None)
