"""HEAD on every GET route answers at once with headers and no body, running jobs' event
streams included (a HEAD used to follow the stream and never answer)."""

from __future__ import annotations

import trio

from lmeval_trio.jobs.status import JobStatus
from tests.conftest import Server, fake_job
from tests.support import raw_http


async def test_head_on_a_running_jobs_streams_answers_at_once(server: Server) -> None:
    job_id = await server.submit(fake_job("block"))
    await server.wait_status(job_id, JobStatus.RUNNING)
    targets = [
        f"/job/{job_id}/events",
        f"/job/{job_id}/events?logs=false",
        "/events",
        f"/job/{job_id}",
        f"/job/{job_id}/logs",
        f"/job/{job_id}/artifacts",
        "/jobs",
        "/healthz",
    ]
    with trio.fail_after(20):
        for target in targets:
            response = await raw_http.request(server.url, "HEAD", target)
            assert response.status == 200, (target, response.status)
            assert response.body == b""
        for target in targets[:3]:
            response = await raw_http.request(server.url, "HEAD", target)
            assert response.headers["content-type"].startswith("text/event-stream")
        # Several at once on one kept-alive connection: each is answered in turn.
        stream = await raw_http.connect(server.url)
        async with stream:
            await stream.send_all(b"".join(raw_http.head_bytes("HEAD", t) for t in targets))
            for target in targets:
                response = await raw_http.read_response(stream, head_only=True)
                assert response.status == 200, target
    assert (await server.job(job_id))["status"] == "Running"
    await server.client.post(f"/job/{job_id}/stop")
