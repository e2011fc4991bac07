"""The dashboard's Compare page in headless Chromium, on real lm-eval runs against the stub
(answer patterns make the scores differ): the significance table with its marks, the
mismatches, the paired comparison, the flipped documents side by side (paged), the report."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.harness import (
    BROWSER_MISSING,
    PageOpener,
    needs_browser,
    served_app,
    wait_finished,
)
from tests.conftest import make_settings
from tests.support.stub_openai import start_stub
from tests.test_compare import COMPARE_TASKS, cmp_job

KEY = "dashboard-compare-key"
pytestmark = needs_browser
if BROWSER_MISSING is None:
    from playwright.sync_api import Page, expect


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[int]]]:
    """Jobs: 80% right, 50% right, and 80% right on the first 20 docs only (a mismatch)."""
    root = tmp_path_factory.mktemp("dashboard-compare")
    # The pre-flight would hold the stub's answer-pattern models (see test_compare.py).
    settings = make_settings(root, api_keys=(KEY,), max_concurrency=2, preflight="off")
    stub = start_stub(tasks_dir=COMPARE_TASKS)
    bodies: list[dict[str, Any]] = [
        cmp_job(stub, "stub-wrong-5-0"),
        cmp_job(stub, "stub-wrong-2-0"),
        cmp_job(stub, "stub-wrong-5-0", limit=20),
    ]
    try:
        with served_app(settings, api_key=KEY) as (url, client):
            ids = [
                client.post("/job", json=body).raise_for_status().json()["job_id"]
                for body in bodies
            ]
            for job_id in ids:
                assert wait_finished(client, job_id)["status"] == "Completed"
            yield url, ids
    finally:
        stub.close()


@pytest.fixture
def page(open_page: PageOpener, compared: tuple[str, list[int]]) -> Page:
    return open_page(api_key=KEY)


def test_compare_page_marks_significance_mismatches_and_flips(
    page: Page, compared: tuple[str, list[int]]
) -> None:
    url, (a, b, limited) = compared
    page.goto(f"{url}/#/compare?ids={a},{b},{limited}")
    row = page.locator('#sig-table tr[data-task="cmp_mc"][data-metric="acc"]')
    marks = row.locator("td.sig-mark")
    expect(marks.nth(0)).to_have_text("✔ significant")  # 0.8 vs 0.5 on 40 docs
    expect(marks.nth(1)).to_have_text("⚠ not comparable")  # limit 20
    mismatches = page.locator("#sig-mismatches")
    expect(mismatches).to_contain_text("limit")
    expect(mismatches).to_contain_text("sample_set")
    paired = page.locator("#sig-paired tbody tr")
    expect(paired).to_have_count(2)
    expect(paired.nth(0)).to_contain_text("16")  # correct -> wrong
    paired.nth(0).get_by_role("button", name="Show flips").click()
    cards = page.locator("#sig-flips .flip")
    expect(cards).to_have_count(10)
    expect(page.locator("#sig-flips-range")).to_have_text("1\u201310 of 20")
    first = cards.nth(0)
    expect(first).to_contain_text("compare item")  # the prompt
    expect(first.locator(".flip-side")).to_have_count(2)
    page.locator("#sig-flips").get_by_role("button", name="Next →").click()
    expect(page.locator("#sig-flips-range")).to_have_text("11\u201320 of 20")
    with page.expect_download() as download:
        page.get_by_text("Download report (HTML)").click()
    assert download.value.suggested_filename == f"lmeval-compare-{a}-{b}-{limited}.html"
    page.select_option("#sig-baseline", str(b))
    expect(page.locator("#sig-table thead")).to_contain_text(f"#{b} (baseline)")
