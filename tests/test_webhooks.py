"""Webhooks: signed (verified with the standardwebhooks library), delivered from a durable
outbox with retries, refused for non-public targets (SSRF), and listed per job."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from standardwebhooks.webhooks import Webhook

from lmeval_trio.config import Settings
from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.engine.webhooks import SECRET_FILE
from lmeval_trio.jobs.status import JobStatus
from tests.conftest import DUMMY_JOB, Server, fake_job, make_settings, start_server, supervisor_of
from tests.support.webhook_receiver import Receiver, webhook_receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LOOPBACK = ("127.0.0.1",)
Check = Callable[[list[dict[str, Any]]], bool]


@asynccontextmanager
async def served(tmp_path: Path, **overrides: Any) -> AsyncIterator[Server]:
    """A real hypercorn with the test's settings (webhooks to 127.0.0.1 allowed)."""
    values: dict[str, Any] = {
        "webhook_allowed_hosts": LOOPBACK,
        "webhook_secret": SECRET,
        "webhook_retry_base_s": 0.05,
        "webhook_retry_max_s": 0.2,
        **overrides,
    }
    settings = make_settings(tmp_path, **values)
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            yield Server(url, client, app)
        shutdown.set()


async def deliveries_when(server: Server, job_id: int, done: Check) -> list[dict[str, Any]]:
    """The job's deliveries once ``done`` holds for them (woken by each recorded attempt)."""
    supervisor = supervisor_of(server)
    with trio.fail_after(60):
        while True:
            version = supervisor.outbox.attempted.version
            response = await server.client.get(f"/job/{job_id}/deliveries")
            assert response.status_code == 200, response.text
            found: list[dict[str, Any]] = response.json()["deliveries"]
            if done(found):
                return found
            await supervisor.outbox.attempted.wait_past(version)


def settled(count: int) -> Check:
    return lambda found: len(found) == count and all(d["status"] != "pending" for d in found)


def verified(received: Any) -> dict[str, Any]:
    """The body, after the standardwebhooks library accepted its signature."""
    payload: dict[str, Any] = Webhook(SECRET).verify(received.body, received.headers)
    return payload


def hook(receiver: Receiver, *events: str, path: str = "/hook") -> list[dict[str, Any]]:
    entry: dict[str, Any] = {"url": receiver.url + path}
    if events:
        entry["events"] = list(events)
    return [entry]


async def test_a_completed_job_is_told_signed_with_its_metrics_and_no_secret(
    tmp_path: Path,
) -> None:
    async with webhook_receiver() as receiver, served(tmp_path) as server:
        body = {
            **DUMMY_JOB,
            "model_args": "pretrained=dummy,api_key=sk-model-secret-0123456789",
            "env_vars": {"HF_TOKEN": "hf_env_secret_0123456789"},
            "limit": 2,
            "notify": hook(receiver, "job.started", "job.completed"),
        }
        job_id = await server.submit(body)
        assert (await server.wait_status(job_id))["status"] == "Completed"
        started, completed = await receiver.wait_for(2)
        deliveries = await deliveries_when(server, job_id, settled(2))
    first, second = verified(started), verified(completed)
    assert [first["type"], second["type"]] == ["job.started", "job.completed"]
    assert second["data"]["job_id"] == job_id and second["data"]["status"] == "Completed"
    metrics = second["data"]["metrics"]
    assert {m["task"] for m in metrics} == {"tiny_mc", "tiny_gen"}
    assert all("value" in m for m in metrics)
    for received in (started, completed):
        text = received.body.decode() + json.dumps(received.headers)
        assert "secret_0123456789" not in text and "sk-model" not in text and SECRET not in text
        assert received.path == "/hook"
    assert started.headers["webhook-id"] != completed.headers["webhook-id"]
    assert [d["status"] for d in deliveries] == ["delivered", "delivered"]
    assert [d["webhook_id"] for d in deliveries] == [
        started.headers["webhook-id"],
        completed.headers["webhook-id"],
    ]
    assert all(d["attempts"][0]["status_code"] == 200 for d in deliveries)
    assert all("/hook" not in d["target"] for d in deliveries)  # origins only


