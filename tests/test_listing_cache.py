"""The listing cache's parts: row versions, body pieces, batches, memory bounds, deflate groups."""

from __future__ import annotations

import json
import random
import sqlite3
import zlib
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import pytest
import trio
from werkzeug.datastructures import Accept

from lmeval_trio.engine import listing as listing_module
from lmeval_trio.engine.listing import LIVE, JobListing, ListingBody, summary
from lmeval_trio.engine.supervisor import Supervisor
from lmeval_trio.http import deflate, listing_encoding
from lmeval_trio.http.app import create_app
from lmeval_trio.http.listing_encoding import ListingEncoder
from lmeval_trio.jobs.status import JobStatus
from lmeval_trio.store import sqlite as store_module
from lmeval_trio.store.sqlite import MIGRATIONS, Draft, JobStore, Versioned
from tests.conftest import fake_job, make_settings

Q, R, C, F = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.FAILED
NOW = "2026-11-27T12:00:00+00:00"


def _draft(tmp_path: Path, note: str, job_id: int) -> Draft:
    job_dir = tmp_path / "data" / "jobs" / str(job_id)
    return Draft(
        request={"tasks": "x", "env_vars": {"TOKEN": "secret"}, "note": note},
        argv=["lm_eval", "--tasks", "x y"],
        env={"TOKEN": "secret"},
        job_dir=job_dir,
        output_dir=job_dir / "output",
        job_id=job_id,
    )


async def _finished_jobs(tmp_path: Path, count: int, note: str = "ünïcødé") -> None:
    """``count`` finished jobs (every third Failed) in the data dir's store."""
    store = JobStore(tmp_path / "data" / "jobs.db")
    await store.open()
    try:
        for index in range(count):
            record = await store.create(_draft(tmp_path, note, await store.next_id()), NOW)
            await store.transition(record.id, Q, R, started_at=NOW, attempts=1)
            progress = {"percent": index % 100, "phase": "p", "phases": [{"name": "p"}]}
            await store.transition(
                record.id, R, F if index % 3 == 2 else C, finished_at=NOW, progress=progress
            )
    finally:
        await store.close()


async def _expected(sup: Supervisor, statuses: list[JobStatus] | None = None) -> bytes:
    """The model-based body (jsonify's bytes: compact, ASCII, keys in order)."""
    records = await sup.list_jobs(statuses)
    counts = await sup.store.counts()
    total = sum(counts[s] for s in statuses) if statuses else sum(counts.values())
    jobs = [summary(r, sup.progress_dict(r)) for r in records]
    return json.dumps({"jobs": jobs, "total": total}, separators=(",", ":")).encode() + b"\n"


def _joined(body: ListingBody, size: int = listing_module.PIECE_BYTES) -> bytes:
    data = b"".join(body.pieces(size))
    assert len(data) == len(body)
    return data


@pytest.mark.parametrize("size", [1, 7, 20, 10**6])
@pytest.mark.parametrize("count", [0, 1, 2, 5])
def test_pieces_join_to_the_whole_body(size: int, count: int) -> None:
    rows = [json.dumps({"job_id": i, "x": "y" * i}).encode() for i in range(count)]
    body = ListingBody.of(rows, [(i, 1) for i in range(count)], total=count + 10)
    expected = b'{"jobs":[' + b",".join(rows) + b'],"total":%d}\n' % (count + 10)
    assert _joined(body, size) == expected
    assert json.loads(expected)["total"] == count + 10
    assert all(piece for piece in body.pieces(size))


