"""Query-string parsing with 422s that name the parameter, and the request's supervisor."""

from __future__ import annotations

from typing import cast

from quart import current_app, request

from lmeval_trio.http.errors import InvalidParameter
from lmeval_trio.supervisor import NotAccepting, Supervisor

SUPERVISOR_KEY = "lmeval_trio.supervisor"
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def supervisor() -> Supervisor:
    """The supervisor serving this app (503 if it is not running)."""
    found = current_app.extensions.get(SUPERVISOR_KEY)
    if found is None:
        raise NotAccepting("the supervisor is not running")
    return cast(Supervisor, found)


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
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameter("query", name, f"expected an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise InvalidParameter("query", name, f"must be between {minimum} and {maximum}")
    return value


def choice_arg(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = request.args.get(name, default)
    if raw not in choices:
        raise InvalidParameter("query", name, f"expected one of {', '.join(choices)}")
    return raw
