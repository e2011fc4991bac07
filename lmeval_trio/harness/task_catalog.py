"""Child side of the task catalog: lm-eval's own task index, flattened to JSON, cached on disk.

Run as ``python -m lmeval_trio.harness.task_catalog --index-cache DIR --catalog-cache DIR
[--root builtin|FOLDER]...``. For each root it prints the path of a JSON file holding that
root's entries, built by ``TaskIndex.build`` (lm-eval's own walk, YAML loader and
include resolution; the built-in root through the fast-start index cache) and kept beside
it, keyed like it: the built-in catalog on fastrun's cache key (lm-eval version, the tasks
tree's stat fingerprint, the index sources), a folder's on its real path and fingerprint.
A hit costs a stat walk and no lm-eval import, so the server never parses 14,000 YAML files
per request.

lm-eval internals used (what breaks if they change): ``lm_eval.tasks._index.TaskIndex.build``
(the index), ``Entry.name/kind/yaml_path/cfg/tags`` and ``Kind.TASK/PY_TASK/GROUP/TAG``;
the entry shape is read defensively, so a renamed field gives nulls, never a crash. YAML
``!function`` values stay text (``resolve_func=False``): building a catalog runs no task code.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lmeval_trio.harness.fastrun._cache import build_key, fingerprint_tree

#: Bump when the entry layout changes (old files are then simply not found).
CATALOG_FORMAT = 2
BUILTIN = "builtin"
#: Longest description kept (a YAML ``description`` is sometimes a whole prompt preamble).
MAX_DESCRIPTION_CHARS = 300
#: A catalog file unused this long is deleted by the next build.
STALE_AFTER_S = 7 * 24 * 3600.0
_KINDS = {"TASK": "task", "PY_TASK": "task", "GROUP": "group", "TAG": "tag"}


def lm_eval_tasks_dir() -> Path:
    """lm-eval's built-in tasks folder, found without importing lm-eval (which takes seconds)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("lm_eval is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def catalog_digest(root: Path, builtin: bool) -> str:
    """The cache key of one root's catalog (see the module docstring)."""
    tasks_dir = lm_eval_tasks_dir()
    version = importlib.metadata.version("lm_eval")
    sources = {name: tasks_dir / name for name in ("_index.py", "_yaml_loader.py")}
    if builtin:
        material = build_key(tasks_dir, lm_eval_version=version, source_files=sources).material
    else:
        tree, count = fingerprint_tree(root)
        material = {"lm_eval_version": version, "root": os.fspath(root), "tree": tree, "n": count}
    blob = json.dumps({"catalog": CATALOG_FORMAT, **material}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def build_entries(root: Path, index_cache: Path | None) -> list[dict[str, Any]]:
    """Every entry lm-eval's index holds for ``root``, as catalog dicts (sorted by name)."""
    if index_cache is not None:
        from lmeval_trio.harness.fastrun import _patch
        from lmeval_trio.harness.fastrun._log import get_logger

        _patch.install(index_cache, get_logger())
    from lm_eval.tasks._index import TaskIndex

    index = TaskIndex.build([root])
    readmes: dict[Path, str | None] = {}
    return [entry_dict(e, root, readmes) for _, e in sorted(index.items())]


def entry_dict(entry: Any, root: Path, readmes: dict[Path, str | None]) -> dict[str, Any]:
    """One catalog entry from an lm-eval ``Entry`` (its config after includes)."""
    cfg = getattr(entry, "cfg", None)
    cfg = cfg if isinstance(cfg, dict) else {}
    kind = _KINDS.get(getattr(getattr(entry, "kind", None), "name", ""), "task")
    members = sorted(str(t) for t in getattr(entry, "tags", None) or ())
    yaml_path = getattr(entry, "yaml_path", None)
    return {
        "name": str(entry.name),
        "kind": kind,
        "output_type": _text(cfg.get("output_type")),
        "dataset": _dataset(cfg),
        "num_fewshot": cfg.get("num_fewshot") if isinstance(cfg.get("num_fewshot"), int) else None,
        "metrics": _metrics(cfg.get("metric_list") or cfg.get("aggregate_metric_list")),
        "tags": [] if kind == "tag" else members,
        "subtasks": _members(kind, members, cfg),
        "description": _description(cfg, yaml_path, readmes),
        "yaml_path": _relative(yaml_path, root),
        "config": cfg or None,
    }


def _members(kind: str, tag_members: list[str], cfg: Mapping[str, Any]) -> list[str]:
    """A tag's tasks (lm-eval keeps them in ``Entry.tags``) or a group's ``task`` list."""
    if kind == "tag":
        return tag_members
    return _subtasks(cfg.get("task")) if kind == "group" else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dataset(cfg: Mapping[str, Any]) -> dict[str, str | None] | None:
    path, name = _text(cfg.get("dataset_path")), _text(cfg.get("dataset_name"))
    return None if path is None and name is None else {"path": path, "name": name}


def _metrics(metric_list: Any) -> list[str]:
    if not isinstance(metric_list, list):
        return []
    names = (m.get("metric") if isinstance(m, dict) else m for m in metric_list)
    return [str(n) for n in names if isinstance(n, str)]


def _subtasks(tasks: Any) -> list[str]:
    """A group's members: names, or inline configs named by their ``task``/``group`` key."""
    items = tasks if isinstance(tasks, list) else [tasks] if tasks else []
    named = (i.get("task") or i.get("group") if isinstance(i, dict) else i for i in items)
    return [n for n in named if isinstance(n, str)]


def _description(
    cfg: Mapping[str, Any], yaml_path: Path | None, readmes: dict[Path, str | None]
) -> str | None:
    """The YAML's own ``description``, else the first line of its folder's README."""
    own = _text(cfg.get("description"))
    if own and own.strip():
        return _cut(own.strip())
    if yaml_path is None:
        return None
    folder = Path(yaml_path).parent
    if folder not in readmes:
        readmes[folder] = _readme_line(folder / "README.md")
    return readmes[folder]


def _readme_line(readme: Path) -> str | None:
    try:
        with open(readme, encoding="utf-8", errors="replace") as file:
            for line in file:
                text = line.strip().lstrip("#").strip()
                if text:
                    return _cut(text)
    except OSError:
        return None
    return None


def _cut(text: str) -> str:
    return text if len(text) <= MAX_DESCRIPTION_CHARS else text[:MAX_DESCRIPTION_CHARS] + "…"


def _relative(path: Any, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def write_atomically(target: Path, payload: bytes) -> None:
    """Publish ``payload`` at ``target`` whole (a temp file in the same folder, renamed)."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def catalog_file(root_arg: str, index_cache: Path, catalog_cache: Path) -> Path:
    """The catalog file of one root, built now unless the cache holds it already."""
    builtin = root_arg == BUILTIN
    root = lm_eval_tasks_dir() if builtin else Path(os.path.realpath(root_arg))
    digest = catalog_digest(root, builtin)
    where = hashlib.sha256(os.fsencode(root)).hexdigest()[:12]
    prefix = f"{'builtin' if builtin else 'folder'}-{where}-"
    target = catalog_cache / f"{prefix}{digest}.json"
    configs = target.with_suffix(".configs.jsonl")
    if target.is_file():
        for used in (target, configs):  # in use: not stale (prune)
            with contextlib.suppress(OSError):
                os.utime(used)
        return target
    prune(catalog_cache, prefix)
    entries = build_entries(root, index_cache if builtin else None)
    write_atomically(configs, _split_configs(entries))
    document = {"format": CATALOG_FORMAT, "root": os.fspath(root), "entries": entries}
    write_atomically(target, json.dumps(document, ensure_ascii=False).encode())
    return target


def prune(catalog_cache: Path, prefix: str) -> None:
    """Drop the older catalogs of the same root (its earlier fingerprints) and any catalog
    unused for STALE_AFTER_S (task folders long gone), so the cache does not grow forever."""
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(catalog_cache) as it:
        for entry in it:
            with contextlib.suppress(OSError):
                stale = now - entry.stat().st_mtime > STALE_AFTER_S
                if entry.name.startswith(prefix) or stale:
                    os.unlink(entry.path)


def _split_configs(entries: list[dict[str, Any]]) -> bytes:
    """Move each entry's config to one JSON line of a side file, the entry keeping its
    ``config_at`` (offset, length): the server holds the summaries (~8 MB of JSON) and
    reads one config when it is asked for (the configs are twice that)."""
    lines = []
    offset = 0
    for entry in entries:
        config = entry.pop("config")
        if config is None:
            entry["config_at"] = None
            continue
        line = json.dumps(config, default=str, ensure_ascii=False).encode() + b"\n"
        entry["config_at"] = [offset, len(line)]
        lines.append(line)
        offset += len(line)
    return b"".join(lines)


def main(argv: Iterable[str] | None = None) -> None:
    """Print ``{"catalogs": [path, ...]}``, one file per ``--root`` in order."""
    parser = argparse.ArgumentParser(prog="python -m lmeval_trio.harness.task_catalog")
    parser.add_argument("--index-cache", type=Path, required=True)
    parser.add_argument("--catalog-cache", type=Path, required=True)
    parser.add_argument("--root", action="append", default=[])
    args = parser.parse_args(None if argv is None else list(argv))
    files = [os.fspath(catalog_file(r, args.index_cache, args.catalog_cache)) for r in args.root]
    sys.stdout.write(json.dumps({"catalogs": files}) + "\n")


if __name__ == "__main__":
    main()
