"""The task catalog: every task, group and tag lm-eval knows, held in memory for search.

lm-eval's own index builds it, in a child process (``harness/task_catalog.py``), and
``catalog_builds.py`` runs that child; this module is the catalog itself: the entries read
from the child's JSON file, search, lookup by name or pattern, close names, and the tasks a
group or tag runs.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmeval_trio.errors import Unavailable

KINDS = ("task", "group", "tag")
#: Output types a chat-completions model cannot serve (it has no prompt log-probabilities).
LOGLIKELIHOOD_TYPES = frozenset({"loglikelihood", "loglikelihood_rolling", "multiple_choice"})
MAX_SUGGESTIONS = 5
#: Groups nest; expanding one stops at this depth (lm-eval's own groups nest 4 deep).
MAX_GROUP_DEPTH = 16


class CatalogUnavailable(Unavailable):
    """The catalog could not be built; the message says why (a 503 for catalog routes)."""


@dataclass(frozen=True)
class TaskEntry:
    """One task, group or tag of the catalog."""

    name: str
    kind: str
    output_type: str | None
    dataset: dict[str, str | None] | None
    num_fewshot: int | None
    metrics: tuple[str, ...]
    tags: tuple[str, ...]
    subtasks: tuple[str, ...]
    description: str | None
    yaml_path: str | None
    source: str  # "lm_eval", or the include_path folder that defines it
    #: Where its config is: (side file, offset, length); read on demand (read_config).
    config_at: tuple[Path, int, int] | None = field(default=None, repr=False)
    haystack: str = field(default="", repr=False)

    def summary(self) -> dict[str, Any]:
        """The entry as ``GET /tasks`` lists it."""
        return {
            "name": self.name,
            "kind": self.kind,
            "output_type": self.output_type,
            "dataset": self.dataset,
            "num_fewshot": self.num_fewshot,
            "metrics": list(self.metrics),
            "tags": list(self.tags),
            "subtasks": list(self.subtasks),
            "description": self.description,
            "yaml_path": self.yaml_path,
            "source": self.source,
        }

    def detail(self) -> dict[str, Any]:
        """The entry with its config after includes, as ``GET /tasks/{name}`` shows it
        (reads the side file: call from a thread)."""
        return {**self.summary(), "config": self.read_config()}

    def read_config(self) -> Any:
        if self.config_at is None:
            return None
        path, offset, length = self.config_at
        try:
            with open(path, "rb") as file:
                file.seek(offset)
                return json.loads(file.read(length))
        except (OSError, ValueError) as error:
            why = f"the config of {self.name!r} is unreadable: {error}"
            raise CatalogUnavailable(why) from None


class Catalog:
    """Entries by name (a later source overrides an earlier one, as lm-eval merges its roots),
    listed in name order."""

    def __init__(self, entries: Iterable[TaskEntry]) -> None:
        self._by_name = {e.name: e for e in entries}
        self.entries = sorted(self._by_name.values(), key=lambda e: e.name)
        self.names = [e.name for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str) -> TaskEntry | None:
        return self._by_name.get(name)

    def merged(self, other: Catalog) -> Catalog:
        """This catalog with ``other``'s entries on top (an include folder over lm-eval's)."""
        return Catalog([*self.entries, *other.entries])

    def search(
        self, query: str | None, kind: str | None, output_type: str | None
    ) -> list[TaskEntry]:
        """Entries whose name, description or tags hold ``query`` (any case), filtered."""
        needle = (query or "").casefold()
        return [
            e
            for e in self.entries
            if (kind is None or e.kind == kind)
            and (output_type is None or e.output_type == output_type)
            and needle in e.haystack
        ]

    def matches(self, pattern: str) -> list[str]:
        """Names ``pattern`` selects the way lm-eval's ``match_tasks`` does (fnmatch)."""
        if pattern in self._by_name:
            return [pattern]
        return fnmatch.filter(self.names, pattern)

    def suggestions(self, name: str) -> list[str]:
        """Up to MAX_SUGGESTIONS close names (difflib; CPU-bound: call from a thread)."""
        return difflib.get_close_matches(name[:200], self.names, n=MAX_SUGGESTIONS, cutoff=0.6)

    def leaves(self, name: str) -> Iterator[TaskEntry]:
        """The tasks ``name`` runs: itself, or a group's or tag's members, recursively."""
        seen: set[str] = set()
        stack = [(name, 0)]
        while stack:
            current, depth = stack.pop()
            entry = self._by_name.get(current)
            if entry is None or current in seen or depth > MAX_GROUP_DEPTH:
                continue
            seen.add(current)
            if entry.kind == "task":
                yield entry
            stack.extend((member, depth + 1) for member in entry.subtasks)


def entry_from_json(raw: dict[str, Any], source: str, configs: Path) -> TaskEntry:
    """A catalog entry from the child's JSON (our own file; shapes still checked)."""
    name = str(raw["name"])
    description = raw.get("description") if isinstance(raw.get("description"), str) else None
    tags = tuple(str(t) for t in raw.get("tags") or ())
    kind = raw.get("kind") if raw.get("kind") in KINDS else "task"
    return TaskEntry(
        name=name,
        kind=str(kind),
        output_type=_optional_text(raw.get("output_type")),
        dataset=raw.get("dataset") if isinstance(raw.get("dataset"), dict) else None,
        num_fewshot=raw.get("num_fewshot") if isinstance(raw.get("num_fewshot"), int) else None,
        metrics=tuple(str(m) for m in raw.get("metrics") or ()),
        tags=tags,
        subtasks=tuple(str(s) for s in raw.get("subtasks") or ()),
        description=description,
        yaml_path=_optional_text(raw.get("yaml_path")),
        source=source,
        config_at=_config_at(raw.get("config_at"), configs),
        haystack="\n".join([name, description or "", *tags]).casefold(),
    )


def _config_at(value: Any, configs: Path) -> tuple[Path, int, int] | None:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (configs, value[0], value[1])
    return None


def _optional_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def read_catalog_file(path: Path, source: str) -> Catalog:
    """Parse one file the child wrote (worker thread: ~25 MB for lm-eval's tasks)."""
    with open(path, "rb") as file:
        document = json.load(file)
    entries = document.get("entries") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path} holds no catalog entries")
    configs = path.with_suffix(".configs.jsonl")
    return Catalog(
        entry_from_json(raw, source, configs) for raw in entries if isinstance(raw, dict)
    )
