"""``submit``'s lm-eval flags, generated from the same parser-derived specs the server uses.

So the CLI accepts exactly the flags the server's request model has (spelled as lm-eval spells
them, plus dashed aliases), and a flag a new lm-eval adds appears here without code changes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lmeval_trio.harness.request_model import FlagKind, FlagSpec, flag_specs

DEST_PREFIX = "lm_eval__"  # keeps lm-eval's names apart from the CLI's own options


class RequestError(ValueError):
    """The request file or a flag value cannot be used (a usage error)."""


def add_lm_eval_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("lm-eval flags (as for `lm-eval run`; override the file)")
    taken = set(parser._option_string_actions)
    for spec in flag_specs():
        options = [o for o in _spellings(spec) if o not in taken]
        if options:
            group.add_argument(*options, dest=DEST_PREFIX + spec.name, **_argparse_kwargs(spec))


def _spellings(spec: FlagSpec) -> list[str]:
    dashed = spec.option.replace("_", "-")
    return [spec.option] if dashed == spec.option else [spec.option, dashed]


def _argparse_kwargs(spec: FlagSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "default": argparse.SUPPRESS,
        "help": spec.help.replace("%", "%%"),
        "metavar": spec.name.upper(),
    }
    if spec.kind is FlagKind.SWITCH:
        del kwargs["metavar"]
        kwargs["action"] = "store_true"
    elif spec.kind is FlagKind.OPTIONAL_VALUE:
        kwargs.update(nargs="?", const=True)
    elif spec.kind is FlagKind.LIST:
        kwargs["nargs"] = "+"
    elif spec.kind is FlagKind.INTEGER:
        kwargs["type"] = int
    elif spec.kind is FlagKind.NUMBER:
        kwargs["type"] = float
    elif spec.kind is FlagKind.MAPPING:
        kwargs.update(nargs="+", metavar="K=V")
    return kwargs


def _flag_value(spec: FlagSpec, raw: Any) -> Any:
    if spec.kind is FlagKind.LIST:
        return [item for word in raw for item in word.split(",") if item]
    if spec.kind is FlagKind.MAPPING:
        return _mapping(spec, raw)
    return raw


def _mapping(spec: FlagSpec, words: list[str]) -> str | dict[str, Any]:
    """lm-eval's forms: one JSON object, or ``k=v,k2=v2`` in one or more words."""
    if len(words) == 1 and words[0].lstrip().startswith("{"):
        try:
            value = json.loads(words[0])
        except json.JSONDecodeError as error:
            raise RequestError(f"{spec.option}: invalid JSON: {error}") from None
        if isinstance(value, dict):
            return value
    return ",".join(words)


def read_request_file(path: str) -> dict[str, Any]:
    """A JSON request body, as for ``POST /job`` ("-": standard input)."""
    try:
        text = Path("/dev/stdin" if path == "-" else path).read_text(encoding="utf-8")
        body = json.loads(text)
    except OSError as error:
        raise RequestError(f"cannot read {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise RequestError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise RequestError(f"{path} must hold a JSON object (the request body)")
    return body


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise RequestError(f"--env expects NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    """The request: the file's body, overridden by flags, plus the server's own fields."""
    body = read_request_file(args.request_file) if args.request_file else {}
    for spec in flag_specs():
        raw = getattr(args, DEST_PREFIX + spec.name, None)
        if raw is not None:
            body[spec.name] = _flag_value(spec, raw)
    if args.env:
        body["env_vars"] = {**(body.get("env_vars") or {}), **_env_pairs(args.env)}
    if args.lm_eval_path is not None:
        body["lm_eval_path"] = args.lm_eval_path
    if args.num_gpus is not None:
        body["num_gpus"] = args.num_gpus
    return body
