"""MLflow export: a finished job logged as a run through MLflow's REST API (httpx; no mlflow
package at run time), one outbox delivery per job, and a sweep as a parent run.

Never twice: the run is found by its delivery's id (tag ``lmeval.delivery``) before one is
created, and its id is kept in the outbox row before anything is logged into it; params,
metrics (fixed timestamp and step), artifacts and the final status are idempotent, so a
retry after a crash or a tracking server that went away finishes the same run. A sweep's
parent run is found by the sweep (tag ``lmeval.sweep``) the same way, under a lock.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import trio

from lmeval_trio.config import Settings
from lmeval_trio.engine.webhooks import Outcome
from lmeval_trio.errors import NotFound
from lmeval_trio.jobs.delivery import Delivery
from lmeval_trio.jobs.record import JobRecord, SweepRecord
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.outputs import results
from lmeval_trio.outputs.logs import open_inside
from lmeval_trio.policy import secrets
from lmeval_trio.store.sqlite import JobStore

API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
MAX_PARAM_CHARS = 6000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
RUN_STATUS = {
    JobStatus.COMPLETED: "FINISHED",
    JobStatus.FAILED: "FAILED",
    JobStatus.STOPPED: "KILLED",
}
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_\-. /:]")
_SAMPLES = re.compile(r"(?:^|/)samples_[^/]+\.jsonl$")
Hidden = Callable[[JobRecord], Awaitable[tuple[str, ...]]]


class MlflowRefused(Exception):
    """The tracking server answered with an error; ``final`` unless it may pass."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"MLflow answered {status_code}: {message[:300]}")
        self.status_code = status_code
        self.final = 400 <= status_code < 500 and status_code not in (408, 429)


def metric_name(*parts: str) -> str:
    """A metric or param name MLflow accepts: its characters (letters, digits, ``_-. /:``)
    and a path that normalises to itself (no ``..``, ``//`` or ends in ``/``)."""
    name = "/".join(_UNSAFE_NAME.sub("_", part).strip("/") or "_" for part in parts)
    segments = ["_" if s in ("", ".", "..") else s for s in name.split("/")]
    name = "/".join(segments)
    assert posixpath.normpath(name) == name
    return name[:250]


