"""Execution slots: a CapacityLimiter, and on GPU boxes the GPU group each slot stands for.

With ``LMEVAL_GPUS=0,1,2,3`` and ``LMEVAL_GPUS_PER_JOB=2`` there are two groups, ("0","1") and
("2","3"); a running job holds one group exclusively and gets it as CUDA_VISIBLE_DEVICES.
Without GPUs a slot is just a token, and ``MAX_CONCURRENCY`` sets how many there are.
"""

from __future__ import annotations

import trio

from lmeval_trio.config import Settings


class Slots:
    """Acquire a slot for a job (in FIFO order) and learn which GPUs come with it."""

    def __init__(self, settings: Settings) -> None:
        per = settings.gpus_per_job
        gpus = settings.gpus
        self._free_groups: list[tuple[str, ...]] = [
            tuple(gpus[i : i + per]) for i in range(0, len(gpus) - per + 1, per)
        ]
        total = settings.max_concurrency
        if gpus:
            total = min(total, len(self._free_groups))
        self._limiter = trio.CapacityLimiter(total)
        self._held: dict[int, tuple[str, ...]] = {}

    @property
    def total(self) -> int:
        return int(self._limiter.total_tokens)

    @property
    def free(self) -> int:
        return max(0, int(self._limiter.available_tokens))

    def statistics(self) -> trio.CapacityLimiterStatistics:
        return self._limiter.statistics()

    async def acquire(self, job_id: int) -> tuple[str, ...]:
        """Wait for a slot; returns the slot's GPU ids (empty without GPUs)."""
        await self._limiter.acquire_on_behalf_of(job_id)
        group = self._free_groups.pop(0) if self._free_groups else ()
        self._held[job_id] = group
        return group

    def release(self, job_id: int) -> None:
        """Give the slot back; a no-op for a job that holds none."""
        if job_id not in self._held:
            return
        group = self._held.pop(job_id)
        if group:
            self._free_groups.append(group)
        self._limiter.release_on_behalf_of(job_id)
