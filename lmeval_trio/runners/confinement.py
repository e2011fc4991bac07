"""Puts the current process behind a Linux Landlock wall: it may read and write only the paths
its ``Walls`` name, whatever code it runs next (the wall survives ``execve`` and is inherited by
every child).

Runs inside a job's process, at the moment it becomes the job: fastrun's ``--walls``, a child a
fork server forked (``harness/fastrun/_fork.py``), or this file run as a script, an exec wrapper
for any other program::

    python -I -S .../confinement.py --read=PATH... --write=PATH... [--tmpdir=PATH] -- COMMAND...
    python -I -S .../confinement.py --probe

(``-I -S``: nothing but the standard library, nothing from the job's folder, ~10 ms.)
``--probe`` puts up a wall that grants nothing and checks that the kernel enforces it: a kernel
may report Landlock while a seccomp profile blocks it. Exit codes: 126 the wall could not be put
up, 127 the command could not be started.

The kernel interface is three system calls made through ctypes; every file-system right the
running kernel's Landlock ABI knows is handled, so what the rules do not grant is denied.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

# System call numbers: the same on x86_64 and aarch64 (the generic table).
_SYSCALLS = {"create_ruleset": 444, "add_rule": 445, "restrict_self": 446}
_SUPPORTED_MACHINES = frozenset({"x86_64", "aarch64", "arm64"})
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# File-system access rights, by the ABI version that introduced them.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
REFER = 1 << 13  # ABI 2: link or rename across directories
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5: ioctl on device files (GPUs)
#: Rights that make sense on a file (the rest only apply to directories).
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR
#: ABI 6: no signals to processes outside the wall (the server, other jobs).
_SCOPE_SIGNAL = 1 << 1


class ConfinementError(OSError):
    """The wall could not be put up; the message says why."""


@dataclass(frozen=True)
class Walls:
    """What a job may touch: ``read`` paths (and execute), ``write`` paths (anything), and the
    ``tmpdir`` it uses for temporary files. ``landlock`` False means no OS wall, only TMPDIR."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    tmpdir: str | None = None
    landlock: bool = True

    def to_args(self) -> list[str]:
        """As command-line words (``--read=PATH``...), the form every carrier uses."""
        words = [f"--read={p}" for p in self.read] + [f"--write={p}" for p in self.write]
        if self.tmpdir is not None:
            words.append(f"--tmpdir={self.tmpdir}")
        return words if self.landlock else [*words, "--no-landlock"]

    @classmethod
    def from_args(cls, words: Sequence[str]) -> Walls:
        read: list[str] = []
        write: list[str] = []
        tmpdir: str | None = None
        landlock = True
        for word in words:
            name, _, value = word.partition("=")
            if word == "--no-landlock":
                landlock = False
            elif not isinstance(word, str) or not value or "\0" in value:
                raise ValueError(f"walls: not a --read/--write/--tmpdir=PATH word: {word!r}")
            elif name == "--read":
                read.append(value)
            elif name == "--write":
                write.append(value)
            elif name == "--tmpdir":
                tmpdir = value
            else:
                raise ValueError(f"walls: not a --read/--write/--tmpdir=PATH word: {word!r}")
        return cls(tuple(read), tuple(write), tmpdir, landlock)

    def encode(self) -> str:
        """One string (JSON), for fastrun's ``--walls`` and a forked job's spec."""
        import json

        return json.dumps(self.to_args())

    @classmethod
    def decode(cls, text: str) -> Walls:
        import json

        words = json.loads(text)
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError("walls: must be a JSON list of --read/--write/--tmpdir=PATH words")
        return cls.from_args(words)


def abi_version() -> int:
    """The kernel's Landlock ABI version, or 0 where Landlock cannot be used (old kernel,
    disabled at boot, blocked by seccomp, another architecture)."""
    if not sys.platform.startswith("linux") or os.uname().machine not in _SUPPORTED_MACHINES:
        return 0
    result = _syscall("create_ruleset", None, 0, _CREATE_RULESET_VERSION, check=False)
    return max(result, 0)


def handled_rights(abi: int) -> int:
    """Every file-system right ABI ``abi`` knows, so none is left unrestricted."""
    rights = _ABI1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def enter(walls: Walls) -> None:
    """Become the job: put up the wall (if any), then take on its own temp dir.

    Must run while the process has a single thread: Landlock restricts the calling thread and
    the threads it starts later, never threads that already run.
    """
    if walls.landlock:
        restrict(walls.read, walls.write)
    if walls.tmpdir is not None:
        os.makedirs(walls.tmpdir, exist_ok=True)
        os.environ["TMPDIR"] = walls.tmpdir
        tempfile = sys.modules.get("tempfile")
        if tempfile is not None:  # forget a temp dir chosen before (a spare's imports)
            tempfile.tempdir = None  # type: ignore[attr-defined]


