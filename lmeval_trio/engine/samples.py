"""The samples explorer: pages of a finished job's per-sample records, filtered and searched
through each samples file's index (outputs/samples_index.py), built once per file version.

One build at a time per file: a request arriving while its file is being indexed waits for
that build instead of starting its own. Builds, loads and page reads run in worker threads;
the few newest indexes stay in memory (their search text memory-mapped).
"""

from __future__ import annotations

import bisect
import logging
import os
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from lmeval_trio.errors import Conflict, InvalidParameter
from lmeval_trio.jobs.record import JobRecord
from lmeval_trio.jobs.status import TERMINAL
from lmeval_trio.outputs import results
from lmeval_trio.outputs import samples_index as indexes
from lmeval_trio.outputs.logs import NotALog, open_inside
from lmeval_trio.outputs.samples_index import FileKey, SamplesIndex, SamplesUnavailable
from lmeval_trio.policy.secrets import mask_json

log = logging.getLogger("lmeval_trio.samples")

MAX_LIMIT = 200
MAX_PAGE_BYTES = 32 * 1024 * 1024  # a page stops early past this (at least one sample)
KEEP_IN_MEMORY = 8


@dataclass(frozen=True)
class SamplesQuery:
    """One page request, its values already parsed (the route judged their form)."""

    task: str | None = None
    limit: int = 20
    cursor: str | None = None
    offset: int | None = None
    correct: bool | None = None
    q: str | None = None
    filter: str | None = None
    metric: str | None = None


class SamplesExplorer:
    """Answers sample pages for every job; owns the indexes in memory and the running builds."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder  # the server's own cache folder: jobs can neither read nor write it
        self._loaded: OrderedDict[str, SamplesIndex] = OrderedDict()
        self._building: dict[str, trio.Event] = {}
        self.builds = 0  # indexes built (not loaded): for tests and the benchmark

    async def page(
        self, record: JobRecord, query: SamplesQuery, secrets: tuple[str, ...]
    ) -> dict[str, Any]:
        if record.status not in TERMINAL:
            raise Conflict(
                f"job {record.id} is {record.status.value}; lm-eval writes its samples when it "
                "ends, so they come then"
            )
        files = await trio.to_thread.run_sync(_samples_files, record)
        task, path = _pick_task(record, files, query.task)
        fd, index = await self._index(record, path, secrets)
        try:
            answer = await trio.to_thread.run_sync(_answer, fd, index, query)
        finally:
            os.close(fd)
        answer.update(job_id=record.id, task=task, tasks=list(files))
        answer["samples"] = mask_json(answer["samples"], secrets)
        return answer

    async def _index(
        self, record: JobRecord, path: Path, secrets: tuple[str, ...]
    ) -> tuple[int, SamplesIndex]:
        """An open descriptor of the samples file and its index (loaded, or built once)."""
        while True:
            fd, key = await trio.to_thread.run_sync(_open, record, path)
            name = key.digest(secrets)
            found = self._loaded.get(name)
            if found is not None:
                self._loaded.move_to_end(name)
                return fd, found
            running = self._building.get(key.path)
            if running is None:
                break
            os.close(fd)
            await running.wait()  # the same file's build: then look again
        done = self._building[key.path] = trio.Event()
        try:
            index, built = await trio.to_thread.run_sync(self._load_or_build, fd, key, secrets)
        except BaseException:
            os.close(fd)
            raise
        finally:
            del self._building[key.path]
            done.set()
        self.builds += built
        self._loaded[name] = index
        while len(self._loaded) > KEEP_IN_MEMORY:
            self._loaded.popitem(last=False)
        return fd, index

    def _load_or_build(
        self, fd: int, key: FileKey, secrets: tuple[str, ...]
    ) -> tuple[SamplesIndex, bool]:
        where = indexes.index_path(self.folder, key, secrets)
        found = indexes.load_index(where, key)
        if found is not None:
            return found, False
        index = indexes.build_index(fd, key, secrets)
        if index.skipped_lines:
            log.warning(
                "%s: %d lines skipped (not JSON objects, or too long)",
                key.path,
                index.skipped_lines,
            )
        try:
            indexes.save_index(index, where)
        except OSError as error:  # a full or read-only cache: served from memory, rebuilt later
            log.warning("cannot save the samples index %s: %s", where, error)
            return index, True
        return indexes.load_index(where, key) or index, True


def _samples_files(record: JobRecord) -> dict[str, Path]:
    return indexes.samples_files(results.output_files(record))


def _pick_task(record: JobRecord, files: dict[str, Path], task: str | None) -> tuple[str, Path]:
    if not files:
        raise SamplesUnavailable(
            f"job {record.id} logged no samples: submit it with log_samples=true "
            "(lm-eval writes samples_<task>_<time>.jsonl only then)"
        )
    if task is None:
        if len(files) > 1:
            raise InvalidParameter(
                "query", "task", f"the job has samples of several tasks; name one of {list(files)}"
            )
        task = next(iter(files))
    if task not in files:
        raise InvalidParameter(
            "query", "task", f"job {record.id} has no samples of {task!r}; it has {list(files)}"
        )
    return task, files[task]


def _open(record: JobRecord, path: Path) -> tuple[int, FileKey]:
    """The samples file, opened only if it really lies in the job's folders (no symlink)."""
    try:
        fd = open_inside(path, results.job_roots(record))
    except (NotALog, FileNotFoundError):
        raise SamplesUnavailable(f"job {record.id}: samples file {path.name} is gone") from None
    return fd, FileKey.of(path, fd)


