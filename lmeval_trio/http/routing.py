"""The URL map: ids are ASCII digits only, and odd paths are answered, never redirected.

werkzeug's ``int`` converter matches ``\\d+``, which in Python also matches other scripts'
digits: ``/job/`` and 2198 in fullwidth digits named job 2198, and a DELETE deleted it. A map
that merges slashes or appends them answers ``//`` or a trailing slash with an HTML
redirect, which is a routing exception Quart sends before any error handler sees it.
"""

from __future__ import annotations

from typing import Any

from quart.routing import QuartMap
from werkzeug.datastructures import ImmutableDict
from werkzeug.routing import IntegerConverter

#: More digits than any SQLite rowid has; longer runs are no id (404), and int() of them
#: would cost time quadratic in their length.
MAX_ID_DIGITS = 20


class AsciiIdConverter(IntegerConverter):
    """``<int:...>`` for ids: 1 to MAX_ID_DIGITS ASCII digits, nothing else."""

    regex = f"[0-9]{{1,{MAX_ID_DIGITS}}}"


class StrictMap(QuartMap):
    """QuartMap with ASCII ids and without slash merging. (Strict slashes stay on: a rule
    without a trailing slash then answers 404 to one with it, and no rule ends in one.)"""

    default_converters = ImmutableDict({**QuartMap.default_converters, "int": AsciiIdConverter})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("merge_slashes", False)
        super().__init__(*args, **kwargs)
