"""Dispatch: the queue, the execution slots and GPUs, and handing a job to execution.

The queue is an ordered set of job ids; the slots a CapacityLimiter (with a GPU pool). When
a slot is free the first job in queue order that may start takes it, at once (the
dispatcher waits on changes, never polls). A job may not start yet when the endpoint gate
still checks it (its pre-flight runs in the dispatcher's nursery) or keeps it waiting, or
when its sweep already runs ``max_parallel`` jobs: it is passed over without losing its
place, and the moment it may start it is first again, ahead of jobs queued after it. A job
waiting to retry waits beside the queue, holding no slot, and joins the queue's end once its
wait is over (or never, if it is stopped or deleted meanwhile).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

import trio

from lmeval_trio.engine.change_signal import Pulse
from lmeval_trio.engine.endpoint_wait import EndpointGate
from lmeval_trio.engine.live import LiveJob, LiveJobs
from lmeval_trio.engine.retries import seconds_until
from lmeval_trio.engine.slots import Slots
from lmeval_trio.jobs.record import JobRecord

#: Builds the endpoint gate: its checks run in the nursery, and it calls back when it clears one.
GateFor = Callable[[trio.Nursery, Callable[[], None]], EndpointGate]
#: Runs one dispatched job to its end, in the supervisor's nursery.
Execute = Callable[[LiveJob, tuple[str, ...]], Awaitable[None]]


class Dispatcher:
    """Queues jobs and starts each in a free slot with the GPUs it asked for."""

    def __init__(self, live: LiveJobs, slots: Slots) -> None:
        self.live = live
        self.slots = slots
        self._queue: dict[int, None] = {}  # job ids in queue order
        self._changed = Pulse()  # a job queued, cleared by the gate, or a sweep's job ended
        self._scope = trio.CancelScope()
        self._waits: trio.Nursery | None = None  # jobs waiting to retry, while run() runs
        self._pending: list[tuple[LiveJob, float]] = []  # … and those that came before
        self.sweep_limits: dict[int, int] = {}  # sweep id -> max_parallel
        self._sweep_running: Counter[int] = Counter()  # sweep id -> its jobs dispatched

    def enqueue(self, record: JobRecord, *, reattach: bool = False) -> None:
        """Make the job live and give it its place at the end of the queue (after the rest
        of its wait, if it waits to retry: a restart does not cut the back-off short)."""
        live = self.live.add(record, reattach=reattach)
        wait_s = seconds_until(record.retry_at)
        if wait_s > 0 and not reattach:
            self.requeue_after(live, wait_s)
        else:
            self.requeue(live)

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
            self.requeue(live)

    def requeue(self, live: LiveJob) -> None:
        """Give a live, Queued job its place at the end of the queue."""
        self._queue[live.id] = None
        self._changed.fire()

    def stop(self) -> None:
        """Start nothing more (shutdown): queued jobs stay queued in the store."""
        self._scope.cancel()

    async def run(self, nursery: trio.Nursery, execute: Execute, gate_for: GateFor) -> None:
        """Hand queued jobs to free slots, in order, the moment a slot frees; each passes the
        gate first (the endpoint pre-flight). The gate's checks and the retry waits run in
        the dispatcher's own nursery and end with it at shutdown."""
        with self._scope:
            try:
                async with trio.open_nursery() as waits:
                    self._waits = waits
                    for live, delay_s in self._pending:
                        waits.start_soon(self._wait_then_queue, live, delay_s)
                    self._pending.clear()
                    gate = gate_for(waits, self._changed.fire)
                    while True:
                        live = await self._next(gate)
                        await self._start(nursery, execute, live)
            finally:
                self._waits = None

    async def _start(self, nursery: trio.Nursery, execute: Execute, live: LiveJob) -> None:
        wanted = self.slots.gpus_for(live.record.request.get("num_gpus"))
        gpus = await self.slots.acquire(live.id, wanted)  # a slot is free: waits for GPUs only
        if live.scope.cancel_called or live.id not in self.live.jobs:
            self.slots.release(live.id)
            return
        live.dispatched = True
        live.slot_granted_at = trio.current_time()
        sweep_id = live.record.sweep_id
        if sweep_id is not None:
            self._sweep_running[sweep_id] += 1
        nursery.start_soon(self._execute, execute, live, gpus, sweep_id)

    async def _execute(
        self, execute: Execute, live: LiveJob, gpus: tuple[str, ...], sweep_id: int | None
    ) -> None:
        """Run the job; once it is over, its sweep may start another."""
        try:
            await execute(live, gpus)
        finally:
            if sweep_id is not None:
                self._sweep_running[sweep_id] -= 1
                if self._sweep_running[sweep_id] <= 0:
                    del self._sweep_running[sweep_id]
                self._changed.fire()

    async def _next(self, gate: EndpointGate) -> LiveJob:
        """Once a slot is free, the first job in queue order that may start. Scanning
        starts the pre-flight of each job it passes, so checks run while slots are busy."""
        while True:
            queued, freed = self._changed.version, self.slots.freed.version
            found = self._first_ready(gate)
            if found is not None and self.slots.free > 0:
                del self._queue[found.id]
                gate.forget(found.id)
                return found
            await _either(self._changed, queued, self.slots.freed, freed)

    def _first_ready(self, gate: EndpointGate) -> LiveJob | None:
        """The scan stops at the first job that may start; it walks the queue itself, not a
        copy (a copy of every queued id per wake made each submission cost O(queue))."""
        gone: list[int] = []
        found = None
        for job_id in self._queue:
            live = self.live.jobs.get(job_id)
            if live is None or live.scope.cancel_called:  # stopped or deleted while queued
                gone.append(job_id)
            elif not self._sweep_full(live) and gate.ready(live):
                found = live
                break
        for job_id in gone:
            del self._queue[job_id]
            gate.forget(job_id)
        return found

    def _sweep_full(self, live: LiveJob) -> bool:
        """Whether the job's sweep already runs its ``max_parallel`` jobs."""
        sweep_id = live.record.sweep_id
        limit = None if sweep_id is None else self.sweep_limits.get(sweep_id)
        return sweep_id is not None and limit is not None and self._sweep_running[sweep_id] >= limit


async def _either(first: Pulse, seen_first: int, second: Pulse, seen_second: int) -> None:
    """Until either signal moves past the version seen."""
    async with trio.open_nursery() as nursery:

        async def wait(pulse: Pulse, seen: int) -> None:
            await pulse.wait_past(seen)
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, first, seen_first)
        nursery.start_soon(wait, second, seen_second)
