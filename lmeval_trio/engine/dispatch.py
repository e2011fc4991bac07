"""Dispatch: the queue, the execution slots and GPUs, and handing a job to execution.

A memory channel is the queue and the slots a CapacityLimiter (with a GPU pool), so a job
starts the moment a slot frees (no polling), in queue order. A job waiting to retry waits
beside the queue, holding no slot, and joins the queue's end once its wait is over (or
never, if it is stopped or deleted meanwhile). A sweep's ``max_parallel`` is held here too:
a job of a sweep already running that many waits aside, taking no slot and blocking nobody,
and is queued again the moment one of its sweep's jobs ends.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Awaitable, Callable

import trio

from lmeval_trio.engine.live import LiveJob, LiveJobs
from lmeval_trio.engine.retries import seconds_until
from lmeval_trio.engine.slots import Slots
from lmeval_trio.jobs.record import JobRecord

#: Runs one dispatched job to its end, in the supervisor's nursery.
Execute = Callable[[LiveJob, tuple[str, ...]], Awaitable[None]]


class Dispatcher:
    """Queues jobs and starts each in a free slot with the GPUs it asked for."""

    def __init__(self, live: LiveJobs, slots: Slots) -> None:
        self.live = live
        self.slots = slots
        self._send, self._receive = trio.open_memory_channel[int](math.inf)
        self._scope = trio.CancelScope()
        self._waits: trio.Nursery | None = None  # jobs waiting to retry, while run() runs
        self._pending: list[tuple[LiveJob, float]] = []  # … and those that came before
        self.sweep_limits: dict[int, int] = {}  # sweep id -> max_parallel
        self._sweep_running: Counter[int] = Counter()  # sweep id -> its jobs dispatched
        self._sweep_waiting: dict[int, deque[int]] = {}  # sweep id -> job ids set aside

    def enqueue(self, record: JobRecord, *, reattach: bool = False) -> None:
        """Make the job live and give it its place at the end of the queue (after the rest
        of its wait, if it waits to retry: a restart does not cut the back-off short)."""
        live = self.live.add(record, reattach=reattach)
        wait_s = seconds_until(record.retry_at)
        if wait_s > 0 and not reattach:
            self.requeue_after(live, wait_s)
        else:
            self._send.send_nowait(record.id)

    def requeue_after(self, live: LiveJob, delay_s: float) -> None:
        """Queue a live, Queued job again once ``delay_s`` has passed, holding no slot
        meanwhile; a stop or delete (which forgets the job) ends the wait at once."""
        if self._scope.cancel_called:
            return  # shutting down: it stays Queued in the store, for the next start
        if self._waits is None:
            self._pending.append((live, delay_s))
        else:
            self._waits.start_soon(self._wait_then_queue, live, delay_s)

    async def _wait_then_queue(self, live: LiveJob, delay_s: float) -> None:
        with trio.move_on_after(delay_s):
            await live.done.wait()
        if not live.done.is_set() and self.live.jobs.get(live.id) is live:
            self._send.send_nowait(live.id)

    def requeue(self, live: LiveJob) -> None:
        """Queue again a live job whose start the store refused (it is still Queued)."""
        self._send.send_nowait(live.id)

    def stop(self) -> None:
        """Start nothing more (shutdown): queued jobs stay queued in the store."""
        self._scope.cancel()

    async def run(self, nursery: trio.Nursery, execute: Execute) -> None:
        """Hand queued jobs to free slots, in order, the moment a slot frees; jobs waiting
        to retry wait in a nursery of their own, ended with dispatch at shutdown."""
        with self._scope:
            try:
                async with trio.open_nursery() as waits:
                    self._waits = waits
                    for live, delay_s in self._pending:
                        waits.start_soon(self._wait_then_queue, live, delay_s)
                    self._pending.clear()
                    await self._dispatch(nursery, execute)
            finally:
                self._waits = None

    async def _dispatch(self, nursery: trio.Nursery, execute: Execute) -> None:
        async for job_id in self._receive:
            live = self.live.jobs.get(job_id)
            if live is None or live.scope.cancel_called or self._set_aside(live):
                continue
            wanted = self.slots.gpus_for(live.record.request.get("num_gpus"))
            gpus = await self.slots.acquire(job_id, wanted)
            if live.scope.cancel_called or job_id not in self.live.jobs:
                self.slots.release(job_id)
                continue
            live.dispatched = True
            live.slot_granted_at = trio.current_time()
            sweep_id = live.record.sweep_id
            if sweep_id is not None:
                self._sweep_running[sweep_id] += 1
            nursery.start_soon(self._execute, execute, live, gpus, sweep_id)

    def _set_aside(self, live: LiveJob) -> bool:
        """Whether the job waits aside: its sweep runs ``max_parallel`` jobs already."""
        sweep_id = live.record.sweep_id
        limit = None if sweep_id is None else self.sweep_limits.get(sweep_id)
        if sweep_id is None or limit is None or self._sweep_running[sweep_id] < limit:
            return False
        self._sweep_waiting.setdefault(sweep_id, deque()).append(live.id)
        return True

    async def _execute(
        self, execute: Execute, live: LiveJob, gpus: tuple[str, ...], sweep_id: int | None
    ) -> None:
        """Run the job; once it is over, its sweep's next job set aside is queued again."""
        try:
            await execute(live, gpus)
        finally:
            if sweep_id is not None:
                self._sweep_running[sweep_id] -= 1
                self._release_next(sweep_id)

    def _release_next(self, sweep_id: int) -> None:
        """Queue again the sweep's oldest job set aside that is still waiting."""
        waiting = self._sweep_waiting.get(sweep_id)
        while waiting:
            live = self.live.jobs.get(waiting.popleft())
            if live is not None and not live.scope.cancel_called and not live.dispatched:
                self._send.send_nowait(live.id)
                break
        if not waiting:
            self._sweep_waiting.pop(sweep_id, None)
        if self._sweep_running[sweep_id] <= 0:
            del self._sweep_running[sweep_id]
