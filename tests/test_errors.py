"""One exception tree: every error the server raises on purpose is an LmevalTrioError, keeps
the builtin base its callers catch it by, and the HTTP mapper answers it by its class."""

from __future__ import annotations

import sqlite3

import pytest

from lmeval_trio import config, errors
from lmeval_trio.harness import request_model as cli_schema
from lmeval_trio.harness import versions
from lmeval_trio.http import errors as http_errors
from lmeval_trio.http import strict_json
from lmeval_trio.jobs import status
from lmeval_trio.outputs import logs, results
from lmeval_trio.policy import budget as admission
from lmeval_trio.policy import rules as policy
from lmeval_trio.runners import job_walls, process
from lmeval_trio.runners import ray as ray_runner
from lmeval_trio.store import sqlite as store

# (class, the subtree it belongs to, the builtin base callers catch it by, if any)
TREE: list[tuple[type[Exception], type[Exception], type[Exception] | None]] = [
    (errors.JobNotFound, errors.NotFound, None),
    (errors.QueueFull, errors.Unavailable, None),
    (errors.NotAccepting, errors.Unavailable, None),
    (errors.NotResumable, errors.Conflict, None),
    (policy.PolicyViolation, errors.Forbidden, None),
    (policy.MissingPath, errors.InvalidRequest, ValueError),
    (cli_schema.RequestRejected, errors.InvalidRequest, ValueError),
    (versions.LmEvalUnsupported, errors.CannotStart, RuntimeError),
    (results.ResultsUnavailable, errors.NotFound, None),
    (errors.InvalidParameter, errors.InvalidRequest, None),
    (strict_json.NonFiniteNumber, errors.InvalidRequest, ValueError),
    (store.StoreError, errors.CannotStart, RuntimeError),
    (status.InvalidTransition, errors.InternalError, RuntimeError),
    (process.SpawnError, errors.JobStartFailed, None),
    (ray_runner.RayUnreachable, errors.JobStartFailed, None),
    (ray_runner.RayUnavailable, errors.Unavailable, None),
    (job_walls.ConfinementUnavailable, errors.CannotStart, None),
    (admission.AdmissionExceeded, errors.Forbidden, None),
    (logs.NotALog, errors.NotFound, FileNotFoundError),
    (config.SettingsError, errors.CannotStart, ValueError),
]


@pytest.mark.parametrize(
    ("cls", "subtree", "builtin"), TREE, ids=lambda c: getattr(c, "__name__", "-")
)
def test_every_server_error_is_on_the_tree(
    cls: type[Exception], subtree: type[Exception], builtin: type[Exception] | None
) -> None:
    assert issubclass(cls, subtree)
    assert issubclass(cls, errors.LmevalTrioError)
    if builtin is not None:
        assert issubclass(cls, builtin)


def test_the_supervisor_refusals_stay_supervisor_errors() -> None:
    for cls in (errors.JobNotFound, errors.QueueFull, errors.NotAccepting, errors.NotResumable):
        assert issubclass(cls, errors.SupervisorError)
    assert not issubclass(policy.PolicyViolation, errors.SupervisorError)


def test_the_mapper_answers_by_nearest_class() -> None:
    conflict = http_errors.answer_for(errors.NotResumable("only Stopped and Failed"))
    assert conflict is http_errors.ANSWERS[errors.Conflict] and conflict.status == 409
    assert http_errors.answer_for(errors.JobNotFound(7)) is http_errors.ANSWERS[errors.JobNotFound]

    class NewRefusal(errors.QueueFull):
        pass

    assert http_errors.answer_for(NewRefusal("full")) is http_errors.ANSWERS[errors.QueueFull]
    answer = http_errors.answer_for(sqlite3.OperationalError("disk full"))
    assert answer is not None and answer.status == 503
    assert http_errors.answer_for(RuntimeError("a bug")) is None  # the logged 500