async def test_every_write_bumps_the_row_version(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    await store.open()
    try:
        first = await store.create(_draft(tmp_path, "a", await store.next_id()), NOW)
        second = await store.create(_draft(tmp_path, "b", await store.next_id()), NOW)
        versions = dict(await store.versions())
        await store.transition(first.id, Q, R, started_at=NOW)
        await store.set_progress(first.id, {"percent": 5}, 5)
        await store.update(first.id, pid=123)
        with closing(sqlite3.connect(store.path)) as conn, conn:
            conn.execute("UPDATE jobs SET reason = 'external' WHERE id = ?", (second.id,))
        after = dict(await store.versions())
        assert after == {first.id: versions[first.id] + 3, second.id: versions[second.id] + 1}
        [found] = await store.get_many([second.id, 999])
        assert found.version == after[second.id] and found.record.reason == "external"
    finally:
        await store.close()


async def test_versions_select_like_select(tmp_path: Path) -> None:
    await _finished_jobs(tmp_path, 9)
    store = JobStore(tmp_path / "data" / "jobs.db")
    await store.open()
    try:
        for statuses, limit, offset, order in [
            (None, None, 0, "id"),
            ([F], None, 0, "id"),
            ([C, F], 3, 2, "newest"),
            ([Q, R], None, 0, "id"),
            (None, 4, 7, "id"),
        ]:
            ids = [
                r.id for r in await store.select(statuses, limit=limit, offset=offset, order=order)
            ]
            pairs = await store.versions(statuses, limit=limit, offset=offset, order=order)
            assert [job_id for job_id, _ in pairs] == ids
    finally:
        await store.close()


async def test_a_version_2_database_gains_row_versions(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(MIGRATIONS[0] + MIGRATIONS[1])
        conn.execute(
            "INSERT INTO jobs (status, request, argv, env, job_dir, output_dir, created_at,"
            " queued_at) VALUES ('Completed', '{}', '[]', '{}', '/j', '/j/o', ?, ?)",
            (NOW, NOW),
        )
        conn.execute("PRAGMA user_version=2")
        conn.commit()
    store = JobStore(path)
    await store.open()
    try:
        assert await store.versions() == [(1, 0)]
        await store.update(1, reason="touched")
        assert await store.versions() == [(1, 1)]
    finally:
        await store.close()


async def test_a_cold_listing_renders_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listing_module, "RENDER_BATCH", 4)
    monkeypatch.setattr(store_module, "_ID_CHUNK", 3)
    await _finished_jobs(tmp_path, 11)
    async with Supervisor(make_settings(tmp_path)) as sup:
        listing = JobListing(sup)
        for statuses in (None, [F], [C], [Q, R], None):
            body = await listing.render(statuses)
            assert _joined(body, 100) == await _expected(sup, statuses)


async def test_memory_stays_within_the_budget(tmp_path: Path) -> None:
    await _finished_jobs(tmp_path, 8)
    async with Supervisor(make_settings(tmp_path)) as sup:
        expected = await _expected(sup)
        row_bytes = len(expected) // 8
        for budget in (0, 3 * row_bytes, 10**9):
            listing = JobListing(sup, max_bytes=budget)
            for _ in range(2):
                assert _joined(await listing.render(None)) == expected
                assert listing.cached_bytes <= budget
        assert listing.cached_bytes == sum(map(len, (await listing.render(None)).rows))


async def test_deleted_jobs_leave_the_cache(tmp_path: Path) -> None:
    await _finished_jobs(tmp_path, 6)
    async with Supervisor(make_settings(tmp_path)) as sup:
        listing = JobListing(sup)
        full = await listing.render(None)
        assert listing.cached_bytes == sum(map(len, full.rows))
        await sup.delete(1)
        await sup.delete(4)
        page = await listing.render([C], limit=1)  # any listing notices the deletes
        assert len(page.rows) == 1
        assert listing.cached_bytes == sum(map(len, full.rows)) - len(full.rows[0]) - len(
            full.rows[3]
        )
        assert _joined(await listing.render(None)) == await _expected(sup)
        await sup.delete_all()
        assert _joined(await listing.render(None)) == b'{"jobs":[],"total":0}\n'
        assert listing.cached_bytes == 0


async def test_another_supervisor_starts_afresh(tmp_path: Path) -> None:
    """Versions count per database: the same (id, version) elsewhere is another row, so
    each supervisor has its own read model (the one GET /jobs is served from)."""
    notes = ("first", "second")
    for note in notes:
        await _finished_jobs(tmp_path / note, 3, note)
    for note in notes:
        async with Supervisor(make_settings(tmp_path / note)) as sup:
            expected = await _expected(sup)
            assert f'"note":"{note}"'.encode() in expected
            assert _joined(await sup.listing.render(None)) == expected
            response = await create_app(supervisor=sup).test_client().get("/jobs")
            assert await response.get_data(as_text=False) == expected


def test_adler32_combines_like_zlib_computes() -> None:
    rng = random.Random(5)
    for _ in range(300):
        a, b = (rng.randbytes(rng.randrange(0, 70000)) for _ in range(2))
        combined = deflate.adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b))
        assert combined == zlib.adler32(a + b)


def test_separately_compressed_parts_make_one_zlib_stream() -> None:
    chunks = [b"", b'{"a":', b"x" * 100_000, bytes(range(256)) * 300, b"}"]
    stream = deflate.stream([deflate.compress(chunk) for chunk in chunks])
    assert zlib.decompress(stream) == b"".join(chunks)
    assert zlib.decompress(deflate.stream([])) == b""


def _bodies(count: int, changed: int) -> tuple[ListingBody, ListingBody]:
    """A listing and the same one with row ``changed`` at a newer version."""
    rows = [b'{"job_id":%d,"pad":"%s"}' % (i, b"x" * (i % 50)) for i in range(1, count + 1)]
    keys = [(i, 1) for i in range(1, count + 1)]
    after = list(rows)
    after[changed] = after[changed].replace(b'"pad"', b'"new"')
    versions = [(i, 2 if n == changed else 1) for n, (i, _) in enumerate(keys)]
    return ListingBody.of(rows, keys, count), ListingBody.of(after, versions, count)


