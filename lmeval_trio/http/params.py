"""Query-string parsing with 422s that name the parameter, and the one way a request reaches
the supervisor (the engine): :func:`supervisor`, or :func:`running_supervisor` where its
absence is an answer too (health checks)."""

from __future__ import annotations

import re
from typing import cast

from quart import current_app, request

from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.errors import InvalidParameter, NotAccepting

SUPERVISOR_KEY = "lmeval_trio.supervisor"
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
# int() also takes other scripts' digits, signs, spaces and underscores: a query integer is
# ASCII digits only, and few enough that int() stays cheap (every bound is below 2**63).
_ASCII_INT = re.compile(r"[0-9]{1,20}")


def running_supervisor() -> Supervisor | None:
    """The supervisor serving this app, or None while it is not running."""
    return cast("Supervisor | None", current_app.extensions.get(SUPERVISOR_KEY))


def supervisor() -> Supervisor:
    """The supervisor serving this app (503 if it is not running)."""
    found = running_supervisor()
    if found is None:
        raise NotAccepting("the supervisor is not running")
    return found


def bool_arg(name: str, default: bool) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise InvalidParameter("query", name, f"expected true or false, got {raw!r}")


def int_arg(name: str, default: int | None, *, minimum: int, maximum: int) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    value = ascii_int(raw)
    if value is None:
        raise InvalidParameter(
            "query", name, f"expected a non-negative integer in ASCII digits, got {raw!r}"
        )
    if not minimum <= value <= maximum:
        raise InvalidParameter("query", name, f"must be between {minimum} and {maximum}")
    return value


def ascii_int(raw: str) -> int | None:
    """``raw`` as a non-negative integer if it is 1 to 20 ASCII digits, else None."""
    return int(raw) if _ASCII_INT.fullmatch(raw) else None


def text_arg(name: str, max_chars: int) -> str | None:
    """A text parameter, or None when absent or empty; at most ``max_chars``, and no NUL
    (no task, filter, metric or searched text holds one)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_chars:
        raise InvalidParameter("query", name, f"longer than {max_chars} characters")
    if "\0" in raw:
        raise InvalidParameter("query", name, "holds a NUL character")
    return raw


def choice_arg(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = request.args.get(name, default)
    if raw not in choices:
        raise InvalidParameter("query", name, f"expected one of {', '.join(choices)}")
    return raw
