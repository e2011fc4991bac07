"""Puts the current process behind a Linux Landlock wall: it may read and write only the paths
its ``Walls`` name, whatever code it runs next (the wall survives ``execve`` and is inherited by
every child).

Runs inside a job's process, at the moment it becomes the job (the ``confine`` exec wrapper,
fastrun's ``--walls``, a warm runner's handover), so it imports nothing but the standard library.
The kernel interface is three system calls made through ctypes; every file-system right the
running kernel's Landlock ABI knows is handled, so what the rules do not grant is denied.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
from dataclasses import dataclass

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

    def encode(self) -> str:
        return json.dumps(
            {
                "read": list(self.read),
                "write": list(self.write),
                "tmpdir": self.tmpdir,
                "landlock": self.landlock,
            }
        )

    @classmethod
    def decode(cls, text: str) -> Walls:
        data = json.loads(text)
        read, write, tmpdir = data.get("read"), data.get("write"), data.get("tmpdir")
        if not (_strings(read) and _strings(write)) or not (tmpdir is None or _string(tmpdir)):
            raise ValueError("walls: 'read' and 'write' must be lists of paths")
        return cls(tuple(read), tuple(write), tmpdir, bool(data.get("landlock", True)))


def _string(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(_string(v) for v in value)


def abi_version() -> int:
    """The kernel's Landlock ABI version, or 0 where Landlock cannot be used (old kernel,
    disabled at boot, blocked by seccomp, another architecture)."""
    if platform.machine() not in _SUPPORTED_MACHINES:
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
        import tempfile

        tempfile.tempdir = None  # forget a temp dir chosen before (a warm runner's imports)


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
