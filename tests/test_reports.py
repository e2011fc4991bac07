"""The HTML reports (GET /job/{id}/report, GET /compare/report) of real dummy runs whose task
name and model arguments carry markup: rendered in headless Chromium, nothing of it runs,
and no request leaves the page (the report is self-contained)."""

from __future__ import annotations

import shutil
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
from tests.conftest import TASKS_DIR, job_files, make_settings

pytestmark = needs_browser
if BROWSER_MISSING is None:
    from playwright.sync_api import Dialog

EVIL_TASK = "evil<img src=x onerror=alert(1)>"
EVIL_ARG = "</style><script>alert(2)</script>"


def evil_tasks(tmp_path: Path) -> Path:
    """tiny_mc renamed: a task whose name is markup."""
    folder = job_files(tmp_path) / "evil-tasks"
    folder.mkdir()
    for name in ("tiny_data.py", "tiny_mc.jsonl"):
        shutil.copy(TASKS_DIR / name, folder / name)
    text = (TASKS_DIR / "tiny_mc.yaml").read_text()
    (folder / "evil.yaml").write_text(text.replace("task: tiny_mc", f"task: '{EVIL_TASK}'"))
    return folder


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[int]]]:
    root = tmp_path_factory.mktemp("reports")
    settings = make_settings(root, max_concurrency=2)
    body: dict[str, Any] = {
        "model": "dummy",
        "model_args": f"pretrained={EVIL_ARG}",
        "tasks": EVIL_TASK,
        "include_path": str(evil_tasks(root)),
        "log_samples": True,
    }
    with served_app(settings) as (url, client):
        ids = []
        for shots in (0, 1):
            response = client.post("/job", json={**body, "num_fewshot": shots})
            assert response.status_code == 200, response.text
            ids.append(response.json()["job_id"])
        for job_id in ids:
            job = wait_finished(client, job_id)
            assert job["status"] == "Completed", job["reason"]
        yield url, ids


def render(open_page: PageOpener, url: str) -> dict[str, Any]:
    """Open ``url`` in Chromium; every request the page made, dialogs, and what it shows."""
    page = open_page()
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda request: requests.append(request.url))

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    response = page.goto(url)
    assert response is not None and response.status == 200
    page.wait_for_load_state("networkidle")
    return {
        "requests": requests,
        "dialogs": dialogs,
        "text": page.inner_text("body"),
        "scripts": page.locator("script").count(),
        "images": page.locator("img").count(),
        "bars": page.locator("svg rect").count(),
        "policy": response.headers.get("content-security-policy", ""),
    }


def test_job_report_is_self_contained_and_escaped(
    open_page: PageOpener, reports: tuple[str, list[int]]
) -> None:
    url, (first, _second) = reports
    seen = render(open_page, f"{url}/job/{first}/report")
    assert seen["requests"] == [f"{url}/job/{first}/report"]  # nothing but the page itself
    assert seen["dialogs"] == [] and seen["scripts"] == 0 and seen["images"] == 0
    assert EVIL_TASK in seen["text"] and EVIL_ARG in seen["text"]  # shown as text
    assert seen["bars"] >= 1 and "default-src 'none'" in seen["policy"]


def test_compare_report_is_self_contained_and_escaped(
    open_page: PageOpener, reports: tuple[str, list[int]]
) -> None:
    url, (first, second) = reports
    page_url = f"{url}/compare/report?jobs={first},{second}"
    seen = render(open_page, page_url)
    assert seen["requests"] == [page_url]
    assert seen["dialogs"] == [] and seen["scripts"] == 0 and seen["images"] == 0
    assert EVIL_TASK in seen["text"] and EVIL_ARG in seen["text"]
    assert "n_shot" in seen["text"] and "Paired comparisons" in seen["text"]
    assert seen["bars"] >= 2 and "default-src 'none'" in seen["policy"]
