"""Dispatch: the queue, the execution slots and GPUs, and handing a job to execution.

The queue is an ordered set of job ids; the slots a CapacityLimiter (with a GPU pool). When
a slot is free the first job in queue order that the endpoint gate lets through takes it,
at once (the dispatcher waits on changes, never polls). A job the gate still checks (its
endpoint pre-flight runs in the gate's nursery) or keeps waiting is passed over without
losing its place: the moment it is cleared it is first again, ahead of jobs queued after it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from lmeval_trio.engine.change_signal import Pulse
from lmeval_trio.engine.endpoint_wait import EndpointGate
from lmeval_trio.engine.live import LiveJob, LiveJobs
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
        self._changed = Pulse()  # a job queued, or cleared by the gate
        self._scope = trio.CancelScope()

    def enqueue(self, record: JobRecord, *, reattach: bool = False) -> None:
        """Make the job live and give it its place at the end of the queue."""
        self.live.add(record, reattach=reattach)
        self._queue[record.id] = None
        self._changed.fire()

    def requeue(self, live: LiveJob) -> None:
        """Queue again a live job whose start the store refused (it is still Queued)."""
        self._queue[live.id] = None
        self._changed.fire()

    def stop(self) -> None:
        """Start nothing more (shutdown): queued jobs stay queued in the store."""
        self._scope.cancel()

    async def run(self, nursery: trio.Nursery, execute: Execute, gate_for: GateFor) -> None:
        """Hand queued jobs to free slots, in order, the moment a slot frees; each passes the
        gate first (the endpoint pre-flight), whose checks and waits end with the dispatcher."""
        with self._scope:
            async with trio.open_nursery() as checks:
                gate = gate_for(checks, self._changed.fire)
                while True:
                    live = await self._next(gate)
                    await self._start(nursery, execute, live)

    async def _start(self, nursery: trio.Nursery, execute: Execute, live: LiveJob) -> None:
        wanted = self.slots.gpus_for(live.record.request.get("num_gpus"))
        gpus = await self.slots.acquire(live.id, wanted)  # a slot is free: waits for GPUs only
        if live.scope.cancel_called or live.id not in self.live.jobs:
            self.slots.release(live.id)
            return
        live.dispatched = True
        live.slot_granted_at = trio.current_time()
        nursery.start_soon(execute, live, gpus)

    async def _next(self, gate: EndpointGate) -> LiveJob:
        """Once a slot is free, the first job in queue order the gate lets through. Scanning
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
        for job_id in list(self._queue):
            live = self.live.jobs.get(job_id)
            if live is None or live.scope.cancel_called:  # stopped or deleted while queued
                del self._queue[job_id]
                gate.forget(job_id)
            elif gate.ready(live):
                return live
        return None


async def _either(first: Pulse, seen_first: int, second: Pulse, seen_second: int) -> None:
    """Until either signal moves past the version seen."""
    async with trio.open_nursery() as nursery:

        async def wait(pulse: Pulse, seen: int) -> None:
            await pulse.wait_past(seen)
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, first, seen_first)
        nursery.start_soon(wait, second, seen_second)
