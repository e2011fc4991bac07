"""Prometheus metrics of one supervisor: its own registry, so several can live in a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from lmeval_trio.jobs.status import JobStatus

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DURATION_BUCKETS_S = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 48 * 3600)


class Metrics:
    """Counters and histograms fed by the supervisor and the HTTP edge."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submissions = Counter("lmeval_submissions", "Jobs accepted.", registry=r)
        self.refusals = Counter(
            "lmeval_refusals", "Requests refused, by reason.", ["reason"], registry=r
        )
        self.job_duration = Histogram(
            "lmeval_job_duration_seconds",
            "Run time of finished jobs, by final status.",
            ["status"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.queue_wait = Histogram(
            "lmeval_queue_wait_seconds",
            "Time from queued to running.",
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.dispatch_latency = Histogram(
            "lmeval_dispatch_latency_seconds",
            "Time from a slot being granted to the job's process running.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.jobs = Gauge("lmeval_jobs", "Stored jobs, by status.", ["status"], registry=r)
        self.queue_depth = Gauge("lmeval_queue_depth", "Jobs waiting for a slot.", registry=r)
        self.running = Gauge("lmeval_running_jobs", "Jobs running now.", registry=r)
        self.slots_free = Gauge("lmeval_free_slots", "Execution slots free now.", registry=r)
        self.slots_total = Gauge("lmeval_slots", "Execution slots in total.", registry=r)
        self.warm_idle = Gauge(
            "lmeval_warm_runners_idle", "Warm runners waiting for a job.", registry=r
        )
        self.warm_ready = Gauge(
            "lmeval_warm_runners_ready", "Idle warm runners done importing lm-eval.", registry=r
        )
        self.warm_starts = Gauge(
            "lmeval_warm_starts", "Jobs started in a warm runner since start.", registry=r
        )
        self.jobs_confined = Gauge(
            "lmeval_jobs_confined",
            "1 if local jobs run behind a Landlock wall (LMEVAL_JOB_CONFINEMENT), else 0.",
            registry=r,
        )
        self.warm_misses = Gauge(
            "lmeval_warm_misses",
            "Fast-start jobs that no warm runner matched, since start.",
            registry=r,
        )

    def render(
        self,
        counts: dict[JobStatus, int],
        *,
        queued: int,
        running: int,
        free: int,
        total: int,
        warm: tuple[int, int, int, int] = (0, 0, 0, 0),
        confined: bool = False,
    ) -> bytes:
        """The exposition text, with the gauges set from a fresh snapshot; ``warm`` is
        (idle, ready, starts, misses) of the warm runners."""
        self.jobs_confined.set(1 if confined else 0)
        for gauge, value in zip(
            (self.warm_idle, self.warm_ready, self.warm_starts, self.warm_misses), warm, strict=True
        ):
            gauge.set(value)
        for status, count in counts.items():
            self.jobs.labels(status.value).set(count)
        self.queue_depth.set(queued)
        self.running.set(running)
        self.slots_free.set(free)
        self.slots_total.set(total)
        return generate_latest(self.registry)
