"""Execution slots: a CapacityLimiter, plus on GPU boxes the GPUs each running job holds.

``MAX_CONCURRENCY`` tokens bound how many jobs run. With ``LMEVAL_GPUS=0,1,2,3`` a job also
takes ``LMEVAL_GPUS_PER_JOB`` GPUs (or the number its request asks for) exclusively, gets them
as CUDA_VISIBLE_DEVICES, and gives them back when it ends. Jobs are granted in queue order:
only the dispatcher acquires, one job at a time, so a big request is never starved.
"""

from __future__ import annotations

import trio

from lmeval_trio.config import Settings
from lmeval_trio.engine.change_signal import Pulse


class GpuPool:
    """The free GPU ids; taking waits (on releases, not by polling) until enough are free."""

    def __init__(self, ids: tuple[str, ...]) -> None:
        self.ids = ids
        self._free = list(ids)
        self._released = Pulse()

    async def take(self, count: int) -> tuple[str, ...]:
        if count > len(self.ids):
            raise ValueError(f"{count} GPUs asked, {len(self.ids)} configured")
        while len(self._free) < count:
            await self._released.wait_past(self._released.version)
        taken, self._free = self._free[:count], self._free[count:]
        return tuple(taken)

    def give_back(self, ids: tuple[str, ...]) -> None:
        self._free.extend(ids)
        self._free.sort(key=self.ids.index)
        self._released.fire()


class Slots:
    """Acquire a slot (and GPUs) for a job; learn which GPUs it holds."""

    def __init__(self, settings: Settings) -> None:
        self._limiter = trio.CapacityLimiter(settings.max_concurrency)
        # On a Ray cluster, Ray schedules the GPUs: the local pool stays out of the way.
        self._local_gpus = settings.backend == "local"
        self.gpus = GpuPool(settings.gpus if self._local_gpus else ())
        self.default_gpus = settings.gpus_per_job if settings.gpus else 0
        self._held: dict[int, tuple[str, ...]] = {}
        self.freed = Pulse()  # a slot was given back (the dispatcher waits on it)

    @property
    def total(self) -> int:
        return int(self._limiter.total_tokens)

    @property
    def free(self) -> int:
        return max(0, int(self._limiter.available_tokens))

    def gpus_for(self, requested: int | None) -> int:
        """Local GPUs a job takes (none when a cluster schedules them)."""
        if not self._local_gpus:
            return 0
        return self.default_gpus if requested is None else requested

    async def acquire(self, job_id: int, gpus: int = 0) -> tuple[str, ...]:
        """Wait for a slot and ``gpus`` GPUs; returns the GPU ids (empty without GPUs)."""
        await self._limiter.acquire_on_behalf_of(job_id)
        try:
            group = await self.gpus.take(gpus) if gpus else ()
        except BaseException:
            self._limiter.release_on_behalf_of(job_id)
            self.freed.fire()
            raise
        self._held[job_id] = group
        return group

    def release(self, job_id: int) -> None:
        """Give the slot and GPUs back; a no-op for a job that holds none."""
        if job_id not in self._held:
            return
        group = self._held.pop(job_id)
        if group:
            self.gpus.give_back(group)
        self._limiter.release_on_behalf_of(job_id)
        self.freed.fire()
