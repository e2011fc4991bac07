"""Retention: removing jobs (record and folder), and pruning finished ones by age and count."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import UTC, datetime

import trio

from lmeval_trio.config import Settings
from lmeval_trio.engine.change_signal import Pulse
from lmeval_trio.engine.live import log
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import TERMINAL
from lmeval_trio.store.sqlite import JobStore


class Retention:
    """Deletes what a delete asks for, and what the retention settings let go."""

    def __init__(self, settings: Settings, store: JobStore, changed: Pulse) -> None:
        self.settings = settings
        self.store = store
        self.changed = changed

    async def remove(self, records: Sequence[JobRecord]) -> None:
        """Delete the jobs' folders (what cannot be removed is left), then their records."""
        for record in records:
            await trio.to_thread.run_sync(shutil.rmtree, record.job_dir, True)
        await self.store.delete([r.id for r in records])
        self.changed.fire()

    async def prune(self) -> None:
        """Apply the retention settings to finished jobs."""
        max_age_s, max_jobs = self.settings.retention_max_age_s, self.settings.retention_max_jobs
        if max_age_s is None and max_jobs is None:
            return
        finished = await self.store.select(TERMINAL)
        doomed = _expired(finished, max_age_s, max_jobs)
        if doomed:
            log.info("retention: deleting %d finished jobs", len(doomed))
            await self.remove(doomed)

    async def prune_logged(self) -> None:
        """Prune after a job ended: a failure is logged, never the job's concern."""
        try:
            await self.prune()
        except Exception:
            log.exception("retention: could not prune finished jobs")


def _expired(
    finished: list[JobRecord], max_age_s: float | None, max_jobs: int | None
) -> list[JobRecord]:
    doomed: dict[int, JobRecord] = {}
    if max_age_s is not None:
        now = datetime.now(UTC)
        for record in finished:
            ended = datetime.fromisoformat(record.finished_at or record.created_at)
            if (now - ended).total_seconds() > max_age_s:
                doomed[record.id] = record
    if max_jobs is not None and len(finished) > max_jobs:
        for record in finished[: len(finished) - max_jobs]:
            doomed[record.id] = record
    return list(doomed.values())
