"""An index of one lm-eval samples file, built once and kept on disk, so a page of samples is
a few seeks instead of a re-read of a 100 MB JSONL.

lm-eval (``EvaluationTracker.save_results_samples``) writes one
``samples_<task>_<date_id>.jsonl`` per task beside the results file, one JSON object a line:
``doc_id, doc, target, arguments, resps, filtered_resps, filter, metrics`` (the metric
*names*), ``doc_hash, prompt_hash, target_hash``, and each metric's value at the top level.
A doc appears once per filter. The index holds, per complete line: its byte offset and
length, ``doc_id``, the filter, each 0/1 metric's verdict (1 right, 0 wrong, -1 no value),
and a lowercase search text (prompt, target, responses) in one blob searched with ``find``.

Persisted as one file named by the samples file's path, size, mtime and inode (a changed file
gets a new index), written to a temporary name and renamed (a half-written index is never
read). Reading and building are blocking: callers run them in a worker thread.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import mmap
import os
import re
import secrets as token
import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmeval_trio.errors import NotFound
from lmeval_trio.policy.secrets import mask_text

FORMAT_VERSION = 1
SAMPLES_NAME = re.compile(r"samples_(?P<task>.+)_(?P<stamp>[^_/]+)\.jsonl")
MAX_INDEXES = 256  # index files kept in the cache folder (the least recently used go first)
MAX_SEARCH_CHARS_PER_SAMPLE = 64 * 1024  # of each record's search text (the rest unsearched)
_MAGIC = b"LMTSIDX1"
_SEPARATOR = b"\x00"  # between records' search texts; a query never holds it


class SamplesUnavailable(NotFound):
    """The job has no samples for what was asked (``log_samples`` was off, or no such file)."""


@dataclass(frozen=True)
class FileKey:
    """What identifies one version of a samples file: a change to any part is a new index."""

    path: str
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path, fd: int) -> FileKey:
        info = os.fstat(fd)
        return cls(str(path), info.st_size, info.st_mtime_ns, info.st_ino)

    def digest(self, secrets: Sequence[str]) -> str:
        """The index's name for this file version, and for the secrets its search text hides."""
        raw = json.dumps([FORMAT_VERSION, self.path, self.size, self.mtime_ns, self.inode])
        masked = json.dumps(sorted(secrets))
        return _path_digest(self.path) + "-" + _sha(raw + masked)[:24]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _path_digest(path: str) -> str:
    return _sha(path)[:16]