def restrict(read: tuple[str, ...], write: tuple[str, ...]) -> None:
    """Deny this process every file-system access except reading ``read`` and anything on
    ``write``; paths that do not exist are skipped. Raises ConfinementError."""
    abi = abi_version()
    if abi < 1:
        raise ConfinementError(errno.ENOSYS, "Landlock is not available on this kernel")
    handled = handled_rights(abi)
    ruleset = _create_ruleset(handled, _SCOPE_SIGNAL if abi >= 6 else 0)
    try:
        for path in read:
            _add_rule(ruleset, path, READ & handled)
        for path in write:
            _add_rule(ruleset, path, handled)
        if _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _error("prctl(PR_SET_NO_NEW_PRIVS)")
        _syscall("restrict_self", ruleset, 0)
    finally:
        os.close(ruleset)


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def _create_ruleset(handled: int, scoped: int) -> int:
    """Older kernels know only the first field: pass just as much as is used."""
    attr = _RulesetAttr(handled, 0, scoped)
    size = ctypes.sizeof(attr) if scoped else ctypes.sizeof(ctypes.c_uint64)
    return _syscall("create_ruleset", ctypes.byref(attr), size, 0)


def _add_rule(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as err:
        raise ConfinementError(err.errno, f"cannot open {path} for a Landlock rule: {err}") from err
    try:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            rights &= _FILE_RIGHTS
        attr = _PathBeneathAttr(rights, fd)
        _syscall("add_rule", ruleset, _RULE_PATH_BENEATH, ctypes.byref(attr), 0, what=path)
    finally:
        os.close(fd)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syscall(name: str, *args: object, check: bool = True, what: str = "") -> int:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    words = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = int(libc.syscall(ctypes.c_long(_SYSCALLS[name]), *words))
    if result < 0 and check:
        raise _error(f"landlock_{name}({what})" if what else f"landlock_{name}")
    return result if result >= 0 else -ctypes.get_errno()


def _error(call: str) -> ConfinementError:
    code = ctypes.get_errno()
    return ConfinementError(code, f"{call} failed: {os.strerror(code)}")


EXIT_NO_WALL = 126
EXIT_NO_COMMAND = 127
USAGE = f"usage: python -I -S {__file__} (--read=PATH|--write=PATH|--tmpdir=PATH)... -- COMMAND..."


def main(args: Sequence[str]) -> int:
    """The exec wrapper: confine this process, then run the command as its reaper."""
    if list(args) == ["--probe"]:
        return probe()
    if "--" not in args or args.index("--") == len(args) - 1:
        print(USAGE, file=sys.stderr)
        return 2
    split = list(args).index("--")
    reaper = _load_reaper()  # before the wall, which may hide this folder
    try:
        enter(Walls.from_args(args[:split]))
    except (ConfinementError, ValueError) as err:
        print(f"lmeval-trio: cannot confine the job: {err}", file=sys.stderr)
        return EXIT_NO_WALL
    command = list(args[split + 1 :])
    if not os.access(command[0], os.X_OK):  # as execv would say (it runs in a child now)
        reason = os.strerror(errno.EACCES if os.path.exists(command[0]) else errno.ENOENT)
        print(f"lmeval-trio: cannot start {command[0]}: {reason}", file=sys.stderr)
        return EXIT_NO_COMMAND
    # Run it as a child, so that no descendant outlives it (see reaper.py).
    code: int = reaper.run_reaped(command)
    return code


def _load_reaper() -> ModuleType:
    """``reaper.py`` from this file's folder: run as a script (``-I -S``) this module has no
    package to import it from."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reaper.py")
    spec = importlib.util.spec_from_file_location("lmeval_trio_reaper", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def probe() -> int:
    """Print the ABI version and exit 0 if a wall holds; else print why and exit 126."""
    abi = abi_version()
    try:
        restrict((), ())
    except ConfinementError as err:
        print(f"Landlock ABI {abi}: {err}", file=sys.stderr)
        return EXIT_NO_WALL
    try:
        os.listdir("/")
    except PermissionError:
        print(abi)
        return 0
    print(f"Landlock ABI {abi}: the wall was put up but does not hold", file=sys.stderr)
    return EXIT_NO_WALL


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
