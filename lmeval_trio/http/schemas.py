"""JSON shapes of the HTTP API (the original server's, plus extra fields) and their builders."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, RootModel

from lmeval_trio.jobs.delivery import Delivery
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.policy.secrets import job_secrets, mask_text


class JobSummary(BaseModel):
    """One job in listings; the first six fields are the original server's."""

    job_id: int
    argument: str = Field(description="The command line, shell-quoted.")
    status: JobStatus
    timestamp: str | None = Field(description="Start time (UTC ISO-8601); null while queued.")
    exit_code: int | None
    inference_progress_pct: int = Field(ge=0, le=100)
    created_at: str
    queued_at: str
    started_at: str | None
    finished_at: str | None
    reason: str | None = Field(description="Why the job failed, stopped or was requeued.")
    resumed_from: int | None
    attempts: int = Field(description="Attempts started (retries and requeues included).")
    retry_at: str | None = Field(
        default=None,
        description="Queued after a transient failure: when the next attempt may start.",
    )
    gpus: list[str]
    progress: dict[str, Any] = Field(description="Phase, n, total, rate_per_s, elapsed_s, eta_s.")
    request: dict[str, Any] = Field(
        description="The request as submitted (env values and credentials hidden)."
    )
    sweep_id: int | None = Field(None, description="The sweep this job is a cell of.")
    sweep_cell: str | None = Field(None, description="That cell's key.")


class Attempt(BaseModel):
    """One attempt of a job: when it ran, how it ended, and where its output begins."""

    attempt: int
    started_at: str
    finished_at: str | None
    exit_code: int | None
    reason: str | None
    outcome: JobStatus | None = Field(description="How it ended; null while it runs.")
    retried: bool = Field(description="A transient failure, followed by another attempt.")
    stdout_offset: int = Field(description="Where its output begins in stdout.log (bytes).")
    stderr_offset: int = Field(description="Where its output begins in stderr.log (bytes).")


class JobDetail(JobSummary):
    attempt_history: list[Attempt] = Field(
        default_factory=list, description="Every attempt, oldest first."
    )
    stdout: list[str] = Field(description="The most recent stdout lines.")
    stderr: list[str] = Field(description="The most recent stderr lines (bars collapsed).")


class JobList(BaseModel):
    jobs: list[JobSummary]
    total: int = Field(description="Jobs matching the filter (before limit/offset).")


class Submitted(BaseModel):
    status: str = "success"
    message: str
    job_id: int


class StopResult(BaseModel):
    status: str = "success"
    message: str
    job_id: int
    job_status: JobStatus


class BulkResult(BaseModel):
    status: str = "success"
    message: str
    job_ids: list[int]


class SweepSubmitted(BaseModel):
    status: str = "success"
    message: str
    sweep_id: int
    job_ids: list[int]


class SweepCellOut(BaseModel):
    key: str
    job_id: int | None = Field(
        description="The cell's newest job; null (with a null status) once its job was "
        "deleted: the reason says so, and a sweep resume runs the cell again."
    )
    status: JobStatus | None
    progress_pct: int
    eta_s: float | None
    reason: str | None
    request: dict[str, Any]


class SweepSummary(BaseModel):
    sweep_id: int
    name: str
    created_at: str
    baseline: str | None
    max_parallel: int | None
    status: JobStatus = Field(description="Running, Queued, else how its cells ended.")
    counts: dict[str, int] = Field(description="Cells by the status of their newest job.")
    total_cells: int
    progress_pct: int
    eta_s: float | None = Field(description="Estimated seconds until every cell has ended.")
    job_ids: list[int] = Field(description="Every job of the sweep (resumed cells have more).")


class SweepDetail(SweepSummary):
    cells: list[SweepCellOut]


class SweepList(BaseModel):
    sweeps: list[SweepSummary]
    total: int


class SweepColumn(BaseModel):
    key: str
    job_id: int | None
    status: JobStatus | None


class SweepRow(BaseModel):
    task: str
    metric: str
    filter: str
    is_group: bool
    values: dict[str, Any] = Field(description="Cell key -> value (null: no result).")
    stderr: dict[str, float | None]


class SweepResults(BaseModel):
    sweep_id: int
    name: str
    baseline: str | None
    columns: list[SweepColumn]
    rows: list[SweepRow]


class Error(BaseModel):
    detail: Any = Field(description="What went wrong (a list of field errors for 422).")
    field: str | None = None
    rule: str | None = None


