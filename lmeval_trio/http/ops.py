"""Operator routes: liveness, readiness and the effective (non-secret) configuration."""

from __future__ import annotations

from dataclasses import asdict

from quart import Blueprint, Response, current_app, jsonify
from quart_schema import tag

from lmeval_trio.config import Settings
from lmeval_trio.http.params import SUPERVISOR_KEY
from lmeval_trio.supervisor import Supervisor


def blueprint() -> Blueprint:
    bp = Blueprint("ops", __name__)

    @bp.get("/healthz")
    @tag(["operations"])
    async def healthz() -> Response:
        """Liveness: the process answers, the supervisor runs, the store takes writes."""
        supervisor: Supervisor | None = current_app.extensions.get(SUPERVISOR_KEY)
        alive = supervisor is not None and supervisor.alive
        writable = alive and supervisor is not None and await supervisor.store.writable()
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
    async def readyz() -> Response:
        """Readiness: the supervisor accepts jobs."""
        supervisor: Supervisor | None = current_app.extensions.get(SUPERVISOR_KEY)
        ready = supervisor is not None and supervisor.accepting
        response = jsonify({"status": "ready" if ready else "not ready"})
        response.status_code = 200 if ready else 503
        return response

    @bp.get("/config")
    @tag(["operations"])
    async def config() -> Response:
        """The effective settings, secrets masked."""
        settings: Settings = current_app.extensions["lmeval_trio.settings"]
        return jsonify(settings.public_dict())

    return bp