class MlflowExporter:
    """Logs jobs and sweeps into one tracking server; one HTTP client for all exports."""

    def __init__(self, settings: Settings, store: JobStore, hidden: Hidden) -> None:
        assert settings.mlflow_tracking_uri is not None
        self.settings = settings
        self.base = settings.mlflow_tracking_uri
        self.store = store
        self.hidden = hidden
        self.client = httpx.AsyncClient(
            base_url=self.base,
            timeout=settings.mlflow_timeout_s,
            follow_redirects=False,
            trust_env=False,
        )
        self._experiment_id: str | None = None
        self._parents = trio.Lock()  # one sweep parent run, even for cells ending together
        self._experiments = trio.Lock()  # one experiment lookup (or creation) at a time

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send(self, delivery: Delivery) -> Outcome:
        """One attempt of an export: the whole run, resumed where a past attempt stopped."""
        try:
            if delivery.job_id is not None:
                await self._export_job(delivery, delivery.job_id)
            elif delivery.sweep_id is not None:
                await self._finish_sweep(delivery.sweep_id)
        except MlflowRefused as error:
            return Outcome(
                False, final=error.final, status_code=error.status_code, error=str(error)
            )
        except httpx.HTTPError as error:
            return Outcome(False, error=f"{type(error).__name__}: {error}"[:300])
        except results.ResultsUnavailable as error:
            return Outcome(False, final=True, error=str(error))
        return Outcome(True, status_code=200)

    # -- a job ------------------------------------------------------------------------

    async def _export_job(self, delivery: Delivery, job_id: int) -> None:
        record = await self.store.get(job_id)
        if record is None:
            raise MlflowRefused(410, f"job {job_id} was deleted before its export")
        state = dict(delivery.state)
        if "run_id" not in state:
            state = await self._open_run(delivery, record)
            await self.store.save_delivery(delivery.id, state=state)  # before any logging
        run_id = str(state["run_id"])
        loaded = await self._results(record)
        hidden = await self.hidden(record)
        await self._log_batch(run_id, params=_params(record, hidden))
        await self._log_batch(run_id, metrics=_metrics(loaded, _millis(record.finished_at)))
        await self._log_batch(run_id, tags=await self._artifacts(record, state, loaded, hidden))
        await self._call(
            "runs/update",
            {
                "run_id": run_id,
                "status": RUN_STATUS.get(record.status, "FINISHED"),
                "end_time": _millis(record.finished_at),
            },
        )

    async def _open_run(self, delivery: Delivery, record: JobRecord) -> dict[str, Any]:
        """The job's run: found by the delivery's id, else created (tags only)."""
        experiment = await self._experiment()
        parent = None
        if record.sweep_id is not None:
            sweep = await self.store.get_sweep(record.sweep_id)
            if sweep is not None:
                parent = await self._parent_run(sweep)
        run = await self._find_run(experiment, "lmeval.delivery", delivery.message_id)
        if run is None:
            tags = _job_tags(record, delivery.message_id, parent)
            name = record.sweep_cell or f"job-{record.id}"
            run = await self._create_run(experiment, name, record.started_at, tags)
        return self._run_state(experiment, run)

    async def _results(self, record: JobRecord) -> dict[str, Any] | None:
        if record.status is not JobStatus.COMPLETED:
            return None
        try:
            return await trio.to_thread.run_sync(results.load_results, record)
        except results.ResultsUnavailable:
            return None

    async def _artifacts(
        self,
        record: JobRecord,
        state: dict[str, Any],
        loaded: dict[str, Any] | None,
        hidden: tuple[str, ...],
    ) -> list[dict[str, str]]:
        """Upload the results JSON and samples files (secrets masked, each up to the bound)
        through the server's artifact proxy; tags say what was left out and why."""
        uri = str(state.get("artifact_uri", ""))
        if not uri.startswith("mlflow-artifacts:"):
            why = "not uploaded: the tracking server does not serve artifacts (--serve-artifacts)"
            return [{"key": "lmeval.artifacts", "value": why}]
        root = uri.removeprefix("mlflow-artifacts:").strip("/")
        files = await trio.to_thread.run_sync(_artifact_files, record, loaded)
        skipped = []
        for name, path in files:
            data = await trio.to_thread.run_sync(_read_bounded, record, path, self.bound)
            if data is None:
                skipped.append(name)
                continue
            masked = secrets.mask_text(data.decode("utf-8", "replace"), hidden).encode()
            response = await self.client.put(f"{ARTIFACTS_API}/{root}/{name}", content=masked)
            _check(response)
        if skipped:
            value = f"larger than {self.bound} B, not uploaded: {', '.join(skipped)}"
            return [{"key": "lmeval.artifacts", "value": value[:MAX_PARAM_CHARS]}]
        return []

    @property
    def bound(self) -> int:
        return self.settings.mlflow_max_artifact_bytes

    # -- a sweep ------------------------------------------------------------------------

    async def _finish_sweep(self, sweep_id: int) -> None:
        sweep = await self.store.get_sweep(sweep_id)
        if sweep is None:
            raise MlflowRefused(410, f"sweep {sweep_id} was deleted before its export")
        run_id = await self._parent_run(sweep)
        jobs = await self.store.sweep_jobs([sweep_id])
        failed = any(j.status is JobStatus.FAILED for j in jobs)
        ends = [_millis(j.finished_at) for j in jobs if j.finished_at]
        await self._call(
            "runs/update",
            {
                "run_id": run_id,
                "status": "FAILED" if failed else "FINISHED",
                "end_time": max(ends, default=0),
            },
        )

    async def _parent_run(self, sweep: SweepRecord) -> str:
        """The sweep's parent run, created once (found by the sweep's identity)."""
        async with self._parents:
            experiment = await self._experiment()
            identity = f"{sweep.id}@{sweep.created_at}"
            run = await self._find_run(experiment, "lmeval.sweep", identity)
            if run is None:
                tags = {"lmeval.sweep": identity, "lmeval.sweep_id": str(sweep.id)}
                run = await self._create_run(experiment, sweep.name, sweep.created_at, tags)
            return str(run["info"]["run_id"])

    # -- the REST API -------------------------------------------------------------------

    async def _experiment(self) -> str:
        """The experiment's id, created if missing (by us or, racing, by someone else)."""
        async with self._experiments:
            if self._experiment_id is None:
                self._experiment_id = await self._experiment_by_name(create=True)
            return self._experiment_id

    async def _experiment_by_name(self, *, create: bool) -> str:
        name = self.settings.mlflow_experiment
        response = await self.client.get(
            f"{API}/experiments/get-by-name", params={"experiment_name": name}
        )
        if response.status_code != 404:
            return str(_check(response)["experiment"]["experiment_id"])
        if not create:
            raise MlflowRefused(404, f"experiment {name!r} vanished")
        created = await self.client.post(f"{API}/experiments/create", json={"name": name})
        if created.status_code == 400 and "RESOURCE_ALREADY_EXISTS" in created.text:
            return await self._experiment_by_name(create=False)  # another server made it
        return str(_check(created)["experiment_id"])

    async def _find_run(self, experiment: str, tag: str, value: str) -> dict[str, Any] | None:
        found = await self._call(
            "runs/search",
            {
                "experiment_ids": [experiment],
                "filter": f"tags.`{tag}` = '{value}'",
                "max_results": 1,
            },
        )
        runs = found.get("runs") or []
        return dict(runs[0]) if runs else None

    async def _create_run(
        self, experiment: str, name: str, started_at: str | None, tags: dict[str, str]
    ) -> dict[str, Any]:
        body = {
            "experiment_id": experiment,
            "run_name": name,
            "start_time": _millis(started_at),
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        created = await self._call("runs/create", body)
        return dict(created["run"])

    def _run_state(self, experiment: str, run: dict[str, Any]) -> dict[str, Any]:
        run_id = str(run["info"]["run_id"])
        return {
            "experiment_id": experiment,
            "run_id": run_id,
            "artifact_uri": run["info"].get("artifact_uri", ""),
            "run_url": f"{self.base}/#/experiments/{experiment}/runs/{run_id}",
        }

    async def _log_batch(
        self,
        run_id: str,
        *,
        params: Sequence[dict[str, str]] = (),
        metrics: Sequence[dict[str, Any]] = (),
        tags: Sequence[dict[str, str]] = (),
    ) -> None:
        for start in range(0, len(params), PARAMS_PER_BATCH):
            await self._call(
                "runs/log-batch",
                {"run_id": run_id, "params": list(params[start : start + PARAMS_PER_BATCH])},
            )
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            chunk = list(metrics[start : start + METRICS_PER_BATCH])
            await self._call("runs/log-batch", {"run_id": run_id, "metrics": chunk})
        if tags:
            await self._call("runs/log-batch", {"run_id": run_id, "tags": list(tags)})

    async def _call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return _check(await self.client.post(f"{API}/{method}", json=body))


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 300:
        raise MlflowRefused(response.status_code, response.text)
    if not response.content:
        return {}
    data = response.json()
    return data if isinstance(data, dict) else {}


def _millis(iso: str | None) -> int:
    return 0 if not iso else int(datetime.fromisoformat(iso).timestamp() * 1000)


def _job_tags(record: JobRecord, delivery_id: str, parent: str | None) -> dict[str, str]:
    tags = {
        "lmeval.job_id": str(record.id),
        "lmeval.status": record.status.value,
        "lmeval.delivery": delivery_id,
        "lmeval.lm_eval_version": _lm_eval_version(),
    }
    if record.sweep_id is not None:
        tags["lmeval.sweep_id"] = str(record.sweep_id)
        tags["lmeval.sweep_cell"] = record.sweep_cell or ""
    if parent is not None:
        tags["mlflow.parentRunId"] = parent
    if record.reason:
        tags["lmeval.reason"] = secrets.mask_text(
            record.reason, secrets.job_secrets(record.request)
        )[:MAX_PARAM_CHARS]
    return tags


def _lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return "unknown"


def _params(record: JobRecord, hidden: tuple[str, ...]) -> list[dict[str, str]]:
    """The request's lm-eval arguments (and the server's fields), secrets masked; env_vars
    by name only; notify left out (a webhook URL may hold a token)."""
    shown = secrets.public_request(record.request, hidden)
    params = []
    for key in sorted(shown):
        if key == "notify":
            continue
        value = shown[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        params.append({"key": metric_name(key), "value": text[:MAX_PARAM_CHARS]})
    return params


def _metrics(loaded: dict[str, Any] | None, timestamp: int) -> list[dict[str, Any]]:
    """The flat metrics table: ``task/metric/filter``, each stderr as its own metric."""
    found: list[dict[str, Any]] = []
    for row in (loaded or {}).get("metrics", []):
        name = metric_name(str(row["task"]), str(row["metric"]), str(row["filter"]))
        for key, value in ((name, row.get("value")), (name + "_stderr", row.get("stderr"))):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and math.isfinite(value):
                found.append({"key": key, "value": value, "timestamp": timestamp, "step": 0})
    return found


def _artifact_files(record: JobRecord, loaded: dict[str, Any] | None) -> list[tuple[str, Path]]:
    """(artifact name, file): the results JSON and lm-eval's samples files."""
    files: list[tuple[str, Path]] = []
    if loaded is not None:
        path = Path(loaded["file"])
        files.append((path.name, path))
    for artifact in results.list_artifacts(record):
        if _SAMPLES.search(artifact.name):
            files.append(("samples/" + Path(artifact.name).name, artifact.path))
    return files


def _read_bounded(record: JobRecord, path: Path, bound: int) -> bytes | None:
    """The file's bytes, or None when it is larger than ``bound`` (or gone, or not really
    inside the job's folders: the job could have swapped in a symlink)."""
    try:
        with open(open_inside(path, results.job_roots(record)), "rb") as file:
            data = file.read(bound + 1)
    except (OSError, NotFound):
        return None
    return None if len(data) > bound else data