class LogChunkOut(BaseModel):
    job_id: int
    stream: str
    offset: int
    next_offset: int
    size: int
    text: str
    lines: list[str]


class ArtifactOut(BaseModel):
    name: str
    size_bytes: int
    url: str


class ArtifactList(BaseModel):
    job_id: int
    artifacts: list[ArtifactOut]


class MetricRow(BaseModel):
    task: str
    metric: str
    filter: str
    value: Any = Field(description="Usually a number; lm-eval writes 'N/A' for some metrics.")
    stderr: float | None
    is_group: bool


class JobResults(BaseModel):
    """GET /job/{id}/results: lm-eval's results file, plus a flat metrics table."""

    job_id: int
    status: JobStatus
    file: str
    lm_eval_version: str | None
    n_samples: dict[str, Any]
    config: dict[str, Any]
    metrics: list[MetricRow]
    results: dict[str, Any] = Field(description="The raw lm-eval results JSON.")


class Health(BaseModel):
    """GET /healthz (200 healthy, 503 not); the supervisor's statistics come along."""

    model_config = ConfigDict(extra="allow")
    status: str
    supervisor: str
    store: str


class Ready(BaseModel):
    status: str


class EffectiveSettings(BaseModel):
    """GET /config: every setting by name, secrets masked."""

    model_config = ConfigDict(extra="allow")


class TaskEntry(BaseModel):
    """One task, group or tag of the catalog."""

    name: str
    kind: str = Field(description="task, group or tag.")
    output_type: str | None
    dataset: dict[str, str | None] | None = Field(description="{path, name} of its dataset.")
    num_fewshot: int | None = Field(description="The YAML's default; null: lm-eval's (0).")
    metrics: list[str]
    tags: list[str]
    subtasks: list[str] = Field(description="A group's or tag's members.")
    description: str | None
    yaml_path: str | None = Field(description="Relative to lm-eval's tasks folder (or its own).")
    source: str = Field(description="lm_eval, or the include_path folder defining it.")


class TaskList(BaseModel):
    tasks: list[TaskEntry]
    total: int = Field(description="Entries matching the query (before limit/offset).")
    limit: int
    offset: int


class TaskDetail(TaskEntry):
    config: dict[str, Any] | None = Field(description="The YAML after includes.")


class Check(BaseModel):
    name: str = Field(description="queue, policy, parser, gpus, tasks or endpoint.")
    ok: bool
    detail: str


class CheckReport(BaseModel):
    """POST /job?dry_run=true: every admission check, nothing queued."""

    checks: list[Check]
    ok: bool


class SubmitAnswer(RootModel[Submitted | CheckReport]):
    """POST /job: the queued job, or with dry_run=true the admission report."""


class Sample(BaseModel):
    """One lm-eval sample record (one doc under one filter)."""

    doc_id: Any
    filter: str
    prompt: Any = Field(description="The request arguments as lm-eval recorded them.")
    target: Any
    resps: Any = Field(description="Raw responses.")
    filtered_resps: Any
    metrics: dict[str, Any] = Field(description="This sample's value of each metric.")
    correct: dict[str, bool | None] = Field(description="Per 0/1 metric: right, wrong, none.")
    doc: Any
    doc_hash: Any
    prompt_hash: Any
    target_hash: Any


class SamplesPage(BaseModel):
    job_id: int
    task: str
    tasks: list[str] = Field(description="Every task the job logged samples of.")
    samples: list[Sample]
    total: int = Field(description="Samples matching the filters (all pages).")
    offset: int = Field(description="Position of this page's first sample among them.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null: last.")
    filters: list[str]
    metrics: list[str]
    binary_metrics: list[str] = Field(description="The 0/1 metrics `correct` can judge by.")


def attempt_history(record: JobRecord) -> list[dict[str, Any]]:
    """The record's attempts as GET /job/{id} shows them (reasons masked like ``reason``)."""
    hidden = job_secrets(record.request)
    return [
        {
            **entry,
            "reason": None if entry.get("reason") is None else mask_text(entry["reason"], hidden),
        }
        for entry in record.attempt_history
    ]


