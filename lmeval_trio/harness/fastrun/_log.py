"""fastrun's own stderr logger.

It is separate from lm_eval's ``lm_eval`` logger so that fastrun never changes
lm_eval's logging configuration, yet its lines look like lm_eval's (same
timestamp and level layout) for anyone parsing job stderr. Like lm_eval it
reads ``LMEVAL_LOG_LEVEL`` (default INFO) in the job process, so each job's
environment applies.
"""

from __future__ import annotations

import logging
import os
import sys

LOGGER_NAME = "lmeval_trio.harness.fastrun"


def get_logger() -> logging.Logger:
    """Return the fastrun logger, configuring it on first use."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        level: int = logging.INFO
        env_level = os.environ.get("LMEVAL_LOG_LEVEL", "").upper()
        if env_level:
            named = logging.getLevelName(env_level)
            if isinstance(named, int):
                level = named
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)-8s [fastrun] %(message)s",
                datefmt="%Y-%m-%d:%H:%M:%S",
            )
        )
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    return logger
