"""Which lm-eval releases the server supports, and the one way an unsupported one is refused.

Every internal the server cannot do without is checked at start-up by
:func:`require_internals`; a missing one raises :class:`LmEvalUnsupported` naming it, which
``lmeval-trio serve`` and ``asgi.py`` print before exiting with status 2. Internals the server
can do without (fastrun's task-index patch, lm-eval's ``cli_evaluate``) fall back to stock
lm-eval with a logged warning instead (see the table in ``harness/__init__.py``).
"""

from __future__ import annotations

import re

from lmeval_trio.errors import CannotStart

#: The lm-eval releases the server is tested with, oldest and newest (CI runs each one).
SUPPORTED_LM_EVAL = ("0.4.10", "0.4.13")
_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)")
#: What the request model needs an internal for (the default purpose in refusals).
REQUEST_MODEL = "the job request model is derived from it"


class LmEvalUnsupported(CannotStart, RuntimeError):
    """The installed lm-eval lacks an internal the server relies on (named in the message)."""


def release(version: str) -> tuple[int, int, int]:
    """``"0.4.12.dev1"`` -> ``(0, 4, 12)``; a version without three numbers is ``(0, 0, 0)``."""
    found = _RELEASE.match(version)
    if found is None:
        return (0, 0, 0)
    major, minor, patch = (int(part) for part in found.groups())
    return (major, minor, patch)


def is_supported(version: str) -> bool:
    """Whether ``version`` is one of the tested lm-eval releases (a dev or post build counts)."""
    oldest, newest = SUPPORTED_LM_EVAL
    return release(oldest) <= release(version) <= release(newest)


def installed_version() -> str:
    """The installed lm-eval's version ("unknown" if its metadata is gone)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return "unknown"


def untested_warning() -> str | None:
    """Why the installed lm-eval deserves a warning at start-up, if it is not a tested one."""
    installed = installed_version()
    if is_supported(installed):
        return None
    oldest, newest = SUPPORTED_LM_EVAL
    return (
        f"lm-eval {installed} is not one of the tested releases ({oldest} through {newest}); "
        "the request model is derived from its parser as usual, but nothing else is checked"
    )


def unsupported(internal: str, why: str, purpose: str = REQUEST_MODEL) -> LmEvalUnsupported:
    """The refusal naming ``internal``: what is wrong with it and what the server uses it for."""
    oldest, newest = SUPPORTED_LM_EVAL
    return LmEvalUnsupported(
        f"lm-eval {installed_version()} is not supported: {internal} {why}; {purpose} "
        f"(supported: lm-eval {oldest} through {newest})"
    )


def require_internals() -> None:
    """Check, once at start-up, every lm-eval internal a request needs (raise
    LmEvalUnsupported naming the first one missing), so a server never starts only to fail
    its first submission. Derives and caches the request model on the way."""
    from lmeval_trio.harness import effective, key_values, request_model

    request_model.request_model()
    key_values.parsers()
    effective.require_evaluator_config()
