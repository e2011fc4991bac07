"""A versioned change signal: waiters wake on every change and never miss one."""

from __future__ import annotations

import trio


class Pulse:
    """Like a reusable trio.Event with a version number.

    A waiter remembers the version it has seen and waits for a newer one, so a change that
    happens between two waits is never lost (a plain Event would need clearing, which races).
    """

    def __init__(self) -> None:
        self._version = 0
        self._event = trio.Event()

    @property
    def version(self) -> int:
        return self._version

    def fire(self) -> None:
        self._version += 1
        self._event.set()
        self._event = trio.Event()

    async def wait_past(self, version: int) -> int:
        """Return the current version once it is newer than ``version``."""
        while self._version <= version:
            await self._event.wait()
        return self._version
