"""What a request may ask to be told about: the event names and one ``notify`` entry."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

JOB_EVENTS = ("job.started", "job.completed", "job.failed", "job.stopped")
SWEEP_EVENTS = ("sweep.completed",)
Event = Literal["job.started", "job.completed", "job.failed", "job.stopped", "sweep.completed"]
MAX_TARGETS = 16
MAX_URL_CHARS = 2048


class NotifyTarget(BaseModel):
    """One webhook: where to POST, and which events (all of them when not given)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str = Field(
        max_length=MAX_URL_CHARS,
        description="An http:// or https:// URL on a public address (or one the server "
        "exempts with LMEVAL_WEBHOOK_ALLOWED_HOSTS).",
    )
    events: Annotated[list[Event], Field(min_length=1, max_length=8)] | None = Field(
        default=None,
        description="Events to deliver: job.started, job.completed, job.failed, job.stopped, "
        "sweep.completed (default: all).",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        """Only absolute http(s) URLs with a host; no credentials (they would be logged)."""
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError as error:
            raise ValueError(f"not a valid URL: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry user:password@ (put credentials in the path)")
        if any(c.isspace() or ord(c) < 0x20 for c in value):
            raise ValueError("must not contain spaces or control characters")
        return value

    def wants(self, event: str) -> bool:
        return self.events is None or event in self.events


NotifyList = Annotated[list[NotifyTarget], Field(max_length=MAX_TARGETS)]
