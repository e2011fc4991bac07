"""The dashboard's job page shows a job's attempts in headless Chromium: each attempt's
outcome, exit code, reason and where its output begins in the logs, and when a job waiting
after a transient failure will try again; the card follows the job live."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.harness import BROWSER_MISSING, PageOpener, events, needs_browser, served_app
from tests.conftest import fake_job, job_files, make_settings

KEY = "dashboard-retries-key"
REFUSED = "requests.exceptions.ConnectionError: Connection refused"
pytestmark = needs_browser
if BROWSER_MISSING is None:
    from playwright.sync_api import Page, expect


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, httpx.Client, Path]]:
    """A server whose retries wait ten minutes: a failed attempt leaves its job waiting."""
    settings = make_settings(tmp_path, api_keys=(KEY,), retry_base_delay_s=600)
    error = job_files(tmp_path) / "error.txt"
    error.write_text(REFUSED + "\n")
    with served_app(settings, api_key=KEY) as (url, client):
        yield url, client, error


@pytest.fixture
def page(open_page: PageOpener) -> Page:
    return open_page(api_key=KEY)


def _waiting(client: httpx.Client, job_id: int) -> dict[str, Any]:
    """The job once it waits for its next attempt (followed on its event stream)."""
    for kind, data in events(client, f"/job/{job_id}/events"):
        if kind == "status" and data.get("retry_at"):
            break
    job: dict[str, Any] = client.get(f"/job/{job_id}").raise_for_status().json()
    return job


def test_the_job_page_shows_attempts_and_the_next_try(
    page: Page, served: tuple[str, httpx.Client, Path]
) -> None:
    url, client, error = served
    body = {**fake_job("exit", FAKE_ERROR_FILE=str(error)), "max_attempts": 2}
    job_id = client.post("/job", json=body).raise_for_status().json()["job_id"]
    page.goto(f"{url}/#/job/{job_id}")  # open while it runs or waits: the card follows it
    job = _waiting(client, job_id)
    [attempt] = job["attempt_history"]
    expect(page.locator("#job-status")).to_have_text("Queued")
    expect(page.locator("#fact-retry-at")).to_be_visible()
    expect(page.locator("#attempts-retry-at")).to_contain_text("next attempt")
    row = page.locator('#attempts-table tr[data-attempt="1"]')
    expect(row).to_contain_text("Failed · retried")
    expect(row.locator("td").nth(4)).to_have_text("1")
    expect(row).to_contain_text(
        f"stdout {attempt['stdout_offset']} B · stderr {attempt['stderr_offset']} B"
    )
    expect(row).to_contain_text(REFUSED)
    page.locator("#stop-job").click()  # the wait ends: no next try, the attempt stays
    expect(page.locator("#job-status")).to_have_text("Stopped")
    expect(page.locator("#fact-retry-at")).to_have_count(0)
    expect(page.locator("#attempts-retry-at")).to_have_count(0)
    expect(page.locator("#attempts-table tbody tr")).to_have_count(1)


def test_a_job_with_one_attempt_shows_no_attempts_card(
    page: Page, served: tuple[str, httpx.Client, Path]
) -> None:
    url, client, _ = served
    job_id = client.post("/job", json=fake_job("env")).raise_for_status().json()["job_id"]
    for kind, _data in events(client, f"/job/{job_id}/events"):
        if kind == "end":
            break
    page.goto(f"{url}/#/job/{job_id}")
    expect(page.locator("#job-status")).to_have_text("Completed")
    expect(page.locator("#job-attempts")).to_be_hidden()
