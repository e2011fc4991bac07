"""Operator routes: liveness, readiness and the effective (non-secret) configuration."""

from __future__ import annotations

from dataclasses import asdict

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response, current_app, jsonify
from quart_schema import document_response, tag

from lmeval_trio.config import Settings
from lmeval_trio.http import schemas
from lmeval_trio.http.params import running_supervisor


def blueprint() -> Blueprint:
    bp = Blueprint("ops", __name__)

    @bp.get("/healthz")
    @tag(["operations"])
    @document_response(schemas.Health, 200)
    @document_response(schemas.Health, 503)
    async def healthz() -> Response:
        """Liveness: the process answers, the supervisor runs, the store takes writes."""
        supervisor = running_supervisor()
        alive = supervisor is not None and supervisor.alive
        writable = alive and supervisor is not None and await supervisor.listing.store_writable()
        body = {
            "status": "ok" if alive and writable else "unhealthy",
            "supervisor": "alive" if alive else "dead",
            "store": "writable" if writable else "unavailable",
            **(asdict(supervisor.statistics()) if supervisor is not None else {}),
        }
        response = jsonify(body)
        response.status_code = 200 if alive and writable else 503
        return response

    @bp.get("/readyz")
    @tag(["operations"])
    @document_response(schemas.Ready, 200)
    @document_response(schemas.Ready, 503)
    async def readyz() -> Response:
        """Readiness: the supervisor accepts jobs."""
        supervisor = running_supervisor()
        ready = supervisor is not None and supervisor.accepting
        response = jsonify({"status": "ready" if ready else "not ready"})
        response.status_code = 200 if ready else 503
        return response

    @bp.get("/metrics")
    @tag(["operations"])
    async def metrics() -> Response:
        """Prometheus metrics: jobs by status, queue, slots, durations, latencies, refusals."""
        supervisor = running_supervisor()
        if supervisor is None:
            return Response("supervisor not running\n", status=503, mimetype="text/plain")
        stats = supervisor.statistics()
        body = supervisor.metrics.render(
            await supervisor.listing.counts(),
            queued=stats.queued,
            running=stats.running,
            free=stats.slots_free,
            total=stats.slots_total,
            warm=(stats.warm_starts, stats.warm_misses),
            fork_servers=stats.fork_servers,
            confined=stats.jobs_confined,
        )
        return Response(body, mimetype=CONTENT_TYPE_LATEST)

    @bp.get("/config")
    @tag(["operations"])
    @document_response(schemas.EffectiveSettings, 200)
    async def config() -> Response:
        """The effective settings, secrets masked."""
        settings: Settings = current_app.extensions["lmeval_trio.settings"]
        return jsonify(settings.public_dict())

    return bp
