"""Dispatch: the queue, the execution slots and GPUs, and handing a job to execution.

A memory channel is the queue and the slots a CapacityLimiter (with a GPU pool), so a job
starts the moment a slot frees (no polling), in queue order. A sweep's ``max_parallel`` is
held here: a job of a sweep already running that many waits aside, taking no slot and
blocking nobody, and is queued again the moment one of its sweep's jobs ends.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Awaitable, Callable

import trio

from lmeval_trio.engine.live import LiveJob, LiveJobs
from lmeval_trio.records import JobRecord
from lmeval_trio.slots import Slots

#: Runs one dispatched job to its end, in the supervisor's nursery.
Execute = Callable[[LiveJob, tuple[str, ...]], Awaitable[None]]


class Dispatcher:
    """Queues jobs and starts each in a free slot with the GPUs it asked for."""

    def __init__(self, live: LiveJobs, slots: Slots) -> None:
        self.live = live
        self.slots = slots
        self._send, self._receive = trio.open_memory_channel[int](math.inf)
        self._scope = trio.CancelScope()
        self.sweep_limits: dict[int, int] = {}  # sweep id -> max_parallel
        self._sweep_running: Counter[int] = Counter()  # sweep id -> its jobs dispatched
        self._sweep_waiting: dict[int, deque[int]] = {}  # sweep id -> job ids set aside

    def enqueue(self, record: JobRecord, *, reattach: bool = False) -> None:
        """Make the job live and give it its place at the end of the queue."""
        self.live.add(record, reattach=reattach)
        self._send.send_nowait(record.id)

    def requeue(self, live: LiveJob) -> None:
        """Queue again a live job whose start the store refused (it is still Queued)."""
        self._send.send_nowait(live.id)

    def stop(self) -> None:
        """Start nothing more (shutdown): queued jobs stay queued in the store."""
        self._scope.cancel()

    async def run(self, nursery: trio.Nursery, execute: Execute) -> None:
        """Hand queued jobs to free slots, in order, the moment a slot frees."""
        with self._scope:
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