class CompareCell(BaseModel):
    """One job's value in a comparison row, against the baseline."""

    job_id: int
    value: Any = Field(description="Usually a number; lm-eval writes 'N/A' for some metrics.")
    stderr: float | None
    delta: float | None = Field(description="value - baseline value (null: not numeric).")
    z: float | None
    p_value: float | None = Field(description="Two-sided p of the z test (null: no test).")
    significant: bool = Field(description="p < alpha, and the runs are comparable.")
    test: str | None = Field(description="'z' when tested; null when not (see note).")
    note: str | None = Field(description="Why there is no test or no verdict.")
    mismatches: list[str] = Field(description="Mismatch kinds that block a verdict here.")


class CompareRow(BaseModel):
    task: str
    metric: str
    filter: str
    is_group: bool
    jobs: list[CompareCell] = Field(description="One cell per job, in the order asked.")


class Mismatch(BaseModel):
    job_id: int = Field(description="The job that differs from the baseline.")
    task: str | None = Field(description="The task (null: the whole run).")
    kind: str = Field(
        description="version, task_hash, n_shot, n_samples, limit, chat_template, "
        "fewshot_as_multiturn, system_instruction or sample_set."
    )
    baseline: Any
    value: Any


class ComparePair(BaseModel):
    job_id: int
    baseline: int
    comparable: bool
    mismatch_kinds: list[str]


class PairedComparison(BaseModel):
    """Documents matched on doc_id with doc_hash agreeing; McNemar's exact test for 0/1."""

    job_id: int
    task: str
    filter: str
    metric: str
    matched: int
    mismatches: list[str]
    both_correct: int | None = None
    both_wrong: int | None = None
    correct_to_wrong: int | None = None
    wrong_to_correct: int | None = None
    p_value: float | None
    significant: bool
    test: str | None
    note: str | None


class CompareRun(BaseModel):
    job_id: int
    status: JobStatus
    model: Any
    model_args: Any
    lm_eval_version: Any
    date: Any
    samples_tasks: list[str] = Field(description="Tasks this job logged samples for.")


class Comparison(BaseModel):
    """GET /compare: rows per task/metric/filter, mismatches, paired comparisons."""

    jobs: list[int]
    baseline: int
    alpha: float
    rows: list[CompareRow]
    mismatches: list[Mismatch]
    pairs: list[ComparePair]
    paired: list[PairedComparison]
    runs: list[CompareRun]
    sweep_id: int | None = None
    cells: dict[str, str] | None = Field(None, description="Job id -> sweep cell key.")


class Flip(BaseModel):
    doc_id: int
    direction: str = Field(pattern="^(correct_to_wrong|wrong_to_correct)$")
    documents: dict[str, Any] = Field(
        description="Job id -> its record: arguments (the prompt), target, resps, "
        "filtered_resps, metrics (null: not found)."
    )


class FlipsPage(BaseModel):
    jobs: list[int]
    task: str
    filter: str
    metric: str
    total: int
    offset: int
    limit: int
    flips: list[Flip]


class DeliveryAttempt(BaseModel):
    """One attempt of a delivery."""

    at: str
    status_code: int | None = Field(description="The receiver's HTTP status; null: no answer.")
    error: str | None = Field(description="Why there was no answer (or why it was refused).")


class DeliveryOut(BaseModel):
    """A webhook delivery (or export) a job's status change owed, and how it went."""

    id: int
    kind: str = Field(description="webhook or mlflow.")
    event: str
    target: str = Field(description="Where to, origin only (a URL's path may hold a token).")
    webhook_id: str = Field(description="The webhook-id header: the same on every attempt.")
    created_at: str
    status: str = Field(description="pending, delivered or failed (given up).")
    next_attempt_at: str | None = Field(description="When the next attempt is due, if any.")
    attempts: list[DeliveryAttempt]
    link: str | None = Field(None, description="An MLflow export's run, on the tracking server.")


class DeliveryList(BaseModel):
    job_id: int
    deliveries: list[DeliveryOut]


def delivery_out(delivery: Delivery) -> dict[str, Any]:
    """A stored delivery as GET /job/{id}/deliveries shows it."""
    parts = urlsplit(delivery.target)
    return DeliveryOut(
        id=delivery.id,
        kind=delivery.kind,
        event=delivery.event,
        target=f"{parts.scheme}://{parts.netloc}/…",
        webhook_id=delivery.message_id,
        created_at=delivery.created_at,
        status=delivery.status,
        next_attempt_at=delivery.next_attempt_at,
        attempts=[DeliveryAttempt.model_validate(a) for a in delivery.attempts],
        link=delivery.state.get("run_url"),
    ).model_dump()
