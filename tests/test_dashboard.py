"""The dashboard: served at / without a key, fully offline, and driven in headless Chromium.

The browser tests run one real server (on its own thread, with an API key so that every call
the page makes proves the key handling) and one browser for the whole module, and share the
two real lm-eval runs between steps to stay fast. Screenshots go to DASHBOARD_SCREENSHOTS
when it is set (``scripts/screenshots.py`` sets it to docs/screenshots), else to a temp dir.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lmeval_trio.http.dashboard import CONTENT_SECURITY_POLICY
from tests.browser.harness import (
    BROWSER_MISSING,
    PageOpener,
    needs_browser,
    served_app,
    wait_finished,
    wait_idle,
)
from tests.conftest import (
    DUMMY_JOB,
    FAKE_LM_EVAL,
    TASKS_DIR,
    fake_job,
    job_files,
    make_settings,
    start_server,
)

STATIC = Path(__file__).parents[1] / "lmeval_trio" / "http" / "static" / "dashboard"
KEY = "dashboard-test-key"
DASH = "\N{EN DASH}"  # the pager reads "1<en dash>25 of 40"
REAL_RUN_TIMEOUT_MS = 120_000


# ---- served and offline (no browser needed) ----------------------------------------------------


async def test_page_is_open_while_the_api_needs_the_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys=(KEY,))
    async with trio.open_nursery() as nursery:
        url, shutdown, _app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url) as client:
            page = await client.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert "default-src 'self'" in CONTENT_SECURITY_POLICY
            for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
                assert (await client.get(asset)).status_code == 200, asset
            assert (await client.get("/static/dashboard/js/app.js")).status_code == 200
            assert (await client.get("/jobs")).status_code == 401
            assert "/" not in (await client.get("/openapi.json")).json()["paths"]
        shutdown.set()


def test_dashboard_files_reference_nothing_outside_the_server() -> None:
    """Offline means no CDN: every import and URL in the page's files is same-origin."""
    for path in STATIC.rglob("*"):
        if path.suffix in {".html", ".js", ".css"}:
            text = path.read_text(encoding="utf-8")
            external = re.findall(
                r"""(?:src=|href=|url\(|from |import\()\s*["']?(?:https?:)?//""", text
            )
            assert not external, f"{path.name} loads something from another origin"
            for module in re.findall(r'from "([^"]+)"', text):
                assert module.startswith("./"), f"{path.name} imports {module}"
                assert (path.parent / module).exists(), f"{path.name} imports missing {module}"


# ---- browser tests ---------------------------------------------------------------------------

if BROWSER_MISSING is None:
    from playwright.sync_api import Page, expect


@dataclass
class Dash:
    """The shared server, an API client with the key, and jobs that steps share."""

    url: str
    client: httpx.Client
    shots: Path
    fifo_dir: Path
    seeded_job: int  # a real dummy run (seed 7) started with the module, for the comparison
    form_job: int | None = None  # the real run submitted from the form
    extra: dict[str, Any] = field(default_factory=dict)

    def shot(self, page: Page, name: str, *, full_page: bool = False) -> None:
        page.evaluate("window.scrollTo(0, 0)")  # else the sticky top bar lands mid-page
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=full_page)

    def submit(self, body: dict[str, Any]) -> int:
        response = self.client.post("/job", json=body)
        assert response.status_code == 200, response.text
        job_id: int = response.json()["job_id"]
        return job_id


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    root = tmp_path_factory.mktemp("dashboard")
    shots = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or root / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    settings = make_settings(root, api_keys=(KEY,), max_concurrency=4)
    with served_app(settings, api_key=KEY) as (url, client):
        response = client.post("/job", json={**DUMMY_JOB, "seed": "7"})
        assert response.status_code == 200, response.text
        yield Dash(url, client, shots, root, seeded_job=response.json()["job_id"])


@pytest.fixture
def page(open_page: PageOpener, dash: Dash) -> Page:
    return open_page(api_key=KEY)


@pytest.fixture
def keyless_page(open_page: PageOpener, dash: Dash) -> Page:
    return open_page()


