"""MLflow export against a real tracking server (SQLite backend, artifacts served): a job's
run with params, metrics and artifacts read back; never logged twice; a server down at
first delays the export; a sweep is a parent run with a child per cell."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.http.schemas import delivery_out
from lmeval_trio.jobs.delivery import Delivery
from tests.conftest import DUMMY_JOB, fake_job, make_settings
from tests.support.mlflow_server import MlflowServer, free_port

SECRET = "sk-model-secret-0123456789"
Check = Callable[[list[Delivery]], bool]


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    try:
        yield server
    finally:
        server.stop()


def exporting(tmp_path: Path, url: str, experiment: str, **overrides: Any) -> Any:
    return make_settings(
        tmp_path,
        mlflow_tracking_uri=url,
        mlflow_experiment=experiment,
        webhook_retry_base_s=0.2,
        webhook_retry_max_s=1.0,
        **overrides,
    )


async def until(
    supervisor: Supervisor, read: Callable[[], Awaitable[list[Delivery]]], done: Check
) -> list[Delivery]:
    """``read()`` once ``done`` holds for it (woken by each recorded attempt)."""
    with trio.fail_after(120):
        while True:
            version = supervisor.outbox.attempted.version
            found = await read()
            if done(found):
                return found
            await supervisor.outbox.attempted.wait_past(version)


def none_pending(found: list[Delivery]) -> bool:
    return bool(found) and all(d.status != "pending" for d in found)


async def settled(supervisor: Supervisor, job_id: int) -> list[Delivery]:
    return await until(supervisor, partial(supervisor.store.job_deliveries, job_id), none_pending)


class Tracking:
    """Reads back what landed on the tracking server, through its REST API."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url + "/api/2.0", timeout=30)

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(path, json=body)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        response = self.client.get(path, params=params)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def runs(self, experiment: str, filter_text: str = "") -> list[dict[str, Any]]:
        found = self.get("mlflow/experiments/get-by-name", experiment_name=experiment)
        experiment_id = found["experiment"]["experiment_id"]
        body = {"experiment_ids": [experiment_id], "filter": filter_text, "max_results": 100}
        runs: list[dict[str, Any]] = self.post("mlflow/runs/search", body).get("runs", [])
        return runs


def tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def params(run: dict[str, Any]) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def metrics(run: dict[str, Any]) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


async def test_a_finished_job_is_one_run_with_params_metrics_and_artifacts(
    tmp_path: Path, mlflow: MlflowServer
) -> None:
    settings = exporting(tmp_path, mlflow.url, "one-job")
    body = {
        **DUMMY_JOB,
        "model_args": f"pretrained=dummy,api_key={SECRET}",
        "limit": 2,
        "log_samples": True,
        "output_path": "out",
    }
    async with Supervisor(settings) as supervisor:
        record = await supervisor.submit(body)
        await supervisor.wait(record.id)
        (delivery,) = await settled(supervisor, record.id)
        # A retry of a delivery that already logged everything (a crash before its
        # outcome was recorded) finds the same run and changes nothing.
        again = await supervisor.outbox.senders["mlflow"](delivery)
    assert delivery.status == "delivered" and again.delivered
    with Tracking(mlflow.url) as tracking:
        check_job_run(tracking, delivery, record.id)


def check_job_run(tracking: Tracking, delivery: Delivery, job_id: int) -> None:
    (run,) = tracking.runs("one-job")
    run_id = run["info"]["run_id"]
    assert delivery.state["run_id"] == run_id
    assert delivery.state["run_url"].endswith(f"/runs/{run_id}")
    shown = delivery_out(delivery)  # what GET /job/{id}/deliveries and the dashboard show
    assert shown["kind"] == "mlflow" and shown["link"] == delivery.state["run_url"]
    assert run["info"]["status"] == "FINISHED"
    found_tags = tags(run)
    assert found_tags["lmeval.job_id"] == str(job_id)
    assert found_tags["lmeval.status"] == "Completed"
    assert found_tags["lmeval.lm_eval_version"].startswith("0.4.")
    found_params = params(run)
    assert found_params["model"] == "dummy" and float(found_params["limit"]) == 2
    assert SECRET not in str(found_params) and "api_key" in found_params["model_args"]
    found_metrics = metrics(run)
    assert "tiny_mc/acc/none" in found_metrics and "tiny_mc/acc/none_stderr" in found_metrics
    history = tracking.get(
        "mlflow/metrics/get-history", run_id=run_id, metric_key="tiny_mc/acc/none"
    )
    assert len(history["metrics"]) == 1  # logged once, though sent twice
    listed = tracking.get("mlflow/artifacts/list", run_id=run_id)
    names = {f["path"] for f in listed.get("files", [])}
    assert any(n.startswith("results_") and n.endswith(".json") for n in names)
    assert "samples" in names
    results_name = next(n for n in names if n.startswith("results_"))
    root = delivery.state["artifact_uri"].removeprefix("mlflow-artifacts:").strip("/")
    content = tracking.client.get(f"mlflow-artifacts/artifacts/{root}/{results_name}")
    assert content.status_code == 200 and b"tiny_mc" in content.content
    assert SECRET.encode() not in content.content


async def test_a_tracking_server_down_at_first_delays_the_export(tmp_path: Path) -> None:
    port = free_port()
    settings = exporting(tmp_path, f"http://127.0.0.1:{port}", "late")
    server = MlflowServer(tmp_path / "mlflow", port)
    try:
        async with Supervisor(settings) as supervisor:
            record = await supervisor.submit(fake_job("exit"))
            await supervisor.wait(record.id)
            await until(
                supervisor,
                partial(supervisor.store.job_deliveries, record.id),
                lambda found: bool(found and found[0].attempts),
            )
            await trio.to_thread.run_sync(server.start)
            (delivery,) = await settled(supervisor, record.id)
        with Tracking(server.url) as tracking:
            (run,) = tracking.runs("late")
    finally:
        server.stop()
    assert delivery.status == "delivered"
    assert (
        delivery.attempts[0]["status_code"] is None and "Connect" in delivery.attempts[0]["error"]
    )
    assert run["info"]["status"] == "FAILED" and tags(run)["lmeval.status"] == "Failed"


async def test_a_sweep_is_a_parent_run_with_a_child_per_cell(
    tmp_path: Path, mlflow: MlflowServer
) -> None:
    settings = exporting(tmp_path, mlflow.url, "sweeps")
    body = {"name": "grid", "base": fake_job("env"), "cells": [{"key": "a"}, {"key": "b"}]}
    async with Supervisor(settings) as supervisor:
        sweep, records = await supervisor.sweeps.submit(body)
        for record in records:
            await supervisor.wait(record.id)
            await settled(supervisor, record.id)
        with trio.fail_after(60):
            while any(
                d.status == "pending" for d in await supervisor.store.sweep_deliveries(sweep.id)
            ):
                await supervisor.outbox.attempted.wait_past(supervisor.outbox.attempted.version)
    with Tracking(mlflow.url) as tracking:
        runs = tracking.runs("sweeps")
    parents = [r for r in runs if tags(r).get("lmeval.sweep")]
    (parent,) = parents
    assert parent["info"]["run_name"] == "grid" and parent["info"]["status"] == "FINISHED"
    children = [r for r in runs if tags(r).get("mlflow.parentRunId") == parent["info"]["run_id"]]
    assert sorted(tags(c)["lmeval.sweep_cell"] for c in children) == ["a", "b"]
    assert {tags(c)["lmeval.sweep_id"] for c in children} == {str(sweep.id)}
    assert len(runs) == 3
