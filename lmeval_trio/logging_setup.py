"""The server's own log: plain text or JSON lines, with job ids, never secrets."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from lmeval_trio.config import Settings


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line; ``job_id`` is included when a record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(name)s] %(message)s")


def configure_logging(settings: Settings) -> None:
    """Install one stderr handler on the ``lmeval_trio`` logger tree."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonLineFormatter() if settings.log_format == "json" else TextFormatter()
    handler.setFormatter(formatter)
    logger = logging.getLogger("lmeval_trio")
    logger.handlers[:] = [handler]
    logger.setLevel(settings.log_level.upper())
    logger.propagate = False
