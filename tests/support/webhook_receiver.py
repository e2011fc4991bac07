"""A real webhook receiver for tests: a tiny ASGI app served by hypercorn on 127.0.0.1:0.

It records every request (path, headers, body) and answers from a script: a status code per
request in order ("hang" holds the request until the test ends), 200 once the script is out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str = ""
    script: list[int | str] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    release: trio.Event = field(default_factory=trio.Event)
    _arrived: trio.Event = field(default_factory=trio.Event)

    async def wait_for(self, count: int, timeout_s: float = 60) -> list[Received]:
        """Until ``count`` requests have arrived (on an event set per arrival)."""
        with trio.fail_after(timeout_s):
            while len(self.received) < count:
                await self._arrived.wait()
        return self.received

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                reply = message["type"].replace(".startup", ".startup.complete")
                reply = reply.replace(".shutdown", ".shutdown.complete")
                await send({"type": reply})
                if message["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.received.append(Received(scope["path"], headers, body))
        self._arrived.set()
        self._arrived = trio.Event()
        action = self.script.pop(0) if self.script else 200
        if action == "hang":
            await self.release.wait()
            action = 200
        status = int(action)
        extra = [(b"location", b"/elsewhere")] if 300 <= status < 400 else []
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": b"ok"})


@asynccontextmanager
async def webhook_receiver(*script: int | str) -> AsyncIterator[Receiver]:
    """Serve a Receiver on 127.0.0.1:0 for the duration of the block."""
    receiver = Receiver(script=list(script))
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 1
    config.accesslog = None
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(
            partial(serve, cast(Any, receiver), config, shutdown_trigger=shutdown.wait)
        )
        receiver.url = urls[0]
        try:
            yield receiver
        finally:
            receiver.release.set()
            shutdown.set()
