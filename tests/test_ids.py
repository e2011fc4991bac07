"""Ids and query integers are ASCII digits only; odd paths get JSON errors, never redirects.

Python's int() and ``\\d`` accept every script's decimal digits, so without care
``/job/٣`` is job 3 and a DELETE so spelled deletes it. Every route with a job id is found
from the app's own URL map, so a route added later is attacked too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

from tests.conftest import make_settings, start_server
from tests.support import raw_http

# The digit 3 (and 33) in other scripts: Arabic-Indic, fullwidth, Devanagari, Bengali,
# mathematical bold, Thai; and things int() takes that are no plain digits.
FOREIGN_THREES = [
    "\u0663",
    "\uff13",
    "\u0969",
    "\u09e9",
    "\U0001d7d1",
    "\u0e53",
    "\uff13\uff13",
    "3\u0663",
]
NOT_DIGITS = ["+3", "-3", " 3", "3 ", "3_0", "3.0", "0x3", "3e0", "", "3\u200b"]


@pytest.fixture
async def judged(tmp_path: Path) -> AsyncIterator[tuple[str, httpx.AsyncClient, Any]]:
    """A server with three queued jobs (ids 1, 2, 3) that never start."""
    settings = make_settings(tmp_path, max_concurrency=0)
    async with trio.open_nursery() as nursery:
        url, shutdown, app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for _ in range(3):
                response = await client.post("/job", json={"model": "dummy", "tasks": "tiny_mc"})
                assert response.status_code == 200, response.text
            yield url, client, app
        shutdown.set()


def id_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path template with {id}) for every route that takes a job id."""
    found = []
    for rule in app.url_map.iter_rules():
        if "<job_id>" not in rule.rule and "job_id" not in rule.arguments:
            continue
        template = rule.rule.replace("<int:job_id>", "{id}").replace("<path:name>", "stdout.log")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((method, template))
    return found


async def test_foreign_digits_name_no_job(
    judged: tuple[str, httpx.AsyncClient, Any],
) -> None:
    url, client, app = judged
    routes = id_routes(app)
    assert len(routes) >= 10, routes
    for method, template in routes:
        for spelling in FOREIGN_THREES + NOT_DIGITS:
            target = template.format(id=quote(spelling))
            response = await raw_http.request(url, method, target)
            assert response.status in (404, 405), (method, target, response.status)
            assert response.headers["content-type"] == "application/json", target
    listing = (await client.get("/jobs")).json()
    assert [job["job_id"] for job in listing["jobs"]] == [1, 2, 3]  # nothing deleted or stopped
    assert {job["status"] for job in listing["jobs"]} == {"Queued"}


async def test_ascii_ids_still_work(judged: tuple[str, httpx.AsyncClient, Any]) -> None:
    _url, client, _app = judged
    assert (await client.get("/job/0003")).json()["job_id"] == 3  # leading zeros: still 3
    for beyond in ("9" * 19, "9" * 20, "9" * 21, "9" * 5000):
        response = await client.get(f"/job/{beyond}")
        assert response.status_code == 404 and response.json()["detail"], beyond
    assert (await client.delete("/job/3")).status_code == 200
    assert (await client.get("/job/3")).status_code == 404


QUERY_INTS = [
    ("/jobs", "limit"),
    ("/jobs", "offset"),
    ("/job/1/logs", "tail"),
    ("/job/1/logs", "offset"),
    ("/job/1/logs", "limit"),
]


async def test_query_integers_are_ascii_digits(
    judged: tuple[str, httpx.AsyncClient, Any],
) -> None:
    _url, client, _app = judged
    for path, name in QUERY_INTS:
        for raw in [*FOREIGN_THREES, *NOT_DIGITS[:-2], "1" * 30]:
            response = await client.get(path, params={name: raw})
            assert response.status_code == 422, (path, name, raw, response.text)
            detail = response.json()["detail"][0]
            assert detail["loc"] == ["query", name], detail
        assert (await client.get(path, params={name: "2"})).status_code == 200


async def test_last_event_id_offsets_are_ascii_digits(
    judged: tuple[str, httpx.AsyncClient, Any],
) -> None:
    url, _client, _app = judged
    for raw in ("\u0663-0", "0-\uff13", "+1-0", "1-0-0", "\u00b2-0", "-"):
        target = f"/job/1/events?last_event_id={quote(raw)}"
        response = await raw_http.request(url, "GET", target)
        assert response.status == 422, (raw, response.status, response.body)
        assert response.json()["detail"][0]["loc"] == ["header", "Last-Event-ID"]


ODD_PATHS = [
    "/job/1/artifacts//stdout.log",
    "/job/1//artifacts",
    "/job/1/artifacts/",
    "/job/1/",
    "/jobs/",
    "/job//1",
    "/job/1/artifacts/./stdout.log",
    "/job/1/artifacts/../logs",
    "/job/1/artifacts/%2e%2e/%2e%2e/jobs.db",
    "/job/1/artifacts/..%2F..%2Fjobs.db",
    "/job/1/artifacts/%2Fetc%2Fpasswd",
    "/job/1/artifacts/stdout.log/",
    "/job/1/artifacts/stdout.log%2F",
    "/healthz/",
    "/docs/",
]


async def test_odd_paths_get_json_errors_not_redirects(
    judged: tuple[str, httpx.AsyncClient, Any],
) -> None:
    url, _client, _app = judged
    for target in ODD_PATHS:
        for method in ("GET", "DELETE", "POST"):
            response = await raw_http.request(url, method, target)
            assert 400 <= response.status < 500, (method, target, response.status)
            assert "location" not in response.headers, (target, response.headers)
            assert response.headers["content-type"] == "application/json", target
            assert response.json()["detail"], target
