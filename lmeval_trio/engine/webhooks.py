"""One webhook delivery attempt, the Standard Webhooks way: a signed JSON POST to the
address the SSRF check approved (policy/webhook_targets.py), no redirects, a short timeout.

The signature is ``v1,`` + base64 HMAC-SHA256 of ``{webhook-id}.{webhook-timestamp}.{body}``
with the key inside the ``whsec_`` secret: what the ``standardwebhooks`` libraries verify.
The secret is LMEVAL_WEBHOOK_SECRET, or one generated at first start into
DATA_DIR/webhook-secret (0600) and reused after.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from lmeval_trio.config import Settings, valid_webhook_secret
from lmeval_trio.engine.live import log
from lmeval_trio.jobs.delivery import Delivery
from lmeval_trio.policy import webhook_targets

SECRET_FILE = "webhook-secret"
USER_AGENT = "lmeval-trio-webhooks"


@dataclass(frozen=True)
class Outcome:
    """How one attempt went: delivered, given up for good (final), or to be retried."""

    delivered: bool
    final: bool = False
    status_code: int | None = None
    error: str | None = None


def load_secret(settings: Settings) -> str:
    """The signing secret: the setting, else the data dir's file (created 0600 once)."""
    if settings.webhook_secret is not None:
        return settings.webhook_secret
    path = settings.data_dir / SECRET_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = ""
    if valid_webhook_secret(text):
        return text
    return _create_secret(path)


def _create_secret(path: Path) -> str:
    text = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".new")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(text + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)
    log.info("webhooks: generated a signing secret in %s", path)
    return text


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def body_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def classify(status_code: int) -> Outcome:
    """2xx delivered; 4xx final except 408 and 429; anything else retried."""
    if 200 <= status_code < 300:
        return Outcome(True, status_code=status_code)
    final = 400 <= status_code < 500 and status_code not in (408, 429)
    return Outcome(False, final=final, status_code=status_code)


class WebhookSender:
    """Sends webhook deliveries; one HTTP client for all of them."""

    def __init__(self, settings: Settings, secret: str) -> None:
        self.settings = settings
        self.secret = secret
        self.exemptions = settings.webhook_exemptions
        self.client = httpx.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=settings.webhook_timeout_s
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send(self, delivery: Delivery, payload: dict[str, Any]) -> Outcome:
        """One attempt of ``delivery`` with ``payload`` (frozen by the worker)."""
        try:
            target = await webhook_targets.resolve(delivery.target, self.exemptions)
        except webhook_targets.Unresolvable as error:
            return Outcome(False, error=str(error))
        except webhook_targets.TargetRefused as error:
            return Outcome(False, final=True, error=str(error))
        body = body_bytes(payload)
        stamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": _host_header(target),
            "webhook-id": delivery.message_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(self.secret, delivery.message_id, stamp, body),
        }
        return await self._post(target, body, headers)

    async def _post(
        self, target: webhook_targets.Target, body: bytes, headers: dict[str, str]
    ) -> Outcome:
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        limit = self.settings.webhook_timeout_s
        with trio.move_on_after(limit):
            try:
                async with self.client.stream(
                    "POST",
                    _address_url(target),
                    content=body,
                    headers=headers,
                    extensions=extensions,
                ) as response:
                    return classify(response.status_code)
            except httpx.HTTPError as error:
                return Outcome(
                    False, error=_without_path(f"{type(error).__name__}: {error}", target)
                )
        return Outcome(False, error=f"no answer within {limit:g} s")


def _without_path(text: str, target: webhook_targets.Target) -> str:
    """An error as shown and logged: a URL's path and query may hold a token (chat
    services put theirs there), so neither is repeated."""
    from urllib.parse import urlsplit

    parts = urlsplit(target.url)
    for secret in (parts.query, parts.path):
        if len(secret) > 1:
            text = text.replace(secret, "/…")
    return text[:300]


def _address_url(target: webhook_targets.Target) -> str:
    """The URL with its host replaced by the checked address: no second resolution."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(target.url)
    host = f"[{target.address}]" if target.address.version == 6 else str(target.address)
    return urlunsplit((parts.scheme, f"{host}:{target.port}", parts.path or "/", parts.query, ""))


def _host_header(target: webhook_targets.Target) -> str:
    default = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == default else f"{host}:{target.port}"
