"""A job's environment, built in one place for every backend: local processes, the fork
servers that fork them (pre-imported lm-eval processes, ``fork_server.py``) and Ray.

It has two layers. What a job *inherits* is the server's environment as it was when the
settings were read, minus the server's own settings (they may hold secrets); only local
processes and fork servers get it, on Ray the worker's environment takes its place. What the server
*sets* for the job goes on top, later entries winning: no bytecode writes (jobs read what the
server compiles, ``bytecode.py``, and nothing a job compiles lands where another job imports
it), thread-free imports (for a confined or forked job), the request's ``env_vars``, then
what a request may not lift (unbuffered output, offline, no code execution) and the job's
GPUs. A fork server is started with exactly what its jobs get, so a job and a fork server are
judged equal by comparing these two layers' sum.
"""

from __future__ import annotations

from collections.abc import Mapping

from lmeval_trio.config import Settings
from lmeval_trio.policy.rules import CODE_OFF_ENV, OFFLINE_ENV
from lmeval_trio.runners.job_walls import SINGLE_THREADED_IMPORTS

#: lm-eval reads this one server-prefixed variable itself, so it passes through.
PASSED_SETTING = "LMEVAL_LOG_LEVEL"
#: A bytecode prefix would make a job ignore the environment's compiled files.
DROPPED = frozenset({"PYTHONPYCACHEPREFIX"})


def inherited(settings: Settings) -> dict[str, str]:
    """What a job on this machine starts from: the server's environment minus its settings."""
    return {
        name: value
        for name, value in settings.server_environment.items()
        if (not name.startswith("LMEVAL_") or name == PASSED_SETTING) and name not in DROPPED
    }


def job_environment(
    settings: Settings,
    env_vars: Mapping[str, str],
    gpus: tuple[str, ...] = (),
    *,
    thread_free: bool,
) -> dict[str, str]:
    """The variables the server sets for one job (every backend passes exactly these);
    ``thread_free``: local jobs run behind a wall (``job_walls.py``) or are forked from a
    fork server, whose imports must start no thread (a request's own values still win)."""
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    if thread_free:
        env.update(SINGLE_THREADED_IMPORTS)
    env.update(env_vars)
    env["PYTHONUNBUFFERED"] = "1"
    if not settings.allow_online:
        env.update(OFFLINE_ENV)
    if not settings.allow_code_execution:
        # The server's own environment reaches jobs: what it says must not lift the rule.
        env.update(CODE_OFF_ENV)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def local_environment(settings: Settings, own: Mapping[str, str]) -> dict[str, str]:
    """Everything a process on this machine gets: what it inherits, then its own variables
    (``job_environment``'s)."""
    return {**inherited(settings), **own}