async def test_retries_after_a_500_and_a_timeout_keep_the_webhook_id(tmp_path: Path) -> None:
    async with (
        webhook_receiver(500, "hang", 200) as receiver,
        served(tmp_path, webhook_timeout_s=1.0) as server,
    ):
        job_id = await server.submit({**fake_job("env"), "notify": hook(receiver, "job.completed")})
        received = await receiver.wait_for(3)
        (delivery,) = await deliveries_when(server, job_id, settled(1))
    assert len({r.headers["webhook-id"] for r in received}) == 1
    assert len({r.body for r in received}) == 1  # the same payload every time
    for attempt in received:
        assert verified(attempt)["type"] == "job.completed"
    assert delivery["status"] == "delivered"
    codes = [a["status_code"] for a in delivery["attempts"]]
    assert codes == [500, None, 200]
    assert "within 1 s" in delivery["attempts"][1]["error"]
    assert delivery["next_attempt_at"] is None


@pytest.mark.parametrize("status", [400, 404, 410])
async def test_a_4xx_is_final(tmp_path: Path, status: int) -> None:
    async with webhook_receiver(status) as receiver, served(tmp_path) as server:
        job_id = await server.submit({**fake_job("env"), "notify": hook(receiver, "job.completed")})
        (delivery,) = await deliveries_when(server, job_id, settled(1))
        assert len(receiver.received) == 1
    assert delivery["status"] == "failed"
    assert [a["status_code"] for a in delivery["attempts"]] == [status]
    assert delivery["next_attempt_at"] is None


@pytest.mark.parametrize("status", [408, 429, 503, 307])
async def test_408_429_5xx_and_redirects_are_retried_never_followed(
    tmp_path: Path, status: int
) -> None:
    async with webhook_receiver(status) as receiver, served(tmp_path) as server:
        job_id = await server.submit({**fake_job("env"), "notify": hook(receiver, "job.completed")})
        (delivery,) = await deliveries_when(server, job_id, settled(1))
        received = list(receiver.received)
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [status, 200]
    assert [r.path for r in received] == ["/hook", "/hook"]  # never /elsewhere


async def test_a_delivery_is_given_up_after_the_bound(tmp_path: Path) -> None:
    async with (
        webhook_receiver(500, 500, 500, 500) as receiver,
        served(tmp_path, webhook_max_attempts=3) as server,
    ):
        job_id = await server.submit({**fake_job("env"), "notify": hook(receiver, "job.completed")})
        (delivery,) = await deliveries_when(server, job_id, settled(1))
        assert len(receiver.received) == 3
    assert delivery["status"] == "failed"
    assert len(delivery["attempts"]) == 3


async def test_server_wide_webhooks_get_every_jobs_events(tmp_path: Path) -> None:
    async with webhook_receiver() as receiver:
        wide = [{"url": receiver.url + "/wide", "events": ["job.failed", "job.stopped"]}]
        async with served(tmp_path, webhooks=wide) as server:
            failed = await server.submit(fake_job("exit"))
            blocked = await server.submit(fake_job("block"))
            await server.wait_status(failed)
            await server.wait_status(blocked, JobStatus.RUNNING)
            await server.client.post(f"/job/{blocked}/stop")
            await receiver.wait_for(2)
            config = (await server.client.get("/config")).json()
    bodies = sorted((verified(r)["type"], verified(r)["data"]["job_id"]) for r in receiver.received)
    assert bodies == [("job.failed", failed), ("job.stopped", blocked)]
    assert {r.path for r in receiver.received} == {"/wide"}
    assert "/wide" not in json.dumps(config) and SECRET not in json.dumps(config)


REFUSED = [
    "http://127.0.0.2:{port}/",
    "http://localhost:{port}/",
    "http://[::1]:{port}/",
    "http://[::ffff:127.0.0.2]:{port}/",
    "http://0.0.0.0:{port}/",
    "http://10.1.2.3:{port}/",
    "http://169.254.169.254/latest/meta-data/",
    "http://192.168.0.10:{port}/",
    "http://172.16.5.4/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "https://[fe80::1]/",
    "http://2130706434/",  # 127.0.0.2 as one number: not a host name either way
]


