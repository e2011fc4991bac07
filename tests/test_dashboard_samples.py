"""The dashboard's Samples page in headless Chromium, on a real lm-eval run with log_samples
(local-completions against the stub endpoint, which knows some answers and not others): task
choice, the filter and wrong-only selects, the search box and paging, each checked against
the samples file read here; a job without samples says how to get them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.harness import (
    BROWSER_MISSING,
    PageOpener,
    needs_browser,
    served_app,
    wait_finished,
)
from tests.conftest import DUMMY_JOB, job_files, make_settings
from tests.support.stub_openai import start_stub
from tests.test_samples import write_task

pytestmark = needs_browser
if BROWSER_MISSING is None:
    from playwright.sync_api import Page, expect


class Served:
    def __init__(self, url: str, data_dir: Path, logged: int, plain: int) -> None:
        self.url, self.data_dir, self.logged, self.plain = url, data_dir, logged, plain

    def records(self, task: str) -> list[dict[str, Any]]:
        folder = self.data_dir / "jobs" / str(self.logged)
        (path,) = folder.rglob(f"samples_{task}_*.jsonl")
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("dashboard-samples")
    stub = start_stub()
    logged = {
        "model": "local-completions",
        "model_args": {
            "model": "stub-model",
            "base_url": stub.completions_url,
            "tokenizer_backend": "remote",
        },
        "tasks": "samples_gen,tiny_mc",
        "include_path": str(write_task(job_files(root) / "tasks")),
        "log_samples": True,
    }
    with served_app(make_settings(root)) as (url, client):
        ids = []
        for body in (logged, DUMMY_JOB):
            response = client.post("/job", json=body)
            assert response.status_code == 200, response.text
            ids.append(response.json()["job_id"])
        for job_id in ids:
            assert wait_finished(client, job_id)["status"] == "Completed"
        yield Served(url, root / "data", *ids)
    stub.close()


@pytest.fixture
def page(open_page: PageOpener, served: Served) -> Page:
    return open_page()


DASH = "\N{EN DASH}"  # between the first and last number of a range


def cards(page: Page) -> Any:
    return page.locator("#samples-list article.sample")


def test_samples_page_filters_searches_and_pages(page: Page, served: Served) -> None:
    gen = served.records("samples_gen")
    page.goto(f"{served.url}/#/job/{served.logged}")
    page.click("#samples-link")
    expect(page).to_have_url(f"{served.url}/#/job/{served.logged}/samples")
    expect(page.locator("#samples-task")).to_have_value("samples_gen")  # the first, by name
    expect(page.locator("#samples-task option")).to_have_count(2)
    expect(page.locator("#samples-count")).to_contain_text(f"of {len(gen)}")
    first = cards(page).first
    expect(first.locator("pre.prompt")).to_contain_text(gen[0]["doc"]["question"])
    expect(first.locator(".target")).to_have_text(gen[0]["target"])
    expect(first.locator(".verdict")).to_have_text("✓ right")  # the stub knows 1 + 1

    page.select_option("#samples-filter", "strip")
    page.select_option("#samples-correct", "false")
    wrong = sorted(r["doc_id"] for r in gen if r["filter"] == "strip" and r["exact_match"] == 0)
    assert wrong and len(wrong) < len(gen) // 2
    expect(page.locator("#samples-count")).to_contain_text(f"of {len(wrong)}")
    assert shown_docs(page) == wrong[:20]
    assert set(cards(page).evaluate_all("els => els.map(e => e.dataset.verdict)")) == {"wrong"}

    page.select_option("#samples-correct", "")
    page.fill("#samples-query", "SECRET number 1")
    found = sorted(
        r["doc_id"]
        for r in gen
        if r["filter"] == "strip" and "secret number 1" in r["doc"]["question"].lower()
    )
    expect(cards(page)).to_have_count(len(found))
    assert shown_docs(page) == found

    page.select_option("#samples-task", "tiny_mc")  # another task: its own filters
    expect(page.locator("#samples-filter")).to_have_value("")
    expect(page.locator("#samples-count")).to_have_text("No sample matches")  # the search
    page.fill("#samples-query", "")
    expect(page.locator("#samples-count")).to_contain_text(f"of {len(served.records('tiny_mc'))}")


def shown_docs(page: Page) -> list[int]:
    return sorted(int(d) for d in cards(page).evaluate_all("els => els.map(e => e.dataset.doc)"))


def test_paging_walks_every_doc_once(page: Page, served: Served) -> None:
    mc = served.records("tiny_mc")
    page.goto(f"{served.url}/#/job/{served.logged}/samples?task=tiny_mc&limit=3")
    seen: list[int] = []
    for start in range(0, len(mc), 3):
        end = min(start + 3, len(mc))
        expect(page.locator("#samples-count")).to_have_text(f"{start + 1}{DASH}{end} of {len(mc)}")
        seen += [int(d) for d in cards(page).evaluate_all("els => els.map(e => e.dataset.doc)")]
        if end < len(mc):
            page.click("#samples-next")
    expect(page.locator("#samples-next")).to_be_disabled()
    assert sorted(seen) == sorted(r["doc_id"] for r in mc) and len(seen) == len(set(seen))
    page.click("#samples-prev")
    expect(page.locator("#samples-count")).to_have_text(f"4{DASH}6 of {len(mc)}")


def test_a_job_without_samples_says_how_to_get_them(page: Page, served: Served) -> None:
    page.goto(f"{served.url}/#/job/{served.plain}/samples")
    expect(page.locator("#samples-error")).to_contain_text("log_samples")
