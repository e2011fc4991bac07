"""Watches a folder tree (lm-eval's built-in tasks) with inotify, so a fork server can vouch
that the task index it loaded still matches the files without a job stat-ing all of them.

Every directory of the tree is watched before the index is fingerprinted; the kernel queues an
event in the same system call that changes a file, so events read just before a fork cover
every change made until then. Anything unexpected (no inotify, too many folders, a queue
overflow) means "cannot vouch": the job then checks the fingerprint itself, as always.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterable, Iterator

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
#: Any change to an entry or to the folder itself.
_MASK = (
    0x00000002  # IN_MODIFY
    | 0x00000004  # IN_ATTRIB
    | 0x00000008  # IN_CLOSE_WRITE
    | 0x00000040  # IN_MOVED_FROM
    | 0x00000080  # IN_MOVED_TO
    | 0x00000100  # IN_CREATE
    | 0x00000200  # IN_DELETE
    | 0x00000400  # IN_DELETE_SELF
    | 0x00000800  # IN_MOVE_SELF
)
#: More folders than this and the tree is not watched (each watch costs kernel memory).
MAX_FOLDERS = 20_000


class TreeWatch:
    """``unchanged()`` is True only while nothing in the tree has changed since it was made."""

    def __init__(self, root: str) -> None:
        self._fd = -1
        self._changed = False
        try:
            self._fd = self._watch(root)
        except OSError:
            self._close()

    def unchanged(self) -> bool:
        if self._fd < 0 or self._changed:
            return False
        try:
            while events := os.read(self._fd, 64 * 1024):
                self._changed = self._changed or _relevant(events)
        except BlockingIOError:
            pass
        except OSError:
            self._changed = True
        if self._changed:
            self._close()
        return not self._changed

    def close_in_child(self) -> None:
        """A forked child needs none of it."""
        self._close()

    def _watch(self, root: str) -> int:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._fd = fd
        for count, folder in enumerate(self._folders(root), start=1):
            if count > MAX_FOLDERS:
                raise OSError(0, "too many folders to watch")
            if libc.inotify_add_watch(fd, os.fsencode(folder), _MASK) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
        return fd

    def _folders(self, root: str) -> Iterator[str]:
        for folder, dirs, _files in os.walk(root):
            if any(os.path.islink(os.path.join(folder, d)) for d in dirs):
                raise OSError(0, "a linked folder (the index follows it; inotify would not)")
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            yield folder

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FolderWatch(TreeWatch):
    """The same over the given folders themselves, not below them: the folders a fork server
    imported modules from and its ``sys.path``, so that while no event came it need not stat
    every imported file before each fork (``_warm.ImportSnapshot``)."""

    def __init__(self, folders: Iterable[str]) -> None:
        self._watched = sorted(set(folders))
        super().__init__("")

    def _folders(self, root: str) -> Iterator[str]:
        return iter(self._watched)


_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
_OVERFLOW = 0x00004000  # IN_Q_OVERFLOW: events were lost


def _relevant(events: bytes) -> bool:
    """Any event but one about ``__pycache__`` (the server's bytecode compile adds those; the
    index never reads them, and its fingerprint skips them too)."""
    offset = 0
    while offset + _EVENT.size <= len(events):
        _wd, mask, _cookie, length = _EVENT.unpack_from(events, offset)
        name = events[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
        offset += _EVENT.size + length
        if mask & _OVERFLOW or name != b"__pycache__":
            return True
    return False
