"""An index of one lm-eval samples file, built once and kept on disk, so a page of samples is
a few seeks instead of a re-read of a 100 MB JSONL.

lm-eval (``EvaluationTracker.save_results_samples``) writes one
``samples_<task>_<date_id>.jsonl`` per task beside the results file, one JSON object a line:
``doc_id, doc, target, arguments, resps, filtered_resps, filter, metrics`` (the metric
*names*), ``doc_hash, prompt_hash, target_hash``, and each metric's value at the top level.
A doc appears once per filter. The index holds, per complete line: its byte offset and
length, ``doc_id``, the filter, each 0/1 metric's verdict (1 right, 0 wrong, -1 no value),
and its lowercase search text (prompt, target, responses). The search text is kept as its
distinct lines (few-shot examples, a prompt repeated per choice, a doc repeated per filter are
stored once) in one blob searched with ``find``, and each line lists the records holding it:
a query matches within one line, and scans a fraction of the file.

Persisted as one file named by the samples file's path, size, mtime and inode (a changed file
gets a new index), written to a temporary name and renamed (a half-written index is never
read). Reading and building are blocking: callers run them in a worker thread.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import re
import secrets as token
import struct
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmeval_trio.errors import NotFound
from lmeval_trio.policy.secrets import mask_text

FORMAT_VERSION = 2
SAMPLES_NAME = re.compile(r"samples_(?P<task>.+)_(?P<stamp>[^_/]+)\.jsonl")
MAX_RECORD_BYTES = 64 * 1024 * 1024  # a longer line is skipped (and counted), never loaded
MAX_INDEXES = 256  # index files kept in the cache folder (the least recently used go first)
MAX_SEARCH_CHARS_PER_SAMPLE = 64 * 1024  # of each record's search text (the rest unsearched)
_MAGIC = b"LMTSIDX1"
_SEPARATOR = b"\x00"  # between the distinct lines; a query never holds it


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
    line_starts: array[int]  # 'q': where each distinct line starts in ``lines`` (+ the end)
    lines: bytes  # the distinct lowercase lines of every record's search text, \0-separated
    holders_at: array[int]  # 'q': line i's records are holders[holders_at[i]:holders_at[i+1]]
    holders: array[int]  # 'i': record positions, ascending per line
    skipped_lines: int = 0
    views: dict[tuple[Any, ...], array[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets)

    def select(
        self, filter_name: str | None, metric: str | None, correct: bool | None
    ) -> array[int]:
        """The positions of the records of ``filter_name`` (None: all) whose ``metric`` verdict
        is ``correct`` (None: any), ascending; computed once per selection."""
        key = (filter_name, metric, correct)
        found = self.views.get(key)
        if found is None:
            admits = self.admits(filter_name, metric, correct)
            found = array("q", filter(admits, range(len(self))))
            self.views[key] = found
        return found

    def admits(
        self, filter_name: str | None, metric: str | None, correct: bool | None
    ) -> Callable[[int], bool]:
        """Whether the record at a position is of ``filter_name`` with that verdict."""
        wanted = None if filter_name is None else self.filters.index(filter_name)
        verdicts = self.verdicts[metric] if metric is not None and correct is not None else None
        want, filters = int(bool(correct)), self.filter_ids
        if wanted is None and verdicts is None:
            return lambda _position: True
        if verdicts is None:
            return lambda position: filters[position] == wanted
        if wanted is None:
            return lambda position: verdicts[position] == want
        return lambda position: filters[position] == wanted and verdicts[position] == want

    def matching(self, query: str) -> array[int]:
        """The positions of the records one of whose lines holds ``query`` (any case)."""
        needle = query.lower().encode("utf-8")
        key = ("q", needle)
        found = self.views.get(key)
        if found is None:
            records: set[int] = set()
            starts, lines, holders, at = self.line_starts, self.lines, self.holders, self.holders_at
            position = 0 if needle else len(lines)
            while (position := lines.find(needle, position)) >= 0:
                line = bisect.bisect_right(starts, position) - 1
                records.update(holders[at[line] : at[line + 1]])
                position = starts[line + 1]
            found = array("q", sorted(records))
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
    line_ids: dict[bytes, int] = field(default_factory=dict)  # distinct line -> its number
    holding: list[int] = field(default_factory=list)  # flat (line, record) pairs
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
        for line in set(search_text(record, self.secrets).split(b"\n")):
            if line:
                number = self.line_ids.setdefault(line, len(self.line_ids))
                self.holding += (number, position)

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
            **self._lines(),
            skipped_lines=self.skipped,
        )

    def _lines(self) -> dict[str, Any]:
        """The distinct lines as one blob, and each line's records (ascending)."""
        starts, blob = array("q"), bytearray()
        for line in self.line_ids:
            starts.append(len(blob))
            blob += line + _SEPARATOR
        starts.append(len(blob))
        counts = [0] * (len(self.line_ids) + 1)
        for number in self.holding[::2]:
            counts[number + 1] += 1
        at = array("q", itertools.accumulate(counts))
        holders, filled = array("i", bytes(4 * len(self.holding) // 2)), array("q", at)
        for number, record in zip(self.holding[::2], self.holding[1::2], strict=True):
            holders[filled[number]] = record
            filled[number] += 1
        return {"line_starts": starts, "lines": bytes(blob), "holders_at": at, "holders": holders}


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
            line = file.readline(min(key.size - offset, MAX_RECORD_BYTES + 1))
            if len(line) > MAX_RECORD_BYTES:  # never held whole: skipped, counted
                rest = _skip_line(file, key.size - offset - len(line))
                if rest is None:
                    break
                builder.skipped += 1
                offset += len(line) + rest
                continue
            if not line.endswith(b"\n"):
                break
            if line.strip():
                builder.add(offset, line.rstrip(b"\r\n"))
            offset += len(line)
    return builder.finish()


def _skip_line(file: Any, left: int) -> int | None:
    """Read past the rest of an overlong line; the bytes it took, or None if the file ends
    first (a line still being written)."""
    taken = 0
    while taken < left:
        chunk = file.readline(min(left - taken, 1024 * 1024))
        taken += len(chunk)
        if chunk.endswith(b"\n"):
            return taken
        if not chunk:
            break
    return None


# -- persisting -------------------------------------------------------------------------------


def index_path(folder: Path, key: FileKey, secrets: Sequence[str]) -> Path:
    return folder / f"{key.digest(secrets)}.idx"


def save_index(index: SamplesIndex, path: Path) -> None:
    """Write the index to ``path`` through a temporary file and a rename, then remove the
    indexes of older versions of the same samples file."""
    arrays = [index.offsets, index.lengths, index.doc_ids, index.filter_ids]
    arrays += [index.line_starts, index.holders_at, index.holders]
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
            file.write(index.lines)
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
    offsets, lengths, doc_ids, filter_ids, starts, holders_at, holders, *judged = arrays
    lines = file.read(starts[-1] if starts else 0)
    if len(starts) < 1 or len(lines) != starts[-1]:
        return None
    return SamplesIndex(
        key=key,
        offsets=offsets,
        lengths=lengths,
        doc_ids=doc_ids,
        filter_ids=filter_ids,
        filters=list(header["filters"]),
        verdicts=dict(zip(header["verdicts"], judged, strict=True)),
        metrics=list(header["metrics"]),
        line_starts=starts,
        lines=lines,
        holders_at=holders_at,
        holders=holders,
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
