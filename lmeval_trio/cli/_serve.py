"""``lmeval-trio serve``: exec hypercorn on the shipped config, with settings from the flags.

Exec (not a child process) keeps hypercorn's own signal handling: SIGTERM or Ctrl-C reach it
directly, and the exit code is its own. Flags become what an operator would set by hand:
``--bind`` for hypercorn, LMEVAL_* / MAX_CONCURRENCY variables for the app.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from importlib import resources
from pathlib import Path

from lmeval_trio.config import Settings, SettingsError, env_name
from lmeval_trio.harness import versions

APP = "lmeval_trio.asgi:app"
DEFAULT_BIND = "0.0.0.0:8080"
# The shipped hypercorn.toml's settings, for installs that lack the file.
BUILTIN_ARGS = (
    "--worker-class=trio",
    "--workers=1",
    "--graceful-timeout=5",
    "--keep-alive=5",
    "--access-logfile=-",
    "--error-logfile=-",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default: the config's bind)")
    parser.add_argument("--port", type=int, help="port to listen on (0: any free port)")
    parser.add_argument(
        "--data-dir", type=Path, help="job store, logs and results (LMEVAL_DATA_DIR)"
    )
    parser.add_argument(
        "--concurrency", type=int, help="jobs run at once (MAX_CONCURRENCY)", metavar="N"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="server logs as JSON lines (LMEVAL_LOG_FORMAT=json)",
    )
    parser.add_argument(
        "--hypercorn-config",
        type=Path,
        metavar="TOML",
        help="hypercorn config (default: the shipped hypercorn.toml)",
    )


def find_hypercorn_config(explicit: Path | None) -> Path | None:
    """The given file, else the one shipped in the package or beside it (source checkout)."""
    if explicit is not None:
        return explicit
    packaged = resources.files("lmeval_trio") / "hypercorn.toml"
    candidates = [Path(str(packaged)), Path(__file__).resolve().parents[2] / "hypercorn.toml"]
    return next((c for c in candidates if c.is_file()), None)


def _default_bind(config: Path | None) -> str:
    if config is None:
        return DEFAULT_BIND
    binds = tomllib.loads(config.read_text(encoding="utf-8")).get("bind", [DEFAULT_BIND])
    return str(binds[0] if isinstance(binds, list) and binds else binds or DEFAULT_BIND)


def bind_for(host: str | None, port: int | None, config: Path | None) -> str | None:
    """hypercorn's --bind from the flags; None leaves the config's bind alone."""
    if host is None and port is None:
        return None if config is not None else DEFAULT_BIND
    default_host, _, default_port = _default_bind(config).rpartition(":")
    return f"{host or default_host}:{default_port if port is None else port}"


def server_environment(args: argparse.Namespace, environ: dict[str, str]) -> dict[str, str]:
    env = dict(environ)
    if args.data_dir is not None:
        env[env_name("data_dir")] = str(args.data_dir.expanduser().absolute())
    if args.concurrency is not None:
        env[env_name("max_concurrency")] = str(args.concurrency)
    if args.json:
        env[env_name("log_format")] = "json"
    return env


def hypercorn_argv(args: argparse.Namespace) -> list[str]:
    config = find_hypercorn_config(args.hypercorn_config)
    argv = [sys.executable, "-m", "hypercorn"]
    argv += ["--config", str(config)] if config is not None else list(BUILTIN_ARGS)
    bind = bind_for(args.host, args.port, config)
    if bind is not None:
        argv += ["--bind", bind]
    return [*argv, APP]


def serve(args: argparse.Namespace) -> int:
    """Replace this process with hypercorn; returns only when the setup is invalid."""
    if args.hypercorn_config is not None and not args.hypercorn_config.is_file():
        print(f"lmeval-trio: error: no such file: {args.hypercorn_config}", file=sys.stderr)
        return 2
    env = server_environment(args, dict(os.environ))
    try:
        Settings.from_env(env)  # fail here, in words, rather than in a worker's traceback
    except SettingsError as error:
        print(f"lmeval-trio: error: {error}", file=sys.stderr)
        return 2
    try:
        versions.require_internals()  # an lm-eval missing one stops here too, in words
    except versions.LmEvalUnsupported as error:
        print(f"lmeval-trio: error: {error}", file=sys.stderr)
        return 2
    argv = hypercorn_argv(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
