"""Authentication fails closed and cannot be outwaited: attacks on the key sources and on
connections held open by bodies that never finish."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lmeval_trio.config import Settings, SettingsError
from lmeval_trio.policy import budget as admission
from tests.conftest import LOAD_SERVED_APP, SUPPORT, fake_job, make_settings, start_server
from tests.support import raw_http

KEY = "key-for-the-trust-tests"
BLANK_KEY_VALUES = ["", " ", ",", " , ", ",,,", "\t,\n", "[]", '[""]', '[" ", ""]']


@pytest.mark.parametrize("raw", BLANK_KEY_VALUES)
def test_a_set_but_empty_key_variable_is_a_start_error(raw: str) -> None:
    with pytest.raises(SettingsError, match="LMEVAL_API_KEYS is set but holds no key"):
        Settings.from_env({"LMEVAL_API_KEYS": raw})


@pytest.mark.parametrize("content", ["", "\n", "   \n\t\n", "\r\n \r\n"])
def test_an_empty_key_file_is_a_start_error(tmp_path: Path, content: str) -> None:
    keys = tmp_path / "keys"
    keys.write_text(content)
    with pytest.raises(SettingsError, match=r"LMEVAL_API_KEYS_FILE: .* holds no key"):
        Settings.from_env({"LMEVAL_API_KEYS_FILE": str(keys)})


def test_an_unreadable_key_file_is_a_start_error(tmp_path: Path) -> None:
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00key")
    refusals = {
        tmp_path / "missing": "is not a file",  # judged with the other path settings
        tmp_path: "is not a file",
        tmp_path / "binary": "cannot read",
    }
    for path, why in refusals.items():
        with pytest.raises(SettingsError, match=f"LMEVAL_API_KEYS_FILE: .*{why}"):
            Settings.from_env({"LMEVAL_API_KEYS_FILE": str(path)})


def test_blank_entries_are_no_keys(tmp_path: Path) -> None:
    settings = Settings.from_env({"LMEVAL_API_KEYS": " , a-key ,, other "})
    assert settings.all_api_keys() == {"a-key", "other"}
    with pytest.raises(SettingsError, match="holds no key"):
        make_settings(tmp_path, api_keys=("", "  "))


@pytest.mark.parametrize("form", sorted(LOAD_SERVED_APP))
def test_the_served_app_refuses_to_start_with_an_empty_key_source(
    tmp_path: Path, form: str
) -> None:
    """The real entry point (what hypercorn imports) exits 2 with the reason, starting
    nothing; no open server ever listens."""
    env = {**os.environ, "LMEVAL_DATA_DIR": str(tmp_path / "data"), "LMEVAL_API_KEYS": " , "}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SERVED_APP[form]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "LMEVAL_API_KEYS is set but holds no key" in done.stderr
    assert not (tmp_path / "data").exists()


@asynccontextmanager
async def keyed_server(tmp_path: Path, **overrides: Any) -> AsyncIterator[str]:
    settings = make_settings(tmp_path, api_keys=(KEY,), max_concurrency=0, **overrides)
    async with trio.open_nursery() as nursery:
        url, shutdown, _app = await start_server(nursery, settings)
        yield url
        shutdown.set()


async def _hold_partial_body(url: str, headers: dict[str, str], statuses: list[int]) -> None:
    """POST the start of a big body and never finish it; record the answer, and that the
    server closed the connection after it."""
    stream = await raw_http.connect(url)
    async with stream:
        head = raw_http.head_bytes(
            "POST",
            "/job",
            {"Content-Length": "1000000", "Content-Type": "application/json", **headers},
        )
        await stream.send_all(head + b'{"model": "dummy", "tasks": "')
        response = await raw_http.read_response(stream)
        assert response.json()["detail"]
        assert await stream.receive_some(1024) == b"", "the server kept the connection"
        statuses.append(response.status)


async def _healthz(url: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return (await client.get("/healthz")).status_code


async def test_partial_bodies_without_a_key_are_refused_at_once(tmp_path: Path) -> None:
    """Hundreds of clients without a (valid) key, each sending a body that never ends: each
    is answered and disconnected without the server waiting for its body, and the health
    check answers throughout."""
    wrong = [{}, {"Authorization": "Bearer not-the-key"}, {"Authorization": f"Basic {KEY}"}]
    statuses: list[int] = []
    async with keyed_server(tmp_path) as url:
        with trio.fail_after(60):  # the body timeout (30 s) is never what ends them
            async with trio.open_nursery() as nursery:
                for n in range(300):
                    nursery.start_soon(_hold_partial_body, url, wrong[n % 3], statuses)
                    if n % 50 == 0:
                        assert await _healthz(url) == 200
            assert await _healthz(url) == 200
    assert sorted(set(statuses)) == [401, 403] and len(statuses) == 300


async def test_a_key_holders_slow_body_is_bounded(tmp_path: Path) -> None:
    """With a key the body is read, but only for LMEVAL_BODY_READ_TIMEOUT_S: then 408 JSON
    and the connection closed."""
    statuses: list[int] = []
    async with keyed_server(tmp_path, body_read_timeout_s=0.5) as url:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(
                        _hold_partial_body, url, {"Authorization": f"Bearer {KEY}"}, statuses
                    )
                assert await _healthz(url) == 200
    assert statuses == [408] * 20


async def test_a_key_holder_keeps_the_connection_after_a_refusal(tmp_path: Path) -> None:
    """A complete body is still read before the answer, so a kept-alive connection serves
    the next request after a 4xx (here a 405 to a body-carrying POST)."""
    body = json.dumps({"x": 1}).encode()
    async with keyed_server(tmp_path) as url:
        stream = await raw_http.connect(url)
        async with stream:
            auth = {"Authorization": f"Bearer {KEY}", "Content-Length": str(len(body))}
            await stream.send_all(raw_http.head_bytes("POST", "/healthz", auth))
            await trio.sleep(0.1)  # the body follows in its own packet
            await stream.send_all(body + raw_http.head_bytes("GET", "/readyz"))
            with trio.fail_after(10):
                first = await raw_http.read_response(stream)
                second = await raw_http.read_response(stream)
    assert (first.status, second.status) == (405, 200)


# -- the work of admission ------------------------------------------------------------------


@pytest.fixture
def big_folder(tmp_path: Path) -> Path:
    """A task folder of 6000 files (no YAML: only the walk matters)."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    for n in range(6000):
        (folder / f"f{n}.txt").touch()
    return folder


