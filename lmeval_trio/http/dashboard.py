"""The web dashboard: one HTML page at ``/`` that loads ES modules from static/dashboard.

The page carries no data and no secrets, so it is served without an API key (like /docs);
the key is typed into the page and sent by its scripts with every API call. Everything the
page shows comes from the JSON API, so the dashboard adds no server-side state or routes to
keep in step with the API, and nothing needs building: the files are served as they are.
"""

from __future__ import annotations

from pathlib import Path

import trio
from quart import Blueprint, Response
from quart_schema import hide

PAGE = Path(__file__).parent / "static" / "dashboard" / "index.html"

# Everything is same-origin: a strict policy costs nothing and blunts any injected markup.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "img-src 'self' data: blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


def blueprint() -> Blueprint:
    bp = Blueprint("dashboard", __name__)

    @bp.get("/")
    @hide
    async def index() -> Response:
        """The dashboard page (re-read on each request: it is small and may be edited live)."""
        html = await trio.Path(PAGE).read_text(encoding="utf-8")
        response = Response(html, content_type="text/html; charset=utf-8")
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    return bp
