"""Job logs: drain a child's output into files, and read bounded views of those files.

The child's pipes are drained continuously, whoever is watching, so a chatty job never
blocks on a full pipe and the server's memory stays flat: bytes go to disk, and only the
newest line fragment is held in memory. Readers (tails, ranges) never load a whole file.

A log lives in the job's folder, which the job may write: the server opens it only as the
regular file it created, never through a symlink (a job could point one at the store or a
key file) and never a FIFO (an open would hang); a log replaced so reads as missing.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from lmeval_trio.engine.change_signal import Pulse
from lmeval_trio.errors import NotFound
from lmeval_trio.policy.secrets import margin_bytes, mask_window

MAX_SEGMENT_CHARS = 64 * 1024


class NotALog(NotFound, FileNotFoundError):
    """The log's path holds something else than a regular file (the job replaced it)."""


def open_regular_file(path: Path, flags: int = os.O_RDONLY) -> int:
    """A file descriptor of the regular file at ``path``, opened without following a symlink
    or waiting on a FIFO; raises FileNotFoundError (NotALog for anything but a file)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise NotALog(errno.ENOENT, f"not a log file: {path}") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotALog(errno.ENOENT, f"not a log file: {path}")
    return fd


def open_inside(path: Path, roots: tuple[Path, ...]) -> int:
    """A read-only descriptor of the regular file at ``path`` that really lies in one of
    ``roots`` (absolute, symlinks resolved). O_NOFOLLOW guards only the last name: a job
    can swap a parent folder for a symlink between any check and the open, so the
    descriptor's own path (``/proc/self/fd``) decides. Raises NotALog otherwise."""
    fd = open_regular_file(path)
    try:
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        os.close(fd)
        raise
    if not any(real == root or root in real.parents for root in roots):
        os.close(fd)
        raise NotALog(errno.ENOENT, f"not a file of the job: {path}")
    return fd


def _append_fd(path: Path) -> int:
    """Open a log for appending; a non-file the job left in its place is removed first."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    try:
        return open_regular_file(path, flags)
    except NotALog:
        if path.is_dir() and not path.is_symlink():
            raise
        path.unlink()
        return open_regular_file(path, flags | os.O_EXCL)


class SegmentSplitter:
    """Incrementally decodes UTF-8 and splits on both ``\\r`` and ``\\n``.

    tqdm redraws a bar with ``\\r``, so a progress parser must see each redraw as a segment;
    a multi-byte character split across reads is reassembled by the incremental decoder.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""

    @property
    def pending(self) -> str:
        """The segment still being written (tqdm's newest bar state lives here)."""
        return self._pending

    def feed(self, data: bytes) -> list[str]:
        """Complete segments: each finished line reduced to its last redraw, plus a redraw
        that is complete because the next one began.

        Intermediate redraws of one bar carry no information the last one lacks, and a
        flood of them must not cost a parse (or even a string) each.
        """
        text = self._pending + self._decoder.decode(data)
        *lines, rest = text.split("\n")
        segments = [state for state in map(_last_state, lines) if state]
        head, separator, tail = rest.rpartition("\r")
        if separator and not tail:  # ends in "\r": the state before it is complete
            last = _last_state(head)
            if last:
                segments.append(last)
        self._pending = tail if separator else rest
        if len(self._pending) > MAX_SEGMENT_CHARS:  # no separator for too long: emit anyway
            segments.append(self._pending)
            self._pending = ""
        return segments

    def flush(self) -> list[str]:
        rest = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return [rest] if rest else []


def _last_state(line: str) -> str:
    """What a terminal would show of a line: the text after its last carriage return."""
    return line.rstrip("\r").rpartition("\r")[2]


class LogPump:
    """An output sink: appends bytes to ``path`` and hands text segments to ``on_segment``."""

    def __init__(
        self, path: Path, changed: Pulse, on_segment: Callable[[str], object] | None = None
    ) -> None:
        self.path = path
        self._changed = changed
        self._on_segment = on_segment
        self._splitter = SegmentSplitter()
        self._file: trio._file_io.AsyncIOWrapper | None = None  # type: ignore[type-arg]

    async def open(self) -> None:
        # Unbuffered: one write per chunk goes straight to the OS (one thread hop, no flush).
        fd = await trio.to_thread.run_sync(_append_fd, self.path)
        self._file = await trio.open_file(fd, "ab", buffering=0)

    async def __call__(self, data: bytes) -> None:
        assert self._file is not None, "LogPump.open() first"
        await self._file.write(data)
        if self._on_segment is not None:
            for segment in self._splitter.feed(data):
                self._on_segment(segment)
            if self._splitter.pending:
                self._on_segment(self._splitter.pending)  # a bar's newest state
        self._changed.fire()

    async def aclose(self) -> None:
        if self._on_segment is not None:
            for segment in self._splitter.flush():
                self._on_segment(segment)
        if self._file is not None:
            with trio.CancelScope(shield=True):
                await self._file.aclose()
            self._file = None