async def _submit(tmp_path: Path, body: dict[str, Any], **overrides: Any) -> httpx.Response:
    settings = make_settings(tmp_path, max_concurrency=0, **overrides)
    async with trio.open_nursery() as nursery:
        url, shutdown, _app = await start_server(nursery, settings)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            response = await client.post("/job", json={"model": "dummy", **body})
        shutdown.set()
    return response


async def test_one_folder_named_a_thousand_times_is_walked_once(
    tmp_path: Path, big_folder: Path
) -> None:
    """1000 spellings of one 6000-entry folder: walked each time, that would be 6 million
    entries, far past the budget (a 403); walked once, the request is accepted."""
    spellings = [
        str(big_folder),
        f"{big_folder}/",
        f"{big_folder}/.",
        f"{big_folder}//",
        f"{big_folder}/../{big_folder.name}",
    ]
    tasks = [spellings[n % len(spellings)] for n in range(1000)]
    response = await _submit(tmp_path, {"tasks": tasks, "include_path": str(big_folder)})
    assert response.status_code == 200, response.text


async def test_nested_folders_exhaust_the_budget(tmp_path: Path, big_folder: Path) -> None:
    """Distinct folders nested in each other each hold the whole tree below: the walks of
    one request together are capped, and the refusal names the field."""
    deep = tmp_path / "nest"
    path = deep
    chain = []
    for n in range(60):
        path = path / f"d{n}"
        chain.append(str(path))
    path.mkdir(parents=True)
    for n in range(4000):
        (path / f"f{n}").touch()
    response = await _submit(tmp_path, {"tasks": chain})  # 60 walks x 4000 entries
    assert response.status_code == 403, response.text
    assert response.json()["field"] == "tasks"
    assert "files and folders to check" in response.json()["rule"]


async def test_admission_has_a_deadline(tmp_path: Path, big_folder: Path) -> None:
    response = await _submit(
        tmp_path, {"tasks": "x", "include_path": str(big_folder)}, admission_timeout_s=1e-6
    )
    assert response.status_code == 403, response.text
    assert "LMEVAL_ADMISSION_TIMEOUT_S" in response.json()["rule"]


