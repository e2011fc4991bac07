"""How lm-eval reads a mapping flag (``model_args``, ``gen_kwargs``, ...): a JSON object, or
``key=value`` pairs, by lm-eval's own functions.

Secrets and policy decisions are taken on the dict lm-eval's model class will receive, never
on our own reading of the text: ``a=1,b={"c": 2}`` or a JSON escape parse here exactly as they
do in the job. The functions are lm-eval internals (``lm_eval._cli.utils``);
:func:`parsers` is checked at start-up, and raises LmEvalUnsupported naming one that is gone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from lmeval_trio.harness.versions import unsupported

#: Flags lm-eval parses into a dict of keyword arguments.
MAPPING_FLAGS = (
    "model_args",
    "gen_kwargs",
    "metadata",
    "wandb_args",
    "wandb_config_args",
    "hf_hub_log_args",
    "trackio_args",
)
MODULE = "lm_eval._cli.utils"
_PURPOSE = "the server reads model_args and the other key=value flags with it"

#: (try_parse_json, key_val_to_dict)
Parsers = tuple[Callable[[str], Any], Callable[[str], dict[str, Any]]]


@functools.cache
def parsers() -> Parsers:
    """lm-eval's JSON-or-text and ``key=value`` parsers (raise LmEvalUnsupported if gone)."""
    try:
        import lm_eval._cli.utils as utils
    except ImportError as error:
        raise unsupported(MODULE, f"cannot be imported ({error})", _PURPOSE) from error
    found = []
    for name in ("try_parse_json", "key_val_to_dict"):
        function = getattr(utils, name, None)
        if not callable(function):
            raise unsupported(f"{MODULE}.{name}", "is missing", _PURPOSE)
        found.append(function)
    try_parse_json, key_val_to_dict = found
    return try_parse_json, key_val_to_dict


def as_mapping(value: Any) -> Any:
    """``value`` as lm-eval reads a mapping flag: a JSON object, or key=value pairs (None if
    lm-eval could not read it either; a value that is not text is returned as it is)."""
    if not isinstance(value, str):
        return value
    try_parse_json, key_val_to_dict = parsers()
    try:
        parsed = try_parse_json(value)
        return parsed if isinstance(parsed, dict) else key_val_to_dict(value)
    except (ValueError, SyntaxError):
        return None
