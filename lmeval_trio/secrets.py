"""A job's secrets, and the one way every view the API serves hides them.

Key holders share a server, so what a request carries for a model provider (an API key in
``model_args``, a token in ``env_vars``) must reach the child and nothing else: not the
request or ``argument`` in listings, not the logs, events, results or artifacts (the child
prints its model_args, and lm-eval writes them into its results). Secrets are found by key
name (``api_key``, ``token``, ``password``, ``secret``, ...) in the request's mapping flags,
parsed as lm-eval parses them, and in ``env_vars`` (whose values the request view never
shows) under such names or when long enough to be a token; served text has each secret
value replaced by ``***``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

MASK = "***"
MIN_SECRET_CHARS = 4  # shorter values ("1", "yes") would mask ordinary text everywhere
# An env_vars value this long is hidden in served text whatever its name (a token under a
# name we do not know); shorter ones only under a credential's name ("exit", "1" are not).
OPAQUE_ENV_CHARS = 20
# Flags lm-eval parses into a dict of keyword arguments.
MAPPING_FLAGS = (
    "model_args",
    "gen_kwargs",
    "metadata",
    "wandb_args",
    "wandb_config_args",
    "hf_hub_log_args",
    "trackio_args",
)
# A key is secret if one of its words (split on _ - . and case) is one of these...
_SECRET_WORDS = frozenset(
    {"token", "password", "passwd", "secret", "apikey", "credential", "credentials", "auth"}
    | {"authorization", "cookie", "key", "bearer", "sas", "signature"}
)
# ...unless another word says it names a tokenizer's special token or a count.
_NOT_SECRET_WORDS = frozenset(
    {"bos", "eos", "pad", "unk", "sep", "cls", "mask", "end", "start", "prefix", "think"}
    | {"max", "min", "num", "tokenizer", "id", "ids", "cache", "sort", "dict"}
)
_WORD_BREAK = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z])(?=[A-Z])")


def secret_name(name: str) -> bool:
    """Whether a key or variable called ``name`` holds a credential."""
    words = {w.lower() for w in _WORD_BREAK.split(name) if w}
    if "api" in words and "key" in words:
        return True
    return bool(words & _SECRET_WORDS) and not words & _NOT_SECRET_WORDS


def job_secrets(
    request: Mapping[str, Any], config: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """The secret values of a request (and of its --config file's contents), longest first
    (so no mask leaves a suffix)."""
    found: set[str] = set()
    for source in (request, config or {}):
        for name in MAPPING_FLAGS:
            _collect(_as_mapping(source.get(name)), found)
    for name, value in (request.get("env_vars") or {}).items():
        if secret_name(name) or len(value) >= OPAQUE_ENV_CHARS:
            found.add(value)
    return tuple(sorted((s for s in found if len(s) >= MIN_SECRET_CHARS), key=len, reverse=True))


def output_secrets(request: Mapping[str, Any], config_copy: Path) -> tuple[str, ...]:
    """The secrets to hide in what a job wrote: lm-eval prints its whole configuration,
    so the --config file's credentials (the copy the job read) count too."""
    return job_secrets(request, _read_config(config_copy) if "config" in request else None)


def _read_config(path: Path) -> Mapping[str, Any] | None:
    import yaml

    try:
        content = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return content if isinstance(content, dict) else None


def _as_mapping(value: Any) -> Any:
    """``value`` as lm-eval reads a mapping flag: a JSON object, or key=value pairs."""
    if not isinstance(value, str):
        return value
    from lm_eval._cli.utils import key_val_to_dict, try_parse_json

    try:
        parsed = try_parse_json(value)
        return parsed if isinstance(parsed, dict) else key_val_to_dict(value)
    except (ValueError, SyntaxError):
        return None


def _collect(mapping: Any, found: set[str]) -> None:
    if not isinstance(mapping, dict):
        return
    for key, value in mapping.items():
        if isinstance(value, dict):
            _collect(value, found)
        elif secret_name(str(key)) and value not in (None, True, False):
            found.add(str(value))


def mask_text(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_lines(lines: list[str], secrets: tuple[str, ...]) -> list[str]:
    return [mask_text(line, secrets) for line in lines] if secrets else lines


def mask_json(value: Any, secrets: tuple[str, ...]) -> Any:
    """``value`` with every string (keys too) masked; containers copied."""
    if not secrets:
        return value
    if isinstance(value, str):
        return mask_text(value, secrets)
    if isinstance(value, dict):
        return {mask_text(str(k), secrets): mask_json(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_json(item, secrets) for item in value]
    return value


def public_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request as the API shows it: env_vars names without values, secrets masked."""
    secrets = job_secrets(request)
    shown: dict[str, Any] = mask_json(dict(request), secrets)
    if "env_vars" in request:
        shown["env_vars"] = dict.fromkeys(request["env_vars"], MASK)
    return shown


def public_argument(argv: list[str], secrets: tuple[str, ...]) -> str:
    """The command line, shell-quoted, each word masked before quoting."""
    return shlex.join(mask_text(word, secrets) for word in argv)


async def masked_chunks(
    chunks: AsyncIterator[bytes], secrets: tuple[str, ...]
) -> AsyncIterator[bytes]:
    """``chunks`` with every secret replaced; the last ``longest - 1`` bytes of each chunk
    wait for the next, so a secret across a boundary is still found."""
    needles = [s.encode() for s in secrets]
    keep = max(len(n) for n in needles) - 1
    pending = b""
    async for chunk in chunks:
        data = pending + chunk
        for needle in needles:
            data = data.replace(needle, MASK.encode())
        cut = max(0, len(data) - keep)
        pending = data[cut:]
        if cut:
            yield data[:cut]
    if pending:
        yield pending