REPLAY_MAX_BYTES = 8 * 1024 * 1024


def read_segments(path: Path, max_bytes: int) -> list[str]:
    """The segments (as a LogPump saw them) of the last ``max_bytes`` of a log, to rebuild
    state such as progress after a restart; a missing log has none."""
    try:
        with open(open_regular_file(path), "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - max_bytes))
            data = file.read(max_bytes)
    except FileNotFoundError:
        return []
    splitter = SegmentSplitter()
    return splitter.feed(data) + splitter.flush()


def collapse_redraws(text: str) -> list[str]:
    """Lines of ``text`` as a terminal would show them: each line (ended by ``\n`` only)
    reduced to the state after its last ``\r``, so a tqdm bar is one line, not one per redraw.

    Complete lines keep their ``\n`` (as the original server's lists did); a trailing line
    still being redrawn is returned without one. Only ``\n`` ends a line: ``str.splitlines``
    would also split on ``\r`` (and on form feeds, ``\x1c``, ``\u2028``, ...), turning every
    redraw into a line of its own.
    """
    *complete, rest = text.split("\n")
    lines = [_last_state(line) + "\n" for line in complete]
    last = _last_state(rest)
    if last:
        lines.append(last)
    return lines


def read_tail_lines(
    path: Path, max_lines: int, max_bytes: int, secrets: Sequence[str] = ()
) -> list[str]:
    """The last ``max_lines`` collapsed lines, reading at most ``max_bytes`` from the end,
    ``secrets`` masked."""
    if max_lines <= 0:
        return []
    chunk = read_range(path, -max_bytes, max_bytes, margin_bytes(secrets))
    lines = collapse_redraws(chunk.masked_text(secrets))
    if chunk.offset > 0 and lines:
        lines = lines[1:]  # the first line was cut by the window
    return lines[-max_lines:]


@dataclass(frozen=True)
class LogChunk:
    """A byte range of a log file, with up to a margin of the bytes on either side (so a
    secret cut by the window's edge can still be recognised and masked)."""

    offset: int
    next_offset: int
    size: int
    data: bytes
    before: bytes = b""
    after: bytes = b""
    ends_file: bool = True  # nothing was left to read after ``after``

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")

    def masked_text(self, secrets: Sequence[str]) -> str:
        """The window's text with every byte of it that belongs to a secret masked; the
        offsets still count the file's bytes."""
        if not secrets:
            return self.text
        data = mask_window(self.before, self.data, self.after, secrets, open_end=self.ends_file)
        return data.decode("utf-8", errors="replace")

    def cut(self, length: int) -> LogChunk:
        """The first ``length`` bytes of the window (the rest becomes context after it)."""
        return replace(
            self,
            data=self.data[:length],
            after=self.data[length:] + self.after,
            next_offset=self.offset + length,
        )


def read_range(path: Path, offset: int, limit: int, margin_bytes: int = 0) -> LogChunk:
    """Up to ``limit`` bytes from ``offset``, cut back to a UTF-8 boundary, with up to
    ``margin_bytes`` of the bytes before and after it.

    A negative offset counts from the end (``tail``). The returned ``next_offset`` is where
    the next read should start, so a follower never skips or repeats a byte.
    """
    try:
        with open(open_regular_file(path), "rb") as file:
            size = file.seek(0, os.SEEK_END)
            start = max(0, size + offset) if offset < 0 else min(offset, size)
            head = max(0, start - margin_bytes)
            file.seek(head)
            wanted = start - head + limit + margin_bytes
            raw = file.read(wanted)
    except FileNotFoundError:
        return LogChunk(offset=0, next_offset=0, size=0, data=b"")
    skip = start - head
    before, data, after = raw[:skip], raw[skip : skip + limit], raw[skip + limit :]
    if start > 0 and offset < 0:
        skipped = _continuation_prefix(data)
        before, data, start = before + data[:skipped], data[skipped:], start + skipped
    whole = _cut_partial_character(data)
    data, after = whole, data[len(whole) :] + after
    return LogChunk(
        offset=start,
        next_offset=start + len(data),
        size=size,
        data=data,
        before=before,
        after=after,
        ends_file=len(raw) < wanted,
    )


def _continuation_prefix(data: bytes) -> int:
    """How many leading bytes belong to a character that began before the window."""
    index = 0
    while index < min(len(data), 3) and (data[index] & 0xC0) == 0x80:
        index += 1
    return index


def _cut_partial_character(data: bytes) -> bytes:
    """Drop an incomplete multi-byte sequence at the end (the next read picks it up)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue
        if byte & 0x80 == 0:
            return data
        needed = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
        return data if back >= needed else data[:-back]
    return data