@pytest.mark.parametrize("template", REFUSED)
async def test_non_public_targets_are_refused_at_submission_without_a_connection(
    tmp_path: Path, template: str
) -> None:
    """127.0.0.1 is exempted; other loopback addresses and names, and private, link-local,
    multicast or mapped addresses are refused (422 naming the field) and never connected."""
    listener = socket.socket()
    listener.bind(("127.0.0.2", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    url = template.format(port=port)
    try:
        async with served(tmp_path) as server:
            job = {**fake_job("env"), "notify": [{"url": "https://example.org/ok"}, {"url": url}]}
            response = await server.client.post("/job", json=job)
            sweep = await server.client.post(
                "/sweeps",
                json={
                    "name": "s",
                    "base": fake_job("env"),
                    "cells": [{}],
                    "notify": [{"url": url}],
                },
            )
            listed = (await server.client.get("/jobs")).json()["jobs"]
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert [item["loc"] for item in detail] == [["body", "notify", 1, "url"]]
    assert "public addresses only" in detail[0]["msg"] or "not a" in detail[0]["msg"]
    assert sweep.status_code == 422 and sweep.json()["detail"][0]["loc"] == [
        "body",
        "notify",
        0,
        "url",
    ]
    assert listed == []


async def test_a_name_that_resolves_to_loopback_is_refused_after_resolution(
    tmp_path: Path,
) -> None:
    """Server-wide webhooks are not resolved at start: the delivery resolves "localhost",
    finds loopback (exempted as 127.0.0.1 only, not by name) and sends nothing."""
    async with webhook_receiver() as receiver:
        port = receiver.url.rsplit(":", 1)[1]
        wide = [{"url": f"http://localhost:{port}/hook", "events": ["job.completed"]}]
        async with served(tmp_path, webhooks=wide) as server:
            job_id = await server.submit(fake_job("env"))
            (delivery,) = await deliveries_when(server, job_id, settled(1))
        assert receiver.received == []
    assert delivery["status"] == "failed"
    (attempt,) = delivery["attempts"]
    assert attempt["status_code"] is None
    assert "localhost resolves to 127.0.0.1, which is a loopback address" in attempt["error"]


@pytest.mark.parametrize(
    ("notify", "loc"),
    [
        ([{"url": "ftp://example.org/x"}], ["body", "notify", 0, "url"]),
        ([{"url": "/relative"}], ["body", "notify", 0, "url"]),
        ([{"url": "http://user:pw@example.org/"}], ["body", "notify", 0, "url"]),
        ([{"url": "http://example.org:99999/"}], ["body", "notify", 0, "url"]),
        ([{"url": "http://exa mple.org/"}], ["body", "notify", 0, "url"]),
        (
            [{"url": "https://example.org/", "events": ["job.done"]}],
            ["body", "notify", 0, "events", 0],
        ),
        ([{"url": "https://example.org/", "events": []}], ["body", "notify", 0, "events"]),
        ([{"url": "https://example.org/", "extra": 1}], ["body", "notify", 0, "extra"]),
        ("https://example.org/", ["body", "notify"]),
        ([{"url": "https://example.org/"}] * 17, ["body", "notify"]),
    ],
)
async def test_bad_notify_entries_are_422_naming_the_field(
    tmp_path: Path, notify: Any, loc: list[Any]
) -> None:
    async with served(tmp_path) as server:
        response = await server.client.post("/job", json={**fake_job("env"), "notify": notify})
        sweep = await server.client.post(
            "/sweeps", json={"name": "s", "base": fake_job("env"), "cells": [{}], "notify": notify}
        )
    assert response.status_code == 422, response.text
    assert loc in [item["loc"] for item in response.json()["detail"]]
    assert sweep.status_code == 422, sweep.text


async def test_a_sweep_tells_its_end_and_its_cells_events(tmp_path: Path) -> None:
    async with webhook_receiver() as receiver, served(tmp_path) as server:
        body = {
            "name": "told",
            "base": fake_job("env"),
            "cells": [{"key": "a"}, {"key": "b", "env_vars": {"FAKE_MODE": "exit"}}],
            "notify": hook(receiver, "sweep.completed", "job.failed"),
        }
        response = await server.client.post("/sweeps", json=body)
        assert response.status_code == 200, response.text
        sweep_id = response.json()["sweep_id"]
        received = await receiver.wait_for(2)
    kinds = sorted(verified(r)["type"] for r in received)
    assert kinds == ["job.failed", "sweep.completed"]
    (end,) = [verified(r)["data"] for r in received if verified(r)["type"] == "sweep.completed"]
    assert end["sweep_id"] == sweep_id and end["name"] == "told"
    assert end["counts"] == {"Completed": 1, "Failed": 1}
    assert {j["cell"]: j["status"] for j in end["jobs"]} == {"a": "Completed", "b": "Failed"}


async def test_a_generated_secret_is_private_kept_and_signs(tmp_path: Path) -> None:
    """Without LMEVAL_WEBHOOK_SECRET the first start writes one (0600) that receivers
    verify with; the next start signs with the same one."""
    settings = make_settings(tmp_path, webhook_allowed_hosts=LOOPBACK)
    path = settings.data_dir / SECRET_FILE
    async with webhook_receiver() as receiver:
        for _ in range(2):
            async with Supervisor(settings) as supervisor:
                record = await supervisor.submit(
                    {**fake_job("env"), "notify": hook(receiver, "job.completed")}
                )
                await supervisor.wait(record.id)
                count = len(receiver.received) + 1
                await receiver.wait_for(count)
    secret = path.read_text().strip()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert secret.startswith("whsec_")
    for received in receiver.received:
        Webhook(secret).verify(received.body, received.headers)


def test_settings_name_bad_webhook_values() -> None:
    from lmeval_trio.config import SettingsError

    cases = {
        "LMEVAL_WEBHOOKS": "[{'url': 1}]",
        "LMEVAL_WEBHOOK_SECRET": "not-a-secret",
        "LMEVAL_WEBHOOK_ALLOWED_HOSTS": "10.0.0.0/33,bad host",
    }
    with pytest.raises(SettingsError, match=r"LMEVAL_WEBHOOKS: 169\.254\.169\.254 is a link-local"):
        Settings.from_env(
            {
                "LMEVAL_WEBHOOKS": '[{"url": "http://169.254.169.254/latest"}]',
                "LMEVAL_DATA_DIR": "/nonexistent/lmeval-x",
            }
        )
    for name, value in cases.items():
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value, "LMEVAL_DATA_DIR": "/nonexistent/lmeval-x"})
    good = Settings.from_env(
        {
            "LMEVAL_WEBHOOKS": json.dumps(
                [{"url": "https://hooks.example.org/T0KEN", "events": ["job.failed"]}]
            ),
            "LMEVAL_WEBHOOK_ALLOWED_HOSTS": "10.0.0.0/8, receiver.internal, ::1",
            "LMEVAL_DATA_DIR": "/nonexistent/lmeval-x",
        }
    )
    assert good.webhooks[0].events == ["job.failed"]
    assert good.public_dict()["webhooks"] == ["https://hooks.example.org/…"]