async def test_cancelled_admission_stops_its_thread() -> None:
    """A check that would never end (it charges forever) returns as soon as its caller is
    cancelled, and its worker thread stops at its next charge instead of running on."""
    stopped = threading.Event()
    entered = threading.Event()

    def endless() -> None:
        try:
            while True:
                entered.set()
                admission.charge("tasks", 0)  # no entries: only the cancellation stops it
        finally:
            stopped.set()

    with trio.move_on_after(0.2) as scope:
        await admission.run_bounded(endless, timeout_s=600)
    assert scope.cancelled_caught and entered.is_set()
    assert await trio.to_thread.run_sync(stopped.wait, 30)


async def test_a_disconnected_submission_is_not_recorded(tmp_path: Path) -> None:
    """A client that leaves while its paths are checked: the check is abandoned, no job is
    recorded, the server stays healthy and stops within its bound."""
    path = tmp_path / "nest"
    chain = []
    for n in range(30):
        path = path / f"d{n}"
        chain.append(str(path))
    path.mkdir(parents=True)
    for n in range(3000):
        (path / f"f{n}").touch()
    settings = make_settings(tmp_path, max_concurrency=0)
    with trio.fail_after(settings.shutdown_timeout_s):  # the whole life, shutdown included
        await _leave_mid_admission(settings, chain)


async def _leave_mid_admission(settings: Settings, chain: list[str]) -> None:
    async with trio.open_nursery() as nursery:
        url, shutdown, _app = await start_server(nursery, settings)
        body = json.dumps({"model": "dummy", "tasks": chain}).encode()
        stream = await raw_http.connect(url)
        head = {"Content-Length": str(len(body)), "Content-Type": "application/json"}
        await stream.send_all(raw_http.head_bytes("POST", "/job", head) + body)
        await stream.aclose()  # gone before any answer
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/jobs")).json()["jobs"] == []
        shutdown.set()


async def test_shutdown_stays_within_its_bound_under_held_connections(tmp_path: Path) -> None:
    """The shipped launch path, SIGTERM while it holds partial bodies (with and without a
    key), a submission whose paths are being walked, an open event stream and a running job
    whose tree ignores SIGTERM: the server exits within LMEVAL_SHUTDOWN_TIMEOUT_S."""
    from tests.test_server_process import hypercorn_server

    chain = _nested_chain(tmp_path / "nest", depth=30, files=3000)
    env = {
        "LMEVAL_API_KEYS": KEY,
        "LMEVAL_SHUTDOWN_TIMEOUT_S": "15",
        "LMEVAL_ALLOWED_PATH_ROOTS": f"{SUPPORT},{tmp_path}",
    }
    auth = {"Authorization": f"Bearer {KEY}"}
    async with hypercorn_server(tmp_path / "data", **env) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30, headers=auth) as client:
            job = (await client.post("/job", json=fake_job("tree"))).json()["job_id"]
            async with trio.open_nursery() as nursery:
                for n in range(40):
                    headers = auth if n % 2 else {}
                    nursery.start_soon(_hold_quietly, server.url, headers)
                body = {"model": "dummy", "tasks": chain}
                nursery.start_soon(_post_quietly, client, body)
                nursery.start_soon(_follow_quietly, client, f"/job/{job}/events")
                await trio.sleep(0.5)  # let them all arrive
                server.proc.send_signal(signal.SIGTERM)
                with trio.fail_after(15):
                    returncode = await server.proc.wait()
                nursery.cancel_scope.cancel()
        assert returncode == 0


def _nested_chain(root: Path, *, depth: int, files: int) -> list[str]:
    path, chain = root, []
    for n in range(depth):
        path = path / f"d{n}"
        chain.append(str(path))
    path.mkdir(parents=True)
    for n in range(files):
        (path / f"f{n}").touch()
    return chain


async def _hold_quietly(url: str, headers: dict[str, str]) -> None:
    with contextlib.suppress(OSError, ConnectionError, trio.BrokenResourceError):
        await _hold_partial_body(url, headers, [])


async def _post_quietly(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        await client.post("/job", json=body)


async def _follow_quietly(client: httpx.AsyncClient, path: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        async with client.stream("GET", path) as stream:
            await stream.aread()
