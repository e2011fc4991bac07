"""A job's secrets, and the one way every view the API serves hides them.

Key holders share a server, so what a request carries for a model provider (an API key in
``model_args``, a token in ``env_vars``) must reach the child and nothing else: not the
request or ``argument`` in listings, not the logs, events, results or artifacts (the child
prints its model_args, and lm-eval writes them into its results). Secrets are found by key
name (``api_key``, ``token``, ``password``, ``secret``, ...) in the request's mapping flags,
parsed as lm-eval parses them, and in ``env_vars`` (whose values the request view never
shows) under such names or when long enough to be a token, plus the userinfo (and password)
of any URL anywhere in the request. A secret is hidden in every form it may be printed in
(raw, JSON-escaped, repr'd, shell-quoted, URL-encoded; ``secret_forms``): served text has each
occurrence, or the part of one inside a ranged view, replaced by ``***``.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, AnyStr
from urllib.parse import quote, quote_plus, unquote

from lmeval_trio.harness.key_values import MAPPING_FLAGS, as_mapping

MASK = "***"
MIN_SECRET_CHARS = 4  # shorter values ("1", "yes") would mask ordinary text everywhere
# An env_vars value this long is hidden in served text whatever its name (a token under a
# name we do not know); shorter ones only under a credential's name ("exit", "1" are not).
OPAQUE_ENV_CHARS = 20
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
# The userinfo of a URL: between "scheme://" and the last "@" before the host's end (as
# urllib.parse splits it, so as the child's HTTP client reads it).
_URL_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#\s]*)@")


def secret_name(name: str) -> bool:
    """Whether a key or variable called ``name`` holds a credential."""
    words = {w.lower() for w in _WORD_BREAK.split(name) if w}
    if "api" in words and "key" in words:
        return True
    return bool(words & _SECRET_WORDS) and not words & _NOT_SECRET_WORDS


def job_secrets(
    request: Mapping[str, Any], config: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """Every printed form of the secret values of a request (and of its --config file's
    contents), longest first (so no mask leaves a suffix)."""
    return secret_forms(secret_values(request, config))


def secret_values(request: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> set[str]:
    """The credentials a request hands the child, as the child reads them."""
    found: set[str] = set()
    for source in (request, config or {}):
        for name in MAPPING_FLAGS:
            parsed = as_mapping(source.get(name))
            _collect(parsed, found)
            found.update(url_credentials(parsed))
        found.update(url_credentials(source))
    for name, value in (request.get("env_vars") or {}).items():
        if secret_name(name) or len(value) >= OPAQUE_ENV_CHARS:
            found.add(value)
    return {s for s in found if len(s) >= MIN_SECRET_CHARS}


def url_credentials(value: Any) -> set[str]:
    """The userinfo and password of every URL in ``value``'s strings (a base_url or proxy
    with ``user:password@``), raw and percent-decoded: a credential whatever its key."""
    found: set[str] = set()
    for text in _strings(value):
        for match in _URL_USERINFO.finditer(text):
            userinfo = match.group(1)
            for part in (userinfo, userinfo.partition(":")[2]):
                found.update((part, unquote(part)))
    found.discard("")
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def secret_forms(values: Iterable[str]) -> tuple[str, ...]:
    """Each value in every form a job or the server may print it, longest first.

    The child prints a secret raw, JSON-escaped (results files, the fake's argv dump), as a
    Python repr (lm-eval logs its model_args dict), shell-quoted or URL-encoded, and such a
    form may itself be printed inside another (JSON of a repr'd argv): two levels. For a
    plain token every form is the value itself, so masking usually looks for one string.
    """
    forms: set[str] = set()
    for value in values:
        for form in _printed(value):
            forms.update(_printed(form))
    return tuple(sorted(forms, key=lambda form: (-len(form), form)))


def _printed(value: str) -> set[str]:
    """``value`` and its escaped forms (the text between the quotes)."""
    swap = str.maketrans("'\"", "\"'")
    single = repr(value + '"')[1:-2]  # repr quoting with ', escaping ' (never ")
    double = repr(value.translate(swap) + '"')[1:-2].translate(swap)  # with ", escaping "
    shell = shlex.quote(value)
    return {
        value,
        json.dumps(value, ensure_ascii=False)[1:-1],
        json.dumps(value)[1:-1],
        single,
        double,
        ascii(value + '"')[1:-2],  # ascii(): repr with \\x, \\u escapes
        shell[1:-1] if shell != value else value,
        quote(value),
        quote(value, safe=""),
        quote_plus(value),
    }


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


def _collect(mapping: Any, found: set[str]) -> None:
    if not isinstance(mapping, dict):
        return
    for key, value in mapping.items():
        if isinstance(value, dict):
            _collect(value, found)
        elif secret_name(str(key)) and value not in (None, True, False):
            found.add(str(value))


def mask_text(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each occurrence of a secret (overlapping ones as one) shown as ``***``."""
    return _replaced(text, _spans(text, secrets), MASK)


def margin_bytes(secrets: Sequence[str]) -> int:
    """How far past a window's edges a secret that reaches into it may extend."""
    return max((len(s.encode()) for s in secrets), default=1) - 1


def mask_window(
    before: bytes, data: bytes, after: bytes, secrets: Sequence[str], *, open_end: bool
) -> bytes:
    """``data`` (a window of a file, ``before`` and ``after`` its ``margin_bytes`` of
    context) with every byte that belongs to a secret occurrence masked, a run as ``***``.

    Masking only the window would serve the two halves of a secret cut by its edge (or a
    client could combine windows); with the context every occurrence touching the window
    is seen whole. ``open_end``: the file ends after ``after`` but may grow, so a trailing
    start of a secret (the rest not yet written) counts as one too.
    """
    needles = [s.encode() for s in secrets]
    whole = before + data + after
    spans = _spans(whole, needles)
    if open_end:
        spans = _merged([*spans, *_open_end(whole, needles)])
    low, high = len(before), len(before) + len(data)
    inside = [(max(a, low) - low, min(b, high) - low) for a, b in spans if a < high and b > low]
    return _replaced(data, inside, MASK.encode())


def _spans(data: AnyStr, needles: Sequence[AnyStr]) -> list[tuple[int, int]]:
    """The merged ``[start, end)`` ranges of ``data`` covered by an occurrence of a needle."""
    found: list[tuple[int, int]] = []
    for needle in needles:
        at = data.find(needle)
        while at >= 0:
            found.append((at, at + len(needle)))
            at = data.find(needle, at + 1)
    return _merged(found)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _open_end(data: bytes, needles: Sequence[bytes]) -> list[tuple[int, int]]:
    """The longest end of ``data`` that begins a needle, per needle (a secret half written)."""
    found: list[tuple[int, int]] = []
    for needle in needles:
        for size in range(min(len(needle) - 1, len(data)), 0, -1):
            if data.endswith(needle[:size]):
                found.append((len(data) - size, len(data)))
                break
    return found


def _replaced(data: AnyStr, spans: list[tuple[int, int]], mask: AnyStr) -> AnyStr:
    if not spans:
        return data
    pieces: list[AnyStr] = []
    last = 0
    for start, end in spans:
        pieces += [data[last:start], mask]
        last = end
    pieces.append(data[last:])
    return data[:0].join(pieces)


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


def public_request(request: Mapping[str, Any], secrets: tuple[str, ...]) -> dict[str, Any]:
    """The request as the API shows it: env_vars names without values, ``secrets`` (the
    request's own, from job_secrets) masked."""
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
    wait for the next, so a secret across a boundary is still found (and a file that ends
    in the start of one, a log still being written, ends in ``***``)."""
    needles = [s.encode() for s in secrets]
    keep = margin_bytes(secrets)
    pending = b""
    async for chunk in chunks:
        data = pending + chunk
        data = _replaced(data, _spans(data, needles), MASK.encode())
        cut = max(0, len(data) - keep)
        pending = data[cut:]
        if cut:
            yield data[:cut]
    if pending:
        yield _replaced(pending, _open_end(pending, needles), MASK.encode())
