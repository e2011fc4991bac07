"""HTTP/1.1 over a bare socket, for requests no client library would send as written:
paths with ``//`` or ``..`` kept verbatim, bodies that stop half-way, headers only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def connect(url: str) -> trio.SocketStream:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return await trio.open_tcp_stream(parts.hostname, parts.port)


def head_bytes(method: str, target: str, headers: dict[str, str] | None = None) -> bytes:
    """A request head (request line and headers), ``target`` sent exactly as given."""
    lines = [
        f"{method} {target} HTTP/1.1",
        "Host: test",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_response(stream: trio.SocketStream, *, head_only: bool = False) -> RawResponse:
    """Read one response: its head, then a Content-Length body (nothing with ``head_only``)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        body += chunk
    return RawResponse(int(status_line.split()[1]), headers, body[:length])


async def request(
    url: str, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> RawResponse:
    """One request on a fresh connection, ``target`` verbatim."""
    all_headers = {"Connection": "close", **(headers or {})}
    if body:
        all_headers["Content-Length"] = str(len(body))
    stream = await connect(url)
    async with stream:
        await stream.send_all(head_bytes(method, target, all_headers) + body)
        return await read_response(stream, head_only=method == "HEAD")
