"""The dashboard's task catalog in headless Chromium: the Tasks page, task suggestions and
their output types in the New-job form, and the dry-run report inline (real lm-eval catalog,
real server on a thread; see tests/browser/harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.harness import BROWSER_MISSING, PageOpener, ServerThread, needs_browser
from tests.conftest import TASKS_DIR, make_settings

pytestmark = needs_browser
if BROWSER_MISSING is None:
    from playwright.sync_api import Page, expect


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("dashboard-tasks")
    with ServerThread(make_settings(Path(root), check_tasks=True)) as server:
        yield server.url


@pytest.fixture
def page(open_page: PageOpener, url: str) -> Page:
    return open_page()


def test_tasks_page_searches_and_shows_a_config(page: Page, url: str) -> None:
    page.goto(url + "/#/tasks")
    expect(page.locator("#task-count")).to_contain_text(" of ")
    page.fill("#task-query", "arc_eas")
    link = page.locator('#task-rows a[data-task="arc_easy"]')
    expect(link).to_be_visible()
    row = page.locator("#task-rows tr", has=page.locator('a[data-task="arc_easy"]'))
    expect(row).to_contain_text("multiple_choice")
    link.click()
    expect(page.locator("#task-config")).to_contain_text("allenai/ai2_arc")
    page.select_option("#task-kind", "group")
    expect(page.locator('#task-rows a[data-task="arc_easy"]')).to_have_count(0)


def test_form_suggests_tasks_and_shows_the_dry_run_report(page: Page, url: str) -> None:
    page.goto(url + "/#/new")
    expect(page.locator("#job-form")).to_have_attribute("data-ready", "true")
    page.fill("#f-model", "dummy")
    page.fill("#f-include_path", str(TASKS_DIR))
    page.locator("#f-tasks").press_sequentially("arc_eas", delay=20)
    expect(page.locator('#task-suggestions option[value="arc_easy"]')).to_have_count(1)
    page.fill("#f-tasks", "arc_easy")
    page.locator("#f-tasks").dispatch_event("input")
    expect(page.locator('#task-info [data-task="arc_easy"]')).to_contain_text("multiple_choice")
    page.click("#dry-run-job")
    report = page.locator("#dry-run-report")
    expect(report).to_contain_text("Every check passes")
    expect(report.locator('[data-check="tasks"]')).to_have_attribute("data-ok", "true")
    page.fill("#f-tasks", "tiny_mcq")
    page.click("#submit-job")  # the dry run runs first, then the server refuses the job
    expect(report).to_contain_text("Some checks fail")
    expect(report.locator('[data-check="tasks"]')).to_have_attribute("data-ok", "false")
    expect(page.locator('[data-error-for="tasks"]')).to_contain_text("did you mean tiny_mc")
