"""Authentication (Bearer API keys) and CORS for every route.

Without keys the server is open and says so loudly at start. Keys are compared in constant
time and never logged. Health probes and the static documentation stay open so that load
balancers and the docs page work without a key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from quart import Quart, Response, g, request
from quart_schema import OpenAPIProvider, QuartSchema

from lmeval_trio.config import Settings
from lmeval_trio.http.errors import UNAUTHENTICATED, error_response
from lmeval_trio.http.schemas import Error

log = logging.getLogger("lmeval_trio.security")
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/openapi.json"})
OPEN_PREFIXES = ("/static/",)
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Last-Event-ID"


def install(app: Quart, settings: Settings) -> None:
    keys = tuple(_digest(k) for k in sorted(settings.all_api_keys()))
    origins = frozenset(settings.cors_origins)
    if not keys:
        log.warning(
            "NO API KEYS CONFIGURED: anyone who can reach this server can run jobs. "
            "Set LMEVAL_API_KEYS or LMEVAL_API_KEYS_FILE."
        )
    extension = app.extensions.get("QUART_SCHEMA")
    if isinstance(extension, QuartSchema):
        extension.openapi_provider = GuardedOpenAPI(app, extension, protected=bool(keys))

    @app.before_request
    async def authenticate() -> Response | None:
        if request.method == "OPTIONS" and _allowed(request.headers.get("Origin"), origins):
            return _preflight()
        if not keys or _is_open(request.path):
            return None
        refusal = _check_bearer(request.headers.get("Authorization"), keys)
        if refusal is not None:
            setattr(g, UNAUTHENTICATED, True)  # answered at once, the body left unread
        return refusal

    @app.after_request
    async def cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origins:
            response.vary.add("Origin")
        if origin is not None and _allowed(origin, origins):
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
            if "*" not in origins:  # never a wildcard together with credentials
                response.headers["Access-Control-Allow-Credentials"] = "true"
        return response


def _allowed(origin: str | None, origins: frozenset[str]) -> bool:
    return origin is not None and (origin in origins or "*" in origins)


def _digest(key: str) -> bytes:
    """Keys are compared as SHA-256 digests: equal length, so the time says nothing."""
    return hashlib.sha256(key.encode()).digest()


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _check_bearer(header: str | None, keys: tuple[bytes, ...]) -> Response | None:
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        response = error_response(401, "missing API key: send 'Authorization: Bearer <key>'")
        response.headers["WWW-Authenticate"] = 'Bearer realm="lmeval-trio"'
        return response
    offered = _digest(credentials.strip())
    # Compare against every key so the time taken does not reveal which one matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered, key)
    if not matched:
        return error_response(403, "invalid API key")
    return None


def _preflight() -> Response:
    response = Response("", status=204)
    response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
    response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
    response.headers["Access-Control-Max-Age"] = "600"
    return response


class GuardedOpenAPI(OpenAPIProvider):
    """quart-schema's OpenAPI plus what this module and the body limit enforce on every
    route: the Bearer scheme with its 401/403 (when keys are set) and 413 for bodies."""

    def __init__(self, app: Quart, extension: QuartSchema, *, protected: bool) -> None:
        super().__init__(app, extension)
        self._protected = protected

    def schema(self) -> dict[str, Any]:
        schema = super().schema()
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                self._guard(path, operation)
        if self._protected:
            schemes = schema["components"].setdefault("securitySchemes", {})
            schemes["apiKey"] = {"type": "http", "scheme": "bearer"}
        return schema

    def _guard(self, path: str, operation: dict[str, Any]) -> None:
        responses = operation.setdefault("responses", {})
        if "requestBody" in operation:
            responses.setdefault(413, _error_response("The request body is too large."))
        if self._protected and not _is_open(path):
            operation["security"] = [{"apiKey": []}]
            responses.setdefault(401, _error_response("No API key was sent."))
            responses.setdefault(403, _error_response("The API key is wrong."))


def _error_response(description: str) -> dict[str, Any]:
    schema = Error.model_json_schema()
    return {"description": description, "content": {"application/json": {"schema": schema}}}