def _field_error(page: Page, name: str) -> Any:
    return page.locator(f'[data-error-for="{name}"]')


@needs_browser
def test_key_prompt_then_errors_beside_their_fields(keyless_page: Page, dash: Dash) -> None:
    page = keyless_page
    page.goto(dash.url + "/")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#key-reason")).to_contain_text("requires an API key")
    page.fill("#key-input", "wrong-key")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-reason")).to_contain_text("rejected")
    page.fill("#key-input", KEY)
    page.click("#key-form button[type=submit]")
    expect(dialog).to_be_hidden()
    expect(page.locator("#jobs-table")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('lmeval-trio.api-key')") == KEY

    page.click("nav >> text=New job")
    page.fill("#f-tasks", "tiny_mc")
    page.fill("#f-limit", "abc")
    page.click("#submit-job")
    expect(_field_error(page, "limit")).to_contain_text("valid number")
    expect(page.locator('[data-field="limit"]')).to_have_class(re.compile(r"\binvalid\b"))
    expect(_field_error(page, "tasks")).to_be_empty()
    expect(page.locator("#form-error")).to_contain_text("limit")
    dash.shot(page, "new-job-validation", full_page=True)

    # A policy refusal (403 naming the field) lands beside that field too.
    page.fill("#f-limit", "2")
    page.fill("#f-include_path", "/etc")
    page.click("#submit-job")
    expect(_field_error(page, "include_path")).to_contain_text("policy")
    expect(_field_error(page, "limit")).to_be_empty()
    assert dash.client.get("/jobs").json()["total"] == 1  # only the seeded job: nothing queued


@needs_browser
def test_submit_real_job_from_form_and_watch_it_complete(page: Page, dash: Dash) -> None:
    page.goto(dash.url + "/#/new")
    page.fill("#f-model", "dummy")
    page.fill("#f-model_args", "pretrained=dummy")
    page.fill("#f-tasks", "tiny_mc,tiny_gen")
    page.fill("#f-include_path", str(TASKS_DIR))
    page.check("#f-log_samples")
    dash.shot(page, "new-job")
    page.click("#submit-job")
    expect(page).to_have_url(re.compile(r"#/job/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    dash.form_job = job_id

    bar = page.locator("#job-progress")
    expect(bar).to_be_visible()
    # Record every value the bar shows, as the page receives them (no reloads).
    page.evaluate(
        """() => {
            const bar = document.querySelector('#job-progress');
            window.seen = [bar.getAttribute('aria-valuenow')];
            new MutationObserver(() => window.seen.push(bar.getAttribute('aria-valuenow')))
                .observe(bar, {attributes: true, attributeFilter: ['aria-valuenow']});
        }"""
    )
    expect(page.locator("#job-status")).to_have_text("Completed", timeout=REAL_RUN_TIMEOUT_MS)
    expect(bar).to_have_attribute("aria-valuenow", "100")
    seen = [int(v) for v in page.evaluate("window.seen")]
    assert seen[0] < 100 and seen[-1] == 100 and len(set(seen)) >= 2, seen
    expect(page.locator('[data-phase="loglikelihood"] [role=progressbar]')).to_have_attribute(
        "aria-valuenow", "100"
    )
    expect(page.locator('[data-phase="generate_until"]')).to_contain_text("6/6")
    expect(page.locator("#log-stderr")).to_contain_text("Running loglikelihood requests")

    results = page.locator("#results-table")
    expect(results.locator("tbody tr")).to_have_count(2)
    expect(results.locator("tbody tr").first).to_contain_text("tiny_mc")
    expect(results).to_contain_text("exact_match")
    expect(results).to_contain_text("±")
    artifacts = page.locator("#job-artifacts")
    expect(artifacts.locator("a", has_text=re.compile(r"results_.*\.json"))).to_have_count(1)
    samples_link = artifacts.locator("a", has_text=re.compile(r"samples_tiny_mc_.*\.jsonl"))
    expect(samples_link).to_have_count(1)
    samples = page.locator("#job-samples")
    expect(samples.locator(".sample")).to_have_count(5)
    expect(samples.locator(".sample").first).to_contain_text("doc 0")
    samples.locator('[data-task="tiny_mc"]').click()
    expect(samples.locator(".sample").first).to_contain_text("What is 2 + 2?")

    # Artifact links work with the key (fetched with the Authorization header).
    with page.expect_download() as download:
        artifacts.locator("a", has_text=re.compile(r"results_.*\.json")).click()
    data = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert "tiny_mc" in data["results"]
    dash.shot(page, "job-completed", full_page=True)


@needs_browser
def test_progress_moves_live_in_the_table_and_on_the_job_page(page: Page, dash: Dash) -> None:
    gate = job_files(dash.fifo_dir) / "gate"
    os.mkfifo(gate)
    job_id = dash.submit(fake_job("bars", FAKE_TOTAL="4", FAKE_GATE=str(gate)))
    writer = os.open(gate, os.O_RDWR)  # O_RDWR: opening does not wait for the reader
    try:
        page.goto(dash.url + "/")
        page.evaluate("window.sameDocument = true")
        row = page.locator(f'#jobs-table tr[data-job-id="{job_id}"]')
        expect(row.locator(".badge")).to_have_text("Running")
        expect(row.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "0")
        os.write(writer, b"go\n")
        expect(row.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "25")
        expect(row.locator(".progress-meta")).to_contain_text("loglikelihood 1/4")
        expect(row.locator(".progress-meta")).to_contain_text("ETA")
        assert page.evaluate("window.sameDocument") is True  # updated in place, not reloaded

        row.locator("td.id a").click()
        bar = page.locator("#job-progress")
        expect(bar).to_have_attribute("aria-valuenow", "25")
        os.write(writer, b"go\n")
        expect(bar).to_have_attribute("aria-valuenow", "50")
        phase = page.locator('[data-phase="loglikelihood"]')
        expect(phase).to_contain_text("2/4")
        expect(phase).to_contain_text("it/s")
        expect(phase).to_contain_text("ETA")
        dash.shot(page, "job-running")
        os.write(writer, b"go\ngo\n")
        expect(page.locator("#job-status")).to_have_text("Completed")
        expect(bar).to_have_attribute("aria-valuenow", "100")
    finally:
        os.close(writer)


@needs_browser
def test_stop_resume_and_delete_from_the_job_page(page: Page, dash: Dash) -> None:
    page.goto(dash.url + "/#/new")
    expect(page.locator("#job-form[data-ready=true]")).to_be_visible()
    page.click("#tab-json")
    body = {
        "model": "dummy",
        "tasks": "fake",
        "lm_eval_path": str(FAKE_LM_EVAL),
        "env_vars": {"FAKE_MODE": "block"},
    }
    page.fill("#json-editor", json.dumps(body, indent=2))
    expect(page.locator("#json-status")).to_have_text("Valid JSON")
    page.click("#submit-job")
    expect(page).to_have_url(re.compile(r"#/job/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("#job-status")).to_have_text("Running")
    page.click("#tab-stdout")
    expect(page.locator("#log-stdout")).to_contain_text("ready")

    page.click("#stop-job")
    expect(page.locator("#job-status")).to_have_text("Stopped")
    expect(page.locator("#stop-job")).to_be_hidden()
    assert dash.client.get(f"/job/{job_id}").json()["status"] == "Stopped"

    page.click("#resume-job")
    expect(page).not_to_have_url(re.compile(rf"#/job/{job_id}$"))
    resumed = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("#job-status")).to_have_text("Running")
    expect(page.locator(".facts")).to_contain_text(f"#{job_id}")  # "Resumes #N"

    page.click("#delete-job")
    confirm = page.get_by_role("dialog", name=f"Delete job #{resumed}?")
    expect(confirm).to_be_visible()
    confirm.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(r"#/$"))
    expect(page.locator(f'#jobs-table tr[data-job-id="{job_id}"]')).to_be_visible()
    expect(page.locator(f'#jobs-table tr[data-job-id="{resumed}"]')).to_have_count(0)
    assert dash.client.get(f"/job/{resumed}").status_code == 404


@needs_browser
def test_compare_two_real_jobs_as_chart_table_and_csv(page: Page, dash: Dash) -> None:
    if dash.form_job is None:  # the form test did not run (-k): start the second run here
        dash.form_job = dash.submit({**DUMMY_JOB, "log_samples": True})
    first, second = sorted((dash.seeded_job, dash.form_job))
    for job_id in (first, second):
        assert wait_finished(dash.client, job_id)["status"] == "Completed"

    page.goto(dash.url + "/")
    for job_id in (first, second):
        page.check(f'#jobs-table tr[data-job-id="{job_id}"] input[type=checkbox]')
    expect(page.locator("#compare-selected")).to_be_enabled()
    dash.shot(page, "jobs")
    page.click("#compare-selected")
    expect(page).to_have_url(re.compile(rf"#/compare\?ids={first},{second}$"))

    charts = page.locator("#compare-charts figure")
    expect(charts).to_have_count(2)  # acc and exact_match
    acc = page.locator('#compare-charts figure[data-metric="acc"]')
    expect(acc.locator("g.bar")).to_have_count(2)
    expect(acc.locator("g.bar line.err")).to_have_count(3)  # the seed-7 run: stderr > 0
    expect(page.locator("#compare-legend")).to_contain_text(f"#{dash.seeded_job} dummy")
    table = page.locator("#compare-table")
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table.locator("tbody tr").first).to_contain_text("0.3750")
    dash.shot(page, "compare", full_page=True)

    with page.expect_download() as download:
        page.click("#export-csv")
    assert download.value.suggested_filename == f"lmeval-compare-{first}-{second}.csv"
    with open(download.value.path(), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["task"], r["metric"], r["filter"]) for r in rows] == [
        ("tiny_mc", "acc", "none"),
        ("tiny_gen", "exact_match", "strip"),
    ]
    seeded = rows[0][f"job_{dash.seeded_job}_value"]
    assert float(seeded) == pytest.approx(0.375)
    assert float(rows[0][f"job_{dash.seeded_job}_stderr"]) > 0


@needs_browser
def test_filter_by_status_and_page_through_jobs(page: Page, dash: Dash) -> None:
    for _ in range(26):
        dash.submit(fake_job("env"))
    wait_idle(dash.client)
    total = dash.client.get("/jobs").json()["total"]
    assert total > 26

    page.goto(dash.url + "/")
    rows = page.locator("#jobs-table tbody tr")
    expect(rows).to_have_count(25)
    expect(page.locator(".pager")).to_contain_text(f"1{DASH}25 of {total}")
    newest = max(j["job_id"] for j in dash.client.get(f"/jobs?offset={total - 1}").json()["jobs"])
    expect(rows.first).to_have_attribute("data-job-id", str(newest))  # newest first
    page.click("text=Older →")
    expect(rows).to_have_count(total - 25)
    expect(page.locator(".pager")).to_contain_text(f"26{DASH}{total} of {total}")
    expect(rows.last).to_have_attribute("data-job-id", str(dash.seeded_job))

    page.click('.segmented [data-status="Stopped"]')
    expect(page).to_have_url(re.compile(r"status=Stopped"))
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".badge")).to_have_text("Stopped")
    expect(page.locator('.segmented [data-status="Completed"] .count')).to_have_text(str(total - 1))


@needs_browser
def test_swagger_ui_renders_offline(keyless_page: Page, dash: Dash) -> None:
    """/docs draws every route from local assets only (no CDN: this machine has no internet)."""
    requested: list[str] = []
    keyless_page.on("request", lambda request: requested.append(request.url))
    keyless_page.goto(f"{dash.url}/docs")
    paths = keyless_page.locator(".opblock-summary-path")
    expect(paths.first).to_be_visible(timeout=30_000)
    shown = set(paths.all_inner_texts())
    assert {"/job", "/jobs", "/job/{job_id}", "/job/{job_id}/results"} <= {
        p.replace("\u200b", "") for p in shown
    }
    assert requested and all(url.startswith(dash.url) for url in requested), requested
