"""The dashboard's job page lists a job's webhook deliveries and exports (a real browser)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ServerThread,
    chromium_missing,
    wait_finished,
)
from tests.conftest import fake_job, make_settings

_missing = chromium_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

if _missing is None:
    from playwright.sync_api import expect, sync_playwright


def settled_deliveries(client: httpx.Client, job_id: int) -> list[dict[str, Any]]:
    """The job's deliveries once none is pending (the worker attempts them just after the
    job's end; this waits for that, bounded)."""
    deadline = time.monotonic() + 60
    while True:
        found: list[dict[str, Any]] = client.get(f"/job/{job_id}/deliveries").json()["deliveries"]
        if found and all(d["status"] != "pending" for d in found):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, httpx.Client]]:
    settings = make_settings(tmp_path, webhook_allowed_hosts=("127.0.0.1",))
    with ServerThread(settings) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield server.url, client


def test_the_job_page_shows_each_delivery_and_its_last_attempt(
    served: tuple[str, httpx.Client],
) -> None:
    url, client = served
    # The server's own /healthz takes no POST: a real attempt, answered 405, final.
    body = {**fake_job("env"), "notify": [{"url": url + "/healthz", "events": ["job.completed"]}]}
    job_id = client.post("/job", json=body).json()["job_id"]
    wait_finished(client, job_id)
    (delivery,) = settled_deliveries(client, job_id)
    assert delivery["status"] == "failed"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{url}/#/job/{job_id}")
        card = page.locator("#job-deliveries")
        expect(card).to_be_visible(timeout=15_000)
        row = page.locator("#deliveries-table tbody tr")
        expect(row).to_have_count(1)
        expect(row).to_contain_text("job.completed")
        expect(row).to_contain_text("failed")
        expect(row).to_contain_text("HTTP 405")
        expect(row).not_to_contain_text("/healthz")  # origins only
        browser.close()
    assert not errors, errors
