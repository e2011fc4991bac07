"""The dashboard's Sweeps pages in headless Chromium: the list, a sweep's cells, its heatmap
(the baseline marked) and CSV, and stop / resume / delete from the page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.harness import BROWSER_MISSING, PageOpener, needs_browser, served_app, wait_idle
from tests.conftest import DUMMY_JOB, fake_job, make_settings

KEY = "dashboard-sweeps-key"
pytestmark = needs_browser
if BROWSER_MISSING is None:
    from playwright.sync_api import Page, expect


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, httpx.Client]]:
    root = tmp_path_factory.mktemp("dashboard-sweeps")
    settings = make_settings(root, api_keys=(KEY,), max_concurrency=2)
    with served_app(settings, api_key=KEY) as served:
        yield served


@pytest.fixture
def page(open_page: PageOpener, served: tuple[str, httpx.Client]) -> Page:
    return open_page(api_key=KEY)


def _sweep(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/sweeps", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def test_a_real_sweep_page_with_heatmap_and_csv(
    page: Page, served: tuple[str, httpx.Client], tmp_path: Path
) -> None:
    url, client = served
    body = {
        "name": "few-shot",
        "base": {**DUMMY_JOB, "tasks": ["tiny_mc"]},
        "matrix": {"num_fewshot": [0, 1]},
        "baseline": "num_fewshot=1",
    }
    submitted = _sweep(client, body)
    sweep_id = submitted["sweep_id"]
    wait_idle(client)
    page.goto(f"{url}/#/sweeps")
    row = page.locator(f'#sweeps-table tr[data-sweep-id="{sweep_id}"]')
    expect(row).to_contain_text("few-shot")
    expect(row).to_contain_text("2/2 completed")
    row.locator("a").click()
    expect(page).to_have_url(f"{url}/#/sweep/{sweep_id}")
    expect(page.locator("#sweep-status")).to_have_text("Completed")
    expect(page.locator("#sweep-progress")).to_have_attribute("aria-valuenow", "100")
    cells = page.locator("#sweep-cells tbody tr")
    expect(cells).to_have_count(2)
    expect(cells.nth(1)).to_contain_text("baseline")
    expect(cells.nth(0).locator("a")).to_have_text(f"#{submitted['job_ids'][0]}")
    cells.nth(0).locator("a").click()  # the cell's job page links back to its sweep
    expect(page.locator("#job-sweep")).to_have_text(f"#{sweep_id} · num_fewshot=0")
    page.locator("#job-sweep").click()
    expect(page).to_have_url(f"{url}/#/sweep/{sweep_id}")
    table = client.get(f"/sweeps/{sweep_id}/results").json()
    [result] = table["rows"]
    heat = page.locator("#sweep-heatmap td.heat")
    expect(heat).to_have_count(2)
    for index, key in enumerate(["num_fewshot=0", "num_fewshot=1"]):
        expect(heat.nth(index)).to_have_attribute("data-value", str(result["values"][key]))
    expect(page.locator("#sweep-heatmap th.baseline")).to_have_text("★ num_fewshot=1")
    expect(page.locator("#sweep-heatmap td.baseline")).to_have_count(1)
    expect(page.locator("#sweep-results tbody tr")).to_contain_text("tiny_mc")
    with page.expect_download() as download:
        page.locator("#sweep-csv").click()
    saved = tmp_path / "sweep.csv"
    download.value.save_as(saved)
    expected = client.get(f"/sweeps/{sweep_id}/results", params={"format": "csv"}).content
    assert saved.read_bytes() == expected


def test_stop_resume_and_delete_a_sweep_from_its_page(
    page: Page, served: tuple[str, httpx.Client]
) -> None:
    url, client = served
    body: dict[str, Any] = {
        "name": "blocking",
        "base": fake_job("block"),
        "matrix": {"limit": [1, 2, 3]},
        "max_parallel": 1,
    }
    submitted = _sweep(client, body)
    sweep_id = submitted["sweep_id"]
    page.goto(f"{url}/#/sweep/{sweep_id}")
    expect(page.locator("#sweep-status")).to_have_text("Running")
    expect(page.locator('#sweep-cells tr[data-status="Running"]')).to_have_count(1)
    expect(page.locator('#sweep-cells tr[data-status="Queued"]')).to_have_count(2)
    page.locator("#sweep-stop").click()
    expect(page.locator("#sweep-status")).to_have_text("Stopped")
    expect(page.locator("#sweep-stop")).to_be_hidden()
    page.locator("#sweep-resume").click()
    expect(page.locator('#sweep-cells tr[data-status="Running"]')).to_have_count(1)
    new_ids = {c["job_id"] for c in client.get(f"/sweeps/{sweep_id}").json()["cells"]}
    assert not new_ids & set(submitted["job_ids"])
    page.locator("#sweep-delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page).to_have_url(f"{url}/#/sweeps")
    assert client.get(f"/sweeps/{sweep_id}").status_code == 404
    expect(page.locator(f'#sweeps-table tr[data-sweep-id="{sweep_id}"]')).to_have_count(0)


def test_a_deleted_cell_shows_as_deleted_and_resume_runs_it_again(
    page: Page, served: tuple[str, httpx.Client]
) -> None:
    url, client = served
    body = {"name": "pruned", "base": fake_job("env"), "cells": [{"key": "a"}, {"key": "b"}]}
    submitted = _sweep(client, body)
    sweep_id = submitted["sweep_id"]
    wait_idle(client)
    client.delete(f"/job/{submitted['job_ids'][0]}").raise_for_status()
    page.goto(f"{url}/#/sweep/{sweep_id}")
    deleted = page.locator('#sweep-cells tr[data-status="deleted"]')
    expect(deleted).to_have_count(1)
    expect(deleted).to_contain_text("a")
    expect(page.locator('#sweep-cells tr[data-status="Completed"]')).to_have_count(1)
    page.locator("#sweep-resume").click()
    expect(page.locator('#sweep-cells tr[data-status="Completed"]')).to_have_count(2)
    cells = client.get(f"/sweeps/{sweep_id}").json()["cells"]
    assert cells[0]["job_id"] not in submitted["job_ids"]
    assert cells[1]["job_id"] == submitted["job_ids"][1]
