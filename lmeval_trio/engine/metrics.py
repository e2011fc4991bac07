"""Prometheus metrics of one supervisor: its own registry, so several can live in a process."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.runners.fork_server import ForkServerInfo

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
        labels = ["pid", "environment"]
        self.fork_servers = Gauge(
            "lmeval_fork_servers", "Fork servers (warm runners) running now.", registry=r
        )
        self.fork_server_ready = Gauge(
            "lmeval_fork_server_ready",
            "1 once a fork server has imported lm-eval and loaded the task index.",
            labels,
            registry=r,
        )
        self.fork_server_jobs = Gauge(
            "lmeval_fork_server_jobs_forked", "Jobs a fork server has forked.", labels, registry=r
        )
        self.fork_server_age = Gauge(
            "lmeval_fork_server_age_seconds",
            "Time since a fork server started.",
            labels,
            registry=r,
        )
        self.warm_starts = Gauge(
            "lmeval_warm_starts", "Jobs forked by a fork server since start.", registry=r
        )
        self.jobs_confined = Gauge(
            "lmeval_jobs_confined",
            "1 if local jobs run behind a Landlock wall (LMEVAL_JOB_CONFINEMENT), else 0.",
            registry=r,
        )
        self.warm_misses = Gauge(
            "lmeval_warm_misses",
            "Fast-start jobs that ran cold (no fork server matched or could serve), since start.",
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
        warm: tuple[int, int] = (0, 0),
        fork_servers: Sequence[ForkServerInfo] = (),
        confined: bool = False,
    ) -> bytes:
        """The exposition text, with the gauges set from a fresh snapshot; ``warm`` is
        (starts, misses): jobs forked, and fast-start jobs that ran cold."""
        self.jobs_confined.set(1 if confined else 0)
        self.warm_starts.set(warm[0])
        self.warm_misses.set(warm[1])
        self._fork_servers(fork_servers)
        for status, count in counts.items():
            self.jobs.labels(status.value).set(count)
        self.queue_depth.set(queued)
        self.running.set(running)
        self.slots_free.set(free)
        self.slots_total.set(total)
        return generate_latest(self.registry)

    def _fork_servers(self, servers: Sequence[ForkServerInfo]) -> None:
        """One series per live fork server: those of ended ones are dropped."""
        self.fork_servers.set(len(servers))
        for gauge in (self.fork_server_ready, self.fork_server_jobs, self.fork_server_age):
            gauge.clear()
        for server in servers:
            labels = (str(server.pid), server.environment)
            self.fork_server_ready.labels(*labels).set(1 if server.ready else 0)
            self.fork_server_jobs.labels(*labels).set(server.jobs_forked)
            self.fork_server_age.labels(*labels).set(server.age_s)