@pytest.fixture
def compressed(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every group the encoder compresses, in order."""
    seen: list[bytes] = []
    real = listing_encoding._compress_all

    def record(raw: list[bytes]) -> list[deflate.Part]:
        seen.extend(raw)
        return real(raw)

    monkeypatch.setattr(listing_encoding, "_compress_all", record)
    return seen


@pytest.mark.parametrize("newest_first", [False, True])
async def test_deflated_listings_reuse_every_unchanged_group(
    monkeypatch: pytest.MonkeyPatch, compressed: list[bytes], newest_first: bool
) -> None:
    monkeypatch.setattr(listing_encoding, "GROUP_IDS", 8)
    before, after = _bodies(50, changed=20)  # job 21 changes
    if newest_first:
        before, after = (
            ListingBody.of(b.rows[::-1], b.keys[::-1], b.total) for b in (before, after)
        )
    encoder = ListingEncoder()
    for body in (before, before, after):
        assert zlib.decompress(await encoder.deflated(body)) == b"".join(body.pieces(1))
    assert len(compressed) == 7 + 1  # ids 1-7, 8-15, ..., 48-50; then 16-23 again
    rows = zip(after.rows, after.keys, strict=True)
    group = [row for row, (job_id, _) in rows if 16 <= job_id <= 23]
    assert compressed[-1] == b",".join(group)


async def test_groups_with_live_rows_are_compressed_afresh(
    monkeypatch: pytest.MonkeyPatch, compressed: list[bytes]
) -> None:
    monkeypatch.setattr(listing_encoding, "GROUP_IDS", 4)
    rows = [b'{"job_id":%d}' % i for i in range(1, 9)]
    keys = [(i, LIVE if i == 6 else 1) for i in range(1, 9)]
    encoder = ListingEncoder()
    for _ in range(2):
        body = ListingBody.of(list(rows), keys, 8)  # a new object: not reused whole
        assert zlib.decompress(await encoder.deflated(body)) == b"".join(body.pieces(1))
    assert compressed == [b",".join(rows[:3]), b",".join(rows[3:7]), rows[7], b",".join(rows[3:7])]


async def test_only_large_bodies_for_clients_that_accept_deflate_are_deflated() -> None:
    small, _ = _bodies(3, changed=0)
    rows = [b'"%s"' % (b"x" * 1000)] * 300
    large = ListingBody.of(rows, [(i, 1) for i in range(300)], 300)
    encoder = ListingEncoder()
    for body, accept, expected in [
        (large, [("gzip", 1), ("deflate", 1)], "deflate"),
        (large, [("*", 1)], "deflate"),
        (large, [("deflate", 0), ("gzip", 1)], None),
        (large, [], None),
        (small, [("deflate", 1)], None),
    ]:
        response = await encoder.response(body, Accept(accept))
        assert response.headers.get("Content-Encoding") == expected
        assert response.vary.as_set() == {"accept-encoding"}
        data = await response.get_data(as_text=False)
        assert (zlib.decompress(data) if expected else data) == b"".join(body.pieces(1))


async def test_the_quart_test_client_reads_a_large_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It buffers only 10 body messages before the response ends: at most 8 pieces."""
    monkeypatch.setattr(listing_module, "PIECE_BYTES", 1)
    await _finished_jobs(tmp_path, 30)
    async with Supervisor(make_settings(tmp_path)) as sup:
        body = await JobListing(sup).render(None)
        assert len([piece async for piece in body]) == listing_module.MAX_PIECES
        with trio.fail_after(30):
            response = await create_app(supervisor=sup).test_client().get("/jobs")
            assert await response.get_data(as_text=False) == await _expected(sup)


async def test_a_job_deleted_while_rendering_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _finished_jobs(tmp_path, 5)
    async with Supervisor(make_settings(tmp_path)) as sup:
        real = sup.store.get_many

        async def delete_first(job_ids: Sequence[int]) -> list[Versioned]:
            await sup.store.delete([3])  # after the listing read its (id, version) pairs
            return await real(job_ids)

        monkeypatch.setattr(sup.store, "get_many", delete_first)
        body = await JobListing(sup).render(None)
        assert [job_id for job_id, _ in body.keys] == [1, 2, 4, 5]
        assert _joined(body) == await _expected(sup)


async def test_live_progress_shows_while_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Supervisor(make_settings(tmp_path, max_concurrency=0)) as sup:
        await sup.submit(fake_job("env"))  # no slot: it stays queued, so live
        listing = JobListing(sup)
        await listing.render(None)
        stamp = await sup.store.stamp()
        real = sup.progress_dict
        monkeypatch.setattr(sup, "progress_dict", lambda r: {**real(r), "percent": 42})
        body = await listing.render(None)
        assert await sup.store.stamp() == stamp  # the remembered listing, live rows redone
        assert json.loads(_joined(body))["jobs"][0]["inference_progress_pct"] == 42
        assert _joined(body) == await _expected(sup)


async def test_a_write_by_another_connection_shows(tmp_path: Path) -> None:
    await _finished_jobs(tmp_path, 3)
    async with Supervisor(make_settings(tmp_path)) as sup:
        listing = JobListing(sup)
        await listing.render(None)
        with closing(sqlite3.connect(sup.store.path)) as conn, conn:
            conn.execute("UPDATE jobs SET reason = 'from outside' WHERE id = 2")
        body = json.loads(_joined(await listing.render(None)))
        assert body["jobs"][1]["reason"] == "from outside"
