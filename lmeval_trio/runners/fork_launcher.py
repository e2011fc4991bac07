"""The thin process a forked job runs behind: the server's child that hands its stdio to a fork
server and exits as the forked job did, or becomes the job's cold start if no fork server can
serve it.

The server starts it with ``trio.run_process`` exactly as it starts a cold job (own session, the
job's environment, working directory and pipes), so a job keeps one child, one cancel scope and
one exit code whichever way it starts::

    python -I -S .../fork_launcher.py --socket=NAME --info-fd=FD --spec=JSON -- COLD_ARGV...

It connects to the fork server's abstract Unix socket ``NAME``, sends the job (``--spec`` plus
the digest of its own environment, which the fork server compares with the one it imported
under) and its fds 0, 1 and 2 (``SCM_RIGHTS``), then waits. The fork server answers
``ok PID`` (forked: the job is PID, in its own session) then ``exit STATUS`` (its wait status),
or ``refuse REASON``. SIGTERM, SIGINT and SIGHUP are passed on to the job's process group. If
the fork server cannot be reached or refuses, the launcher execs ``COLD_ARGV`` (the job's
ordinary command) in place. It says what happened on ``--info-fd`` (``pid PID`` or
``cold REASON``, one line) for the server's log, never on the job's own output.

Standard library only, run with ``-I -S``: it starts in ~10 ms and imports nothing from the job's
folder, nor any module Python has not loaded at start-up anyway. The server imports
``environment_key`` from here, so both sides digest alike.
"""

from __future__ import annotations

# Only modules Python has loaded at start-up, or built in: ``signal``, ``socket``, ``hashlib``,
# ``array`` and ``typing`` would cost ~60 ms here (enum, OpenSSL's libcrypto), paid by every
# job between its dispatch and its fork. ``_signal``, ``_socket`` and ``_sha256`` are what
# those modules wrap (the type checker reads the public ones).
import _socket as socket
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Mapping, Sequence
    from hashlib import sha256
    from typing import NoReturn
else:
    import _signal as signal

    if sys.version_info >= (3, 12):
        from _sha2 import sha256
    else:
        from _sha256 import sha256

#: Signals that ask the job to stop: passed on to its process group.
PASSED_ON = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Replies are short; the request (a job's arguments) is bounded by the socket's buffer.
REPLY_BYTES = 4096
#: Exit code when the fork server died under a running job (the job died with it).
EXIT_SERVER_LOST = 1
USAGE = "usage: fork_launcher.py --socket=NAME --info-fd=FD --spec=JSON -- COMMAND..."


def environment_key(env: Mapping[str, str]) -> str:
    """Identifies an environment exactly (values included), without keeping its secrets."""
    digest = sha256()
    for name, value in sorted(env.items()):
        digest.update(os.fsencode(name) + b"\0" + os.fsencode(value) + b"\0")
    return digest.hexdigest()


class Launcher:
    """One job's hand-over: the signals that arrive before the job has a pid wait for it."""

    def __init__(self, info_fd: int) -> None:
        self.info_fd = info_fd
        self.job: int | None = None
        self.pending: list[int] = []

    def on_signal(self, signum: int, _frame: object) -> None:
        if self.job is None:
            self.pending.append(signum)
        else:
            _signal_group(self.job, signum)

    def tell(self, line: str) -> None:
        """One line for the server's log; the server may already be gone: ignore."""
        if self.info_fd < 0:
            return
        try:
            os.write(self.info_fd, line.replace("\n", " ").encode(errors="replace") + b"\n")
        except OSError:
            pass
        finally:
            os.close(self.info_fd)
            self.info_fd = -1

    def forked(self, pid: int) -> None:
        self.job = pid
        self.tell(f"pid {pid}")
        for signum in self.pending:
            _signal_group(pid, signum)

    def cold(self, command: Sequence[str], reason: str) -> NoReturn:
        """Become the job's cold start (never returns); a stop asked for meanwhile wins."""
        if self.pending:
            _die_of(self.pending[0])
        self.tell(f"cold {reason}")
        for passed in PASSED_ON:
            signal.signal(passed, signal.SIG_DFL)
        try:
            os.execv(command[0], list(command))
        except OSError as err:
            print(f"lmeval-trio: cannot start {command[0]}: {err.strerror}", file=sys.stderr)
        os._exit(127)


def _signal_group(pgid: int, signum: int) -> None:
    try:  # noqa: SIM105 (contextlib is not loaded at start-up)
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _die_of(signum: int) -> NoReturn:
    """Exit as killed by ``signum``, so the server sees what it would have seen of the job."""
    if signum != signal.SIGKILL:
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # a signal that does not kill (never sent by the fork server)


def relay(status: int) -> int:
    """Exit as the job's wait status says."""
    if os.WIFSIGNALED(status):
        _die_of(os.WTERMSIG(status))
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1


def request(spec: str) -> bytes:
    """The message: the job and the digest of the environment it would get."""
    return f"{environment_key(os.environ)}\n{spec}".encode()


def connect(name: str, spec: str) -> socket.socket:
    """Connected to the fork server, the job sent with our stdio. Raises OSError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect("\0" + name)
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))  # C ints
        sock.sendmsg([request(spec)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    except BaseException:
        sock.close()
        raise
    return sock


def run(name: str, info_fd: int, spec: str, command: Sequence[str]) -> int:
    launcher = Launcher(info_fd)
    for passed in PASSED_ON:
        signal.signal(passed, launcher.on_signal)
    try:
        sock = connect(name, spec)
        reply = sock.recv(REPLY_BYTES)
    except OSError as err:
        launcher.cold(command, f"fork server unreachable: {err.strerror or err}")
    word, _, rest = reply.decode(errors="replace").partition(" ")
    if word != "ok" or not rest.isdigit():
        why = rest if word == "refuse" else "it closed the connection before forking the job"
        launcher.cold(command, f"fork server refused: {why}")
    launcher.forked(int(rest))
    try:
        reply = sock.recv(REPLY_BYTES)
    except OSError:
        reply = b""
    word, _, rest = reply.decode(errors="replace").partition(" ")
    if word == "exit" and rest.lstrip("-").isdigit():
        return relay(int(rest))
    if launcher.job is not None:  # what is left of its group (the job itself died with it)
        _signal_group(launcher.job, signal.SIGKILL)
    print(
        f"ForkServerError: the fork server died while the job ran (pid {launcher.job}); "
        "the job was killed with it",
        file=sys.stderr,
    )
    return EXIT_SERVER_LOST


def main(args: Sequence[str]) -> int:
    if "--" not in args:
        print(USAGE, file=sys.stderr)
        return 2
    split = list(args).index("--")
    options = dict(word.partition("=")[::2] for word in args[:split])
    command = list(args[split + 1 :])
    info = options.get("--info-fd", "")
    if not command or not options.get("--socket") or not info.isdigit() or "--spec" not in options:
        print(USAGE, file=sys.stderr)
        return 2
    return run(options["--socket"], int(info), options["--spec"], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
