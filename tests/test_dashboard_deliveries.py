"""The dashboard's job page lists a job's webhook deliveries and exports (a real browser)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.harness import (
    BROWSER_MISSING,
    PageOpener,
    needs_browser,
    served_app,
    wait_finished,
)
from tests.conftest import fake_job, make_settings

pytestmark = needs_browser
if BROWSER_MISSING is None:
    from playwright.sync_api import expect


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
    with served_app(settings) as served:
        yield served


def test_the_job_page_shows_each_delivery_and_its_last_attempt(
    open_page: PageOpener, served: tuple[str, httpx.Client]
) -> None:
    url, client = served
    # The server's own /healthz takes no POST: a real attempt, answered 405, final.
    body = {**fake_job("env"), "notify": [{"url": url + "/healthz", "events": ["job.completed"]}]}
    job_id = client.post("/job", json=body).json()["job_id"]
    wait_finished(client, job_id)
    (delivery,) = settled_deliveries(client, job_id)
    assert delivery["status"] == "failed"
    page = open_page()
    page.goto(f"{url}/#/job/{job_id}")
    card = page.locator("#job-deliveries")
    expect(card).to_be_visible(timeout=15_000)
    row = page.locator("#deliveries-table tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("job.completed")
    expect(row).to_contain_text("failed")
    expect(row).to_contain_text("HTTP 405")
    expect(row).not_to_contain_text("/healthz")  # origins only