def _answer(fd: int, index: SamplesIndex, query: SamplesQuery) -> dict[str, Any]:
    """The page ``query`` asks for (runs in a worker thread)."""
    metric = _metric(index, query)
    if query.filter is not None and query.filter not in index.filters:
        raise InvalidParameter(
            "query", "filter", f"no filter {query.filter!r}; the task has {index.filters}"
        )
    if query.q:  # the search's records (few, usually), then the other conditions
        admits = index.admits(query.filter, metric, query.correct)
        view = array("q", filter(admits, index.matching(query.q)))
    else:
        view = index.select(query.filter, metric, query.correct)
    start = _start(index, view, query)
    positions: list[int] = []
    size = 0
    for position in view[start : start + query.limit]:
        if positions and size + index.lengths[position] > MAX_PAGE_BYTES:
            break
        positions.append(position)
        size += index.lengths[position]
    end = start + len(positions)
    next_cursor = f"{_cursor_tag(index)}.{view[end]}" if end < len(view) else None
    records = indexes.read_records(fd, index, positions)
    return {
        "samples": [_item(index, p, r) for p, r in zip(positions, records, strict=True)],
        "total": len(view),
        "offset": start,
        "next_cursor": next_cursor,
        "filters": index.filters,
        "metrics": index.metrics,
        "binary_metrics": sorted(index.verdicts),
    }


def _metric(index: SamplesIndex, query: SamplesQuery) -> str | None:
    """The 0/1 metric ``correct`` judges: the one named, or the task's only one."""
    binary = sorted(index.verdicts)
    if query.metric is not None and query.metric not in index.metrics:
        raise InvalidParameter(
            "query", "metric", f"no metric {query.metric!r}; the task has {index.metrics}"
        )
    if query.correct is None:
        return query.metric
    if query.metric is not None and query.metric not in index.verdicts:
        raise InvalidParameter(
            "query",
            "correct",
            f"{query.metric!r} is not a 0/1 metric (its values are not all 0 or 1), so no "
            f"sample is right or wrong by it; 0/1 metrics: {binary}",
        )
    if query.metric is None and len(binary) != 1:
        why = "has none" if not binary else f"has several ({binary}): name one with metric="
        raise InvalidParameter("query", "correct", f"needs a 0/1 metric; the task {why}")
    return query.metric or binary[0]


def _cursor_tag(index: SamplesIndex) -> str:
    return index.key.digest(())[-8:]


def _start(index: SamplesIndex, view: array[int], query: SamplesQuery) -> int:
    """Where in ``view`` the page begins: at ``offset``, or the cursor's record."""
    if query.cursor is None:
        return min(query.offset or 0, len(view))
    tag, _, raw = query.cursor.partition(".")
    if tag != _cursor_tag(index) or not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise InvalidParameter(
            "query",
            "cursor",
            "not a cursor of this samples file (it was changed or rewritten since): start "
            "again from the first page",
        )
    return bisect.bisect_left(view, int(raw))


def _item(index: SamplesIndex, position: int, record: dict[str, Any]) -> dict[str, Any]:
    names = [m for m in record.get("metrics") or [] if isinstance(m, str) and m in record]
    return {
        "doc_id": record.get("doc_id", index.doc_ids[position]),
        "filter": index.filters[index.filter_ids[position]],
        "prompt": record.get("arguments"),
        "target": record.get("target"),
        "resps": record.get("resps"),
        "filtered_resps": record.get("filtered_resps"),
        "metrics": {name: record[name] for name in names},
        "correct": {
            name: bool(verdicts[position]) if verdicts[position] >= 0 else None
            for name, verdicts in index.verdicts.items()
        },
        "doc": record.get("doc"),
        "doc_hash": record.get("doc_hash"),
        "prompt_hash": record.get("prompt_hash"),
        "target_hash": record.get("target_hash"),
    }
