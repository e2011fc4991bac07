"""GET /jobs on the wire: streamed as is, or deflated from cached, separately compressed parts.

An unpaged listing of 10,000 jobs is ~15 MB of JSON, and a Python client spends longer
receiving and copying that than the server spends sending it; deflated it is ~0.7 MB. A
client that accepts ``deflate`` (httpx, browsers) gets large listings compressed: the rows
are grouped by job id range, each group is compressed on its own and cached under the
(id, version) pairs it holds, so a changed, new or deleted job costs one group's compression
and the stream is otherwise assembled from cached parts (see :mod:`.deflate`).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable
from itertools import chain

import trio
from quart import Response
from werkzeug.datastructures import Accept

from lmeval_trio.engine.listing import HEAD, ListingBody
from lmeval_trio.http import deflate

GROUP_IDS = 128  # jobs whose ids share id // GROUP_IDS are compressed together
MIN_BYTES = 256 * 1024  # smaller bodies go as they are: little to gain
MAX_CACHE_BYTES = 8 * 2**20  # compressed groups kept: ~10 listings of 10,000 jobs
_HEAD = deflate.compress(HEAD)
_COMMA = deflate.compress(b",")


class ListingEncoder:
    """Turns a :class:`ListingBody` into a response, deflated when that pays. A group's
    cache key is its rows' (id, version) pairs; groups with live rows are not cached."""

    def __init__(self, max_bytes: int = MAX_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._parts: OrderedDict[bytes, deflate.Part] = OrderedDict()
        self._bytes = 0
        self._last: tuple[ListingBody, bytes] | None = None  # JobListing reuses bodies

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    async def response(self, body: ListingBody, accept_encodings: Accept) -> Response:
        if len(body) >= MIN_BYTES and accept_encodings["deflate"] > 0:
            response = Response(await self.deflated(body), mimetype="application/json")
            response.headers["Content-Encoding"] = "deflate"
        else:
            response = Response(body, mimetype="application/json")
            response.content_length = len(body)
        response.vary.add("Accept-Encoding")
        return response

    async def deflated(self, body: ListingBody) -> bytes:
        """The body as one zlib stream; groups not cached are compressed in a thread."""
        if self._last is not None and self._last[0] is body:
            return self._last[1]
        groups = _groups(body.keys)
        flat = array("q", chain.from_iterable(body.keys))
        parts: list[deflate.Part | None] = []
        missing: list[tuple[int, bytes | None]] = []  # (index in parts, cache key)
        for start, end in groups:
            live = bisect_left(body.live, end) > bisect_left(body.live, start)
            key = None if live else flat[2 * start : 2 * end].tobytes()
            part = self._lookup(key)
            if part is None:
                missing.append((len(parts), key))
            parts.append(part)
        if missing:
            raw = [b",".join(body.rows[slice(*groups[i])]) for i, _ in missing]
            done = await trio.to_thread.run_sync(_compress_all, raw)
            for (index, key), part in zip(missing, done, strict=True):
                parts[index] = part
                self._keep(key, part)
        data = deflate.stream([_HEAD, *_separated(parts), deflate.compress(body.tail)])
        self._last = (body, data)
        return data

    def _lookup(self, key: bytes | None) -> deflate.Part | None:
        if key is None or (part := self._parts.get(key)) is None:
            return None
        self._parts.move_to_end(key)
        return part

    def _keep(self, key: bytes | None, part: deflate.Part) -> None:
        """Cache ``part`` (least recently used ones go past the budget)."""
        if key is None or key in self._parts:
            return
        self._parts[key] = part
        self._bytes += len(key) + len(part.deflated)
        while self._bytes > self.max_bytes:
            old_key, old = self._parts.popitem(last=False)
            self._bytes -= len(old_key) + len(old.deflated)


def _groups(keys: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, end) of each run of rows whose ids share a group. Rows come sorted by id,
    either way; any split would be correct, this one keeps groups stable."""
    descending = len(keys) > 1 and keys[0][0] > keys[-1][0]
    job_id: Callable[[tuple[int, int]], int] = (lambda k: -k[0]) if descending else _first
    groups, start = [], 0
    while start < len(keys):
        group = keys[start][0] // GROUP_IDS
        bound = 1 - group * GROUP_IDS if descending else (group + 1) * GROUP_IDS
        end = max(start + 1, bisect_left(keys, bound, lo=start, key=job_id))
        groups.append((start, end))
        start = end
    return groups


def _first(key: tuple[int, int]) -> int:
    return key[0]


def _separated(parts: list[deflate.Part | None]) -> list[deflate.Part]:
    joined: list[deflate.Part] = []
    for part in parts:
        assert part is not None
        joined.extend((_COMMA, part) if joined else (part,))
    return joined


def _compress_all(raw: list[bytes]) -> list[deflate.Part]:
    return [deflate.compress(data) for data in raw]  # zlib lets go of the GIL meanwhile