@dataclass
class SamplesIndex:
    """One samples file's index; ``views`` caches the record lists of asked selections."""

    key: FileKey
    offsets: array[int]  # 'q': byte offset of each record's line
    lengths: array[int]  # 'q': its length without the newline
    doc_ids: array[int]  # 'q'
    filter_ids: array[int]  # 'H': index into ``filters``
    filters: list[str]
    verdicts: dict[str, array[int]]  # 0/1 metric -> 'b' per record: 1, 0, or -1 (no value)
    metrics: list[str]  # every metric a record names, 0/1 or not
    search_starts: array[int]  # 'q': where each record's text starts in ``search``
    search: bytes | mmap.mmap
    skipped_lines: int = 0
    views: dict[tuple[Any, ...], array[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets)

    def select(
        self, filter_name: str | None, metric: str | None, correct: bool | None
    ) -> array[int]:
        """The positions of the records of ``filter_name`` (None: all) whose ``metric`` verdict is
        ``correct`` (None: any), ascending; computed once per selection."""
        key = (filter_name, metric, correct)
        found = self.views.get(key)
        if found is None:
            wanted = None if filter_name is None else self.filters.index(filter_name)
            verdicts = self.verdicts[metric] if metric is not None and correct is not None else None
            want = int(bool(correct))
            found = array(
                "q",
                (
                    i
                    for i in range(len(self))
                    if (wanted is None or self.filter_ids[i] == wanted)
                    and (verdicts is None or verdicts[i] == want)
                ),
            )
            self.views[key] = found
        return found

    def matching(self, query: str) -> array[int]:
        """The positions of the records whose search text holds ``query`` (any case)."""
        needle = query.lower().encode("utf-8")
        key = ("q", needle)
        found = self.views.get(key)
        if found is None:
            found = array("q")
            starts, search = self.search_starts, self.search
            position = starts[0] if starts and needle else len(search)
            while (position := search.find(needle, position)) >= 0:
                record = bisect.bisect_right(starts, position) - 1
                found.append(record)
                if record + 1 >= len(starts):
                    break
                position = starts[record + 1]
            self._remember(key, found)
        return found

    def _remember(self, key: tuple[Any, ...], found: array[int]) -> None:
        """Keep a search's answer for the pages that follow; at most 16 kept per index."""
        searches = [k for k in list(self.views) if k[0] == "q"]
        if len(searches) >= 16:
            self.views.pop(searches[0], None)
        self.views[key] = found


def samples_files(candidates: Sequence[Path]) -> dict[str, Path]:
    """Task name -> its newest samples file among ``candidates`` (a rerun into the same folder
    adds a newer ``date_id``; lm-eval's timestamps sort lexically)."""
    newest: dict[str, tuple[str, Path]] = {}
    for path in candidates:
        match = SAMPLES_NAME.fullmatch(path.name)
        if match is None:
            continue
        task, stamp = match["task"], match["stamp"]
        if task not in newest or (stamp, str(path)) > (newest[task][0], str(newest[task][1])):
            newest[task] = (stamp, path)
    return {task: path for task, (_stamp, path) in sorted(newest.items())}


# -- building ---------------------------------------------------------------------------------


@dataclass
class _Builder:
    """Accumulates the index while the samples file is read once, line by line."""

    key: FileKey
    secrets: Sequence[str]
    offsets: array[int] = field(default_factory=lambda: array("q"))
    lengths: array[int] = field(default_factory=lambda: array("q"))
    doc_ids: array[int] = field(default_factory=lambda: array("q"))
    filter_ids: array[int] = field(default_factory=lambda: array("H"))
    filters: dict[str, int] = field(default_factory=dict)
    values: dict[str, list[Any]] = field(default_factory=dict)  # metric -> value per record
    search_starts: array[int] = field(default_factory=lambda: array("q"))
    search: bytearray = field(default_factory=bytearray)
    skipped: int = 0

    def add(self, offset: int, line: bytes) -> None:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict) or (len(self.filters) >= 65535 and not self._known(record)):
            self.skipped += 1
            return
        position = len(self.offsets)
        self.offsets.append(offset)
        self.lengths.append(len(line))
        doc_id = record.get("doc_id")
        self.doc_ids.append(doc_id if isinstance(doc_id, int) and abs(doc_id) < 2**62 else -1)
        name = str(record.get("filter", "none"))
        self.filter_ids.append(self.filters.setdefault(name, len(self.filters)))
        for metric in _metric_names(record):
            column = self.values.setdefault(metric, [])
            column.extend([None] * (position - len(column)))
            column.append(record.get(metric))
        self.search_starts.append(len(self.search))
        self.search += search_text(record, self.secrets) + _SEPARATOR

    def _known(self, record: dict[str, Any]) -> bool:
        return str(record.get("filter", "none")) in self.filters

    def finish(self) -> SamplesIndex:
        count = len(self.offsets)
        verdicts, names = {}, []
        for metric, column in self.values.items():
            names.append(metric)
            column.extend([None] * (count - len(column)))
            judged = _verdicts(column)
            if judged is not None:
                verdicts[metric] = judged
        return SamplesIndex(
            key=self.key,
            offsets=self.offsets,
            lengths=self.lengths,
            doc_ids=self.doc_ids,
            filter_ids=self.filter_ids,
            filters=list(self.filters),
            verdicts=verdicts,
            metrics=names,
            search_starts=self.search_starts,
            search=bytes(self.search),
            skipped_lines=self.skipped,
        )


def _metric_names(record: dict[str, Any]) -> list[str]:
    names = record.get("metrics")
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and n in record]


def _verdicts(column: list[Any]) -> array[int] | None:
    """Per record 1 (right), 0 (wrong) or -1 (no value) if every value of the metric is 0 or
    1 (a bool, or an int or float equal to 0 or 1); None for any other metric."""
    out = array("b")
    for value in column:
        if value is None:
            out.append(-1)
        elif isinstance(value, bool | int | float) and value in (0, 1):
            out.append(int(value))
        else:
            return None
    return out if any(v >= 0 for v in out) else None


def search_text(record: dict[str, Any], secrets: Sequence[str] = ()) -> bytes:
    """What ``q`` searches in a record: its prompt (each distinct request argument), target and
    responses, lowercased, secrets masked, capped at MAX_SEARCH_CHARS_PER_SAMPLE."""
    parts: list[str] = []
    for key in ("arguments", "target", "resps", "filtered_resps"):
        for text in _strings(record.get(key)):
            if text not in parts:
                parts.append(text)
    text = "\n".join(parts)[:MAX_SEARCH_CHARS_PER_SAMPLE]
    return mask_text(text, secrets).lower().replace("\x00", " ").encode("utf-8", "replace")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    elif value is not None:
        yield str(value)


