"""Dispatch: the queue, the execution slots and GPUs, and handing a job to execution.

A memory channel is the queue and the slots a CapacityLimiter (with a GPU pool), so a job
starts the moment a slot frees (no polling), in queue order.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

from lmeval_trio.engine.endpoint_wait import EndpointGate
from lmeval_trio.engine.live import LiveJob, LiveJobs
from lmeval_trio.engine.slots import Slots
from lmeval_trio.jobs.record import JobRecord

#: Builds the endpoint gate whose waits run in the given nursery.
GateFor = Callable[[trio.Nursery], EndpointGate]
#: Runs one dispatched job to its end, in the supervisor's nursery.
Execute = Callable[[LiveJob, tuple[str, ...]], Awaitable[None]]


class Dispatcher:
    """Queues jobs and starts each in a free slot with the GPUs it asked for."""

    def __init__(self, live: LiveJobs, slots: Slots) -> None:
        self.live = live
        self.slots = slots
        self._send, self._receive = trio.open_memory_channel[int](math.inf)
        self._scope = trio.CancelScope()

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

    async def run(self, nursery: trio.Nursery, execute: Execute, gate_for: GateFor) -> None:
        """Hand queued jobs to free slots, in order, the moment a slot frees; each passes
        the gate first (the endpoint pre-flight), whose waits end with the dispatcher."""
        with self._scope:
            async with trio.open_nursery() as waiting:
                await self._dispatch(nursery, execute, gate_for(waiting))

    async def _dispatch(self, nursery: trio.Nursery, execute: Execute, gate: EndpointGate) -> None:
        async for job_id in self._receive:
            live = self.live.jobs.get(job_id)
            if live is None or live.scope.cancel_called or not await gate.ready(live):
                continue
            wanted = self.slots.gpus_for(live.record.request.get("num_gpus"))
            gpus = await self.slots.acquire(job_id, wanted)
            if live.scope.cancel_called or job_id not in self.live.jobs:
                self.slots.release(job_id)
                continue
            live.dispatched = True
            live.slot_granted_at = trio.current_time()
            nursery.start_soon(execute, live, gpus)