async def test_a_kill_9_before_the_post_is_answered_still_delivers(tmp_path: Path) -> None:
    """The receiver holds the first POST; the server is killed (-9) meanwhile, so no attempt
    was recorded. The restarted server delivers it at once, with the same webhook-id."""
    from tests.test_server_process import hypercorn_server

    env = {"LMEVAL_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1", "LMEVAL_WEBHOOK_SECRET": SECRET}
    async with webhook_receiver("hang") as receiver:
        async with hypercorn_server(tmp_path / "data", **env) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                job = {**fake_job("env"), "notify": hook(receiver, "job.completed")}
                response = await client.post("/job", json=job)
                assert response.status_code == 200, response.text
                job_id = response.json()["job_id"]
                (held,) = await receiver.wait_for(1)
            os.killpg(server.proc.pid, signal.SIGKILL)
            await server.proc.wait()
        async with hypercorn_server(tmp_path / "data", **env) as server:
            again = (await receiver.wait_for(2))[1]
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                status = (await client.get(f"/job/{job_id}")).json()["status"]
            server.proc.send_signal(signal.SIGTERM)
            await server.proc.wait()
    assert status == "Completed"
    assert again.headers["webhook-id"] == held.headers["webhook-id"]
    assert verified(again) == verified(held)
    assert verified(again)["data"]["job_id"] == job_id


async def test_cli_show_lists_the_deliveries(tmp_path: Path) -> None:
    from tests.test_cli import cli

    async with webhook_receiver(400) as receiver, served(tmp_path) as server:
        job_id = await server.submit({**fake_job("env"), "notify": hook(receiver, "job.completed")})
        await deliveries_when(server, job_id, settled(1))
        shown = await cli(server.url, "show", str(job_id))
    assert shown.code == 0, shown.err
    assert "--- deliveries ---" in shown.out
    line = next(x for x in shown.out.splitlines() if x.startswith("job.completed"))
    assert line.split()[1:5] == [f"{receiver.url}/…", "failed", "1", "400"]