def build_index(fd: int, key: FileKey, secrets: Sequence[str] = ()) -> SamplesIndex:
    """Read the samples file open at ``fd`` once (only up to its size at ``key``, and only
    complete lines: a line still being written is left for the next index)."""
    builder = _Builder(key, secrets)
    with open(os.dup(fd), "rb", buffering=1024 * 1024) as file:
        file.seek(0)
        offset = 0
        while offset < key.size:
            line = file.readline(key.size - offset)
            if not line.endswith(b"\n"):
                break
            if line.strip():
                builder.add(offset, line.rstrip(b"\r\n"))
            offset += len(line)
    return builder.finish()


# -- persisting -------------------------------------------------------------------------------


def index_path(folder: Path, key: FileKey, secrets: Sequence[str]) -> Path:
    return folder / f"{key.digest(secrets)}.idx"


def save_index(index: SamplesIndex, path: Path) -> None:
    """Write the index to ``path`` through a temporary file and a rename, then remove the
    indexes of older versions of the same samples file."""
    arrays = [index.offsets, index.lengths, index.doc_ids, index.filter_ids, index.search_starts]
    arrays += [index.verdicts[m] for m in sorted(index.verdicts)]
    header = {
        "version": FORMAT_VERSION,
        "key": [index.key.path, index.key.size, index.key.mtime_ns, index.key.inode],
        "filters": index.filters,
        "metrics": index.metrics,
        "verdicts": sorted(index.verdicts),
        "skipped_lines": index.skipped_lines,
        "arrays": [[a.typecode, len(a)] for a in arrays],
    }
    head = json.dumps(header).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{token.token_hex(4)}.tmp")
    try:
        with open(draft, "wb") as file:
            file.write(_MAGIC + struct.pack("<Q", len(head)) + head)
            for values in arrays:
                file.write(values.tobytes())
            file.write(index.search)
            file.flush()
            os.fsync(file.fileno())
        os.replace(draft, path)
    finally:
        draft.unlink(missing_ok=True)
    _remove_older(path)


def _remove_older(path: Path) -> None:
    """Drop the indexes of older versions of the same samples file, and the least recently
    used ones past MAX_INDEXES (deleted jobs' indexes age out so)."""
    prefix = path.name.split("-", 1)[0] + "-"
    ages = []
    for other in path.parent.glob("*.idx"):
        if other == path:
            continue
        if other.name.startswith(prefix):
            other.unlink(missing_ok=True)
            continue
        try:
            ages.append((other.stat().st_mtime_ns, other))
        except OSError:
            continue
    for _mtime, old in sorted(ages)[: max(0, len(ages) + 1 - MAX_INDEXES)]:
        old.unlink(missing_ok=True)


def load_index(path: Path, key: FileKey) -> SamplesIndex | None:
    """The index saved at ``path`` if it is whole and of ``key``'s file; None otherwise (then
    it is rebuilt)."""
    try:
        with open(path, "rb") as file:
            found = _read(file, key)
        if found is not None:
            os.utime(path)  # recently used: kept by _remove_older
        return found
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def _read(file: Any, key: FileKey) -> SamplesIndex | None:
    if file.read(len(_MAGIC)) != _MAGIC:
        return None
    (size,) = struct.unpack("<Q", file.read(8))
    header = json.loads(file.read(size))
    if header["version"] != FORMAT_VERSION or header["key"] != [
        key.path,
        key.size,
        key.mtime_ns,
        key.inode,
    ]:
        return None
    arrays = []
    for typecode, count in header["arrays"]:
        values = array(typecode)
        values.frombytes(file.read(count * values.itemsize))
        if len(values) != count:
            return None
        arrays.append(values)
    start = file.tell()
    search = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    offsets, lengths, doc_ids, filter_ids, starts, *judged = arrays
    return SamplesIndex(
        key=key,
        offsets=offsets,
        lengths=lengths,
        doc_ids=doc_ids,
        filter_ids=filter_ids,
        filters=list(header["filters"]),
        verdicts=dict(zip(header["verdicts"], judged, strict=True)),
        metrics=list(header["metrics"]),
        search_starts=array("q", (s + start for s in starts)),
        search=search,
        skipped_lines=int(header["skipped_lines"]),
    )


# -- reading records --------------------------------------------------------------------------


def read_records(fd: int, index: SamplesIndex, positions: Sequence[int]) -> list[dict[str, Any]]:
    """The records at ``positions``, each read by its own offset and length (nothing else of
    the file is read); a record that no longer parses reads as ``{}``."""
    out = []
    for position in positions:
        raw = os.pread(fd, index.lengths[position], index.offsets[position])
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            record = None
        out.append(record if isinstance(record, dict) else {})
    return out
