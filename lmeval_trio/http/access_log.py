"""hypercorn's access log, each line's atoms worked out only as its format names them.

hypercorn builds every atom for every request before formatting a line: each request and
response header and every environment variable (``{name}e``), decoded and lower-cased, a
status phrase, a pid. That was ~5% of the worker's CPU per ``POST /job`` (benchmark 10),
for a default format that names nine atoms. :class:`LazyAccessLogAtoms` gives the same
values (same keys, case rules and ``-`` for unknown ones) computed on first use, and
:func:`install` puts them behind the log of the hypercorn worker that runs this app. The
lines are unchanged; ``accesslog`` in hypercorn.toml still turns the log on or off.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from hypercorn.config import Config
from hypercorn.logging import Logger

_SUFFIX_SOURCES = ("i", "o", "e")  # {name}i request header, {name}o response header, {name}e env


class LazyAccessLogAtoms(dict[str, Any]):
    """hypercorn.logging.AccessLogAtoms with each atom computed when the format asks."""

    def __init__(
        self, request: Mapping[str, Any], response: Mapping[str, Any] | None, request_time: float
    ) -> None:
        super().__init__(l="-")  # never empty: logging formats with a mapping only if truthy
        self._request = request
        self._response = response
        self._time = request_time
        self._now = time.strftime("[%d/%b/%Y:%H:%M:%S %z]")  # when the line is made, as before

    def __getitem__(self, key: str) -> Any:
        if key.startswith("{"):
            key = key.lower()
        try:
            return super().__getitem__(key)
        except KeyError:
            pass
        value = self._atom(key)
        self[key] = value
        return value

    def _atom(self, key: str) -> Any:
        if key.startswith("{") and key.endswith(_SUFFIX_SOURCES) and key[-2:-1] == "}":
            return self._named(key[1:-2], key[-1])
        compute = _ATOMS.get(key)
        return "-" if compute is None else compute(self)

    def _named(self, name: str, source: str) -> str:
        """The last header (or variable) whose lower-cased name is ``name``, as hypercorn's
        dict keeps the last one written."""
        if source == "e":
            found = [v for k, v in os.environ.items() if k.lower() == name]
            return found[-1] if found else "-"
        headers = self._request["headers"] if source == "i" else self._response_headers()
        values = [v for k, v in headers if k.decode("latin1").lower() == name]
        return values[-1].decode("latin1") if values else "-"

    def _response_headers(self) -> Any:
        return [] if self._response is None else self._response.get("headers", [])

    # ---- the fixed atoms, as hypercorn computes them
    def protocol(self) -> str:
        return str(self._request.get("http_version", "ws"))

    def method(self) -> str:
        return str(self._request["method"]) if self._request["type"] == "http" else "GET"

    def query(self) -> str:
        return bytes(self._request["query_string"]).decode()

    def path_with_query(self) -> str:
        query = self.query()
        return str(self._request["path"]) + ("?" + query if query else "")

    def remote(self) -> str | None:
        client = self._request.get("client")
        if client is None:
            return None
        if len(client) == 2:
            return f"{client[0]}:{client[1]}"
        if len(client) == 1:
            return str(client[0])
        return f"<???{client}???>"

    def status(self) -> str:
        return "-" if self._response is None else str(self._response["status"])

    def phrase(self) -> str:
        if self._response is None:
            return "-"
        try:
            return HTTPStatus(self._response["status"]).phrase
        except ValueError:
            return f"<???{self.status()}???>"


_ATOMS: dict[str, Callable[[LazyAccessLogAtoms], Any]] = {
    "h": LazyAccessLogAtoms.remote,
    "t": lambda a: a._now,
    "r": lambda a: f"{a.method()} {a._request['path']} {a.protocol()}",
    "R": lambda a: f"{a.method()} {a.path_with_query()} {a.protocol()}",
    "s": LazyAccessLogAtoms.status,
    "st": LazyAccessLogAtoms.phrase,
    "S": lambda a: a._request["scheme"],
    "m": LazyAccessLogAtoms.method,
    "U": lambda a: a._request["path"],
    "Uq": LazyAccessLogAtoms.path_with_query,
    "q": LazyAccessLogAtoms.query,
    "H": LazyAccessLogAtoms.protocol,
    "b": lambda a: a["{content-length}o"],
    "B": lambda a: a["{content-length}o"],
    "f": lambda a: a["{referer}i"],
    "a": lambda a: a["{user-agent}i"],
    "T": lambda a: int(a._time),
    "D": lambda a: int(a._time * 1_000_000),
    "L": lambda a: f"{a._time:.6f}",
    "p": lambda a: f"<{os.getpid()}>",
}


class LazyAtomsLogger(Logger):
    """hypercorn's Logger with :class:`LazyAccessLogAtoms` (its documented override)."""

    def atoms(self, request: Any, response: Any, request_time: float) -> Mapping[str, str]:
        return LazyAccessLogAtoms(request, response, request_time)


def install(config: Config | None = None) -> bool:
    """Give ``config`` (default: that of the hypercorn worker process running this app,
    which hypercorn passes the worker as its ``config`` keyword) the lazy atoms, if its log
    is hypercorn's own (a logger class of the operator's, statsd's say, is left alone).
    Returns whether it did."""
    config = config if config is not None else _worker_config()
    if config is None or config.logger_class is not Logger:
        return False
    config.logger_class = LazyAtomsLogger
    if type(config._log) is Logger:  # already made: the same object, lazier atoms
        config._log.__class__ = LazyAtomsLogger
    return True


def _worker_config() -> Config | None:
    if multiprocessing.parent_process() is None:
        return None  # hypercorn in-process (workers = 0) or embedded: see embedding.py
    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None)
    found = kwargs.get("config") if isinstance(kwargs, dict) else None
    return found if isinstance(found, Config) else None
