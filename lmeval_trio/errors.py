"""Every error the server raises on purpose, in one tree under :class:`LmevalTrioError`.

An embedder (see embedding.py) catches ``LmevalTrioError`` for anything lmeval-trio refused
or could not do, or one subtree for one kind of answer; the HTTP edge (http/errors.py) maps
classes to statuses, so a new error is one class here (or under one of these) and one line
there. Classes defined next to the code that raises them (PolicyViolation in policy/rules.py,
StoreError in store/sqlite.py, ...) derive from these; some keep a builtin base too (ValueError,
RuntimeError, FileNotFoundError) because callers catch them by it.

    LmevalTrioError
    ├── RequestRefused      the request itself is at fault (4xx)
    │   ├── InvalidRequest  a value is malformed or refers to nothing (422)
    │   └── Forbidden       a valid value the policy refuses (403)
    ├── NotFound            no such job, or no such output of it (404)
    ├── Conflict            the job's state does not allow this now (409)
    ├── Unavailable         cannot serve this now; worth asking again later (429, 503)
    ├── CannotStart         the server (or its job backend) cannot start: a setting, a
    │                       missing lm-eval internal, a database it cannot use (exits)
    ├── JobStartFailed      one job's process could not be started (the job fails)
    └── InternalError       a broken invariant: a bug, or a race lost to another change

The client (lmeval_trio.client) has its own tree, ``ClientError``: it never imports the server.
"""

from __future__ import annotations


class LmevalTrioError(Exception):
    """Base of every error lmeval-trio raises on purpose; ``str()`` is fit to show a user."""


class RequestRefused(LmevalTrioError):
    """The request is at fault: the same request will be refused again."""


class InvalidRequest(RequestRefused):
    """A request value is malformed, out of range, or names a path that does not exist."""


class InvalidParameter(InvalidRequest):
    """A bad query parameter or path value (HTTP 422, naming it)."""

    def __init__(self, location: str, name: str, message: str) -> None:
        super().__init__(message)
        self.location = location
        self.name = name
        self.message = message


class Forbidden(RequestRefused):
    """A well-formed request the server's policy does not allow."""


class NotFound(LmevalTrioError):
    """What the request names does not exist (any more)."""


class Conflict(LmevalTrioError):
    """The job is not in a state that allows this (409)."""


class Unavailable(LmevalTrioError):
    """The request may succeed later: the queue is full, or the server is not accepting."""


class CannotStart(LmevalTrioError):
    """Something the server needs at start-up is missing or invalid; the message says what."""


class JobStartFailed(LmevalTrioError):
    """One job's process could not be started; the message is the job's failure reason."""


class InternalError(LmevalTrioError):
    """An invariant broke (a bug, or a race lost to another change)."""


class SupervisorError(LmevalTrioError):
    """Base of the refusals of a supervisor operation (not found, full, not accepting, ...)."""


class JobNotFound(SupervisorError, NotFound):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"No lm-evaluation-harness job with ID={job_id} found.")
        self.job_id = job_id


class QueueFull(SupervisorError, Unavailable):
    """More jobs are queued than LMEVAL_MAX_QUEUED_JOBS allows."""


class NotAccepting(SupervisorError, Unavailable):
    """The supervisor is not running (not started yet, shutting down, or crashed)."""


class NotResumable(SupervisorError, Conflict):
    """Only Stopped and Failed jobs can be resumed."""
