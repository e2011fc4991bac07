"""JSON as the standard defines it, both ways: no NaN or Infinity in, none out.

Python's json module reads and writes ``NaN``/``Infinity`` (and turns ``1e309`` into
infinity), which no browser's ``JSON.parse`` accepts: one such value in one job's request
or results would break the listing for everyone. Bodies carrying them are refused; values
that arrive from elsewhere (a results file lm-eval wrote) go out as ``null``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flask.json.provider import DefaultJSONProvider

from lmeval_trio.errors import InvalidRequest
from lmeval_trio.json_values import finite


class NonFiniteNumber(InvalidRequest, ValueError):
    """A request body holds NaN, Infinity or a number too large for a double."""


def loads(data: str | bytes) -> Any:
    """Parse a request body, refusing non-finite numbers (raises NonFiniteNumber)."""
    return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)


def _refuse_constant(name: str) -> Any:
    raise NonFiniteNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"{text} is out of range for a number")
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """json.dumps that never writes NaN or Infinity (the common case costs one attempt)."""
    kwargs["allow_nan"] = False
    try:
        return json.dumps(value, **kwargs)
    except ValueError:
        return json.dumps(finite(value), **kwargs)


class StrictJSONProvider(DefaultJSONProvider):
    """The app's JSON: Quart's defaults, non-finite floats written as null."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("default", self.default)
        kwargs.setdefault("ensure_ascii", self.ensure_ascii)
        kwargs.setdefault("sort_keys", self.sort_keys)
        return dumps(obj, **kwargs)
