"""Serve lm_eval's built-in task index from the cache, inside lm_eval's own build.

What is patched, and why it cannot change results
-------------------------------------------------
``TaskManager.__init__`` calls ``TaskIndex.build([<lm_eval/tasks>, *include_paths])``.
Its loop indexes each root into a fresh ``path_index`` dict
(``_iter_yaml_files`` -> ``load_yaml`` -> ``process_cfg``) and then merges the
roots in order, later roots overriding earlier ones with a warning.

We keep ``build`` itself (so include paths, their precedence and every merge
warning are lm_eval's own code) and wrap the three per-file steps it looks up
at call time, only for the built-in root:

* ``TaskIndex._iter_yaml_files(<lm_eval/tasks>)`` yields one marker path
  instead of 14,000 YAML paths;
* ``_index.load_yaml(marker)`` returns a sentinel instead of parsing;
* ``TaskIndex.process_cfg(sentinel, marker, path_index)`` fills ``path_index``
  with the cached entries (same objects, same insertion order as a real
  build) and replays the log records that indexing that root produced.

``TaskIndex.build`` is wrapped only to learn ``resolve_includes`` (a cache
built with includes resolved is used only for such builds). Every other call
passes straight through. On a cache miss the cached entries come from the
original ``build`` run on the built-in root alone, whose result is by
construction that root's ``path_index``.

All of this is applied only after checking the lm_eval version and the exact
source (SHA-256) of each wrapped function against a validated table; on any
surprise fastrun logs a WARNING and leaves lm_eval completely untouched.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.abc
import importlib.metadata
import inspect
import logging
import pickle
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

from lmeval_trio.harness.fastrun._cache import CacheKey, CacheReject, IndexCache, build_key

INDEX_MODULE = "lm_eval.tasks._index"
LOADER_MODULE = "lm_eval.tasks._yaml_loader"

#: Staticmethods of ``TaskIndex`` that get wrapped (looked up by name, so a
#: renamed internal is reported as missing rather than silently skipped).
TASKINDEX_METHODS: tuple[str, ...] = ("build", "_iter_yaml_files", "process_cfg")
#: Module-level function of ``lm_eval.tasks._index`` that gets wrapped.
MODULE_FUNCTIONS: tuple[str, ...] = ("load_yaml",)

#: Parameter (name, kind) lists we rely on when calling the originals.
EXPECTED_PARAMS: dict[str, tuple[tuple[str, str], ...]] = {
    "build": (("paths", "POSITIONAL_OR_KEYWORD"), ("resolve_includes", "KEYWORD_ONLY")),
    "_iter_yaml_files": (("root", "POSITIONAL_OR_KEYWORD"),),
    "process_cfg": (
        ("cfg", "POSITIONAL_OR_KEYWORD"),
        ("path", "POSITIONAL_OR_KEYWORD"),
        ("index_", "POSITIONAL_OR_KEYWORD"),
    ),
    "load_yaml": (
        ("path", "POSITIONAL_OR_KEYWORD"),
        ("resolve_func", "KEYWORD_ONLY"),
        ("recursive", "KEYWORD_ONLY"),
        ("_seen", "KEYWORD_ONLY"),
    ),
}

#: SHA-256 of ``inspect.getsource`` of every wrapped function, per validated
#: lm_eval version. Regenerate with ``python -m lmeval_trio.harness.fastrun._patch``
#: after reviewing the new source against the module docstring.
VALIDATED_SOURCES: dict[str, dict[str, str]] = {
    # 0.4.12's four functions are the same source as 0.4.13's.
    "0.4.12": {
        "build": "9ebd61be6daa4344e45f22d7a5479d7602e10bc56d1d0cbd675a4de2f30949ec",
        "_iter_yaml_files": "eda87e479c381378fc624ab28d13bad8a73bc422922371e782a75aa73fff9add",
        "process_cfg": "7325e0f99e9b2ae2836738c4bc89b286e2c65a9495bc41d3ad0f11190d6048c7",
        "load_yaml": "26dc6213547a6834501f609147577567ab33d05226e4742ac17306e5ca607192",
    },
    "0.4.13": {
        "build": "9ebd61be6daa4344e45f22d7a5479d7602e10bc56d1d0cbd675a4de2f30949ec",
        "_iter_yaml_files": "eda87e479c381378fc624ab28d13bad8a73bc422922371e782a75aa73fff9add",
        "process_cfg": "7325e0f99e9b2ae2836738c4bc89b286e2c65a9495bc41d3ad0f11190d6048c7",
        "load_yaml": "26dc6213547a6834501f609147577567ab33d05226e4742ac17306e5ca607192",
    },
}

#: Debug lines ``build`` emits itself: the outer (real) build still emits them,
#: so the nested cold build of the built-in root must neither show nor cache them.
BUILD_OWN_LOG_TEMPLATES = frozenset(
    {"Building task index from %s", "Built task index with %d entries"}
)

#: (levelno, pathname, lineno, funcName, message) of one log call made while
#: indexing the built-in root; replayed on cache hits so stderr matches stock.
LogRecordTuple = tuple[int, str, int, str, str]


class Unsupported(Exception):
    """lm_eval's internals are not the ones fastrun was validated against."""


@dataclass(frozen=True)
class Targets:
    """The validated lm_eval internals, captured before anything is patched."""

    version: str
    index_mod: Any  # lm_eval.tasks._index (untyped; attributes are reassigned)
    task_index: Any
    entry_cls: type
    log: logging.Logger
    orig_build: Callable[..., Any]
    orig_iter: Callable[..., Any]
    orig_process: Callable[..., Any]
    orig_load: Callable[..., Any]
    default_root: Path
    source_files: dict[str, Path]


def source_digest(func: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()


def _param_spec(func: Callable[..., Any]) -> tuple[tuple[str, str], ...]:
    return tuple((p.name, p.kind.name) for p in inspect.signature(func).parameters.values())


def _raw_functions(index_mod: ModuleType) -> dict[str, Callable[..., Any]]:
    """Look up the functions to wrap, by name; raise Unsupported if any is missing."""
    task_index = getattr(index_mod, "TaskIndex", None)
    if not isinstance(task_index, type):
        raise Unsupported(f"{INDEX_MODULE}.TaskIndex is missing or not a class")
    funcs: dict[str, Callable[..., Any]] = {}
    for name in TASKINDEX_METHODS:
        raw = task_index.__dict__.get(name)
        if raw is None:
            raise Unsupported(f"{INDEX_MODULE}.TaskIndex has no attribute {name!r}")
        if not isinstance(raw, staticmethod):
            raise Unsupported(f"{INDEX_MODULE}.TaskIndex.{name} is no longer a staticmethod")
        funcs[name] = raw.__func__
    for name in MODULE_FUNCTIONS:
        func = getattr(index_mod, name, None)
        if not callable(func):
            raise Unsupported(f"{INDEX_MODULE} has no function {name!r}")
        funcs[name] = func
    return funcs


def validated_version() -> tuple[str, dict[str, str]]:
    """The installed lm_eval version and its validated digests; Unsupported if it has none.

    Checked before waiting for the index module too: lm_eval before 0.4.12 has no
    ``lm_eval.tasks._index``, so only this check can say why nothing gets patched.
    """
    try:
        version = importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError as err:
        raise Unsupported("cannot determine the installed lm_eval version") from err
    expected = VALIDATED_SOURCES.get(version)
    if expected is None:
        raise Unsupported(
            f"lm_eval {version} has not been validated (validated: {', '.join(VALIDATED_SOURCES)})"
        )
    return version, expected


def inspect_targets(index_mod: ModuleType) -> Targets:
    """Validate lm_eval's internals; raise Unsupported with a human-readable reason."""
    version, expected = validated_version()
    funcs = _raw_functions(index_mod)
    for name, func in funcs.items():
        params = _param_spec(func)
        if params != EXPECTED_PARAMS.get(name):
            raise Unsupported(f"unexpected signature for {name}: {params}")
        try:
            digest = source_digest(func)
        except (OSError, TypeError) as err:
            raise Unsupported(f"cannot read the source of {name} ({err})") from err
        if digest != expected.get(name):
            raise Unsupported(f"source of {name} differs from validated lm_eval {version}")

    loader_mod = sys.modules.get(LOADER_MODULE)
    if loader_mod is None or funcs["load_yaml"] is not getattr(loader_mod, "load_yaml", None):
        raise Unsupported(f"{INDEX_MODULE}.load_yaml is not {LOADER_MODULE}.load_yaml")
    log = getattr(index_mod, "log", None)
    if not isinstance(log, logging.Logger):
        raise Unsupported(f"{INDEX_MODULE}.log is not a logging.Logger")
    entry_cls = getattr(index_mod, "Entry", None)
    if not isinstance(entry_cls, type):
        raise Unsupported(f"{INDEX_MODULE}.Entry is missing")
    index_file = getattr(index_mod, "__file__", None)
    loader_file = getattr(loader_mod, "__file__", None)
    if not index_file or not loader_file:
        raise Unsupported("lm_eval task modules have no __file__")
    # TaskManager indexes Path(manager.__file__).parent, the directory of _index.py.
    default_root = Path(index_file).parent
    return Targets(
        version=version,
        index_mod=index_mod,
        task_index=index_mod.TaskIndex,
        entry_cls=entry_cls,
        log=log,
        orig_build=funcs["build"],
        orig_iter=funcs["_iter_yaml_files"],
        orig_process=funcs["process_cfg"],
        orig_load=funcs["load_yaml"],
        default_root=default_root,
        source_files={"_index.py": Path(index_file), "_yaml_loader.py": Path(loader_file)},
    )


class RecordingLogger:
    """Stands in for ``_index.log`` during a cold build of the built-in root.

    Each call is emitted live through the real logger, attributed to the real
    caller (so the line reads exactly as in a stock run), and its formatted
    message is kept, whatever the current level, for replay on later cache hits.
    """

    def __init__(self, real: logging.Logger, skip: frozenset[str]) -> None:
        self._real = real
        self._skip = skip
        self.records: list[LogRecordTuple] = []

    def _record(
        self, level: int, msg: object, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if isinstance(msg, str) and msg in self._skip:
            return
        frame = sys._getframe(2)
        code = frame.f_code
        record = self._real.makeRecord(
            self._real.name, level, code.co_filename, frame.f_lineno, msg, args, None, code.co_name
        )
        if kwargs:  # exc_info/extra/...: unused by the validated source; let logging apply them
            self._real.log(level, msg, *args, **kwargs)
        elif self._real.isEnabledFor(level):
            self._real.handle(record)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging itself would only print an error
            message = str(msg)
        self.records.append((level, code.co_filename, frame.f_lineno, code.co_name, message))

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._record(logging.DEBUG, msg, args, kwargs)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._record(logging.INFO, msg, args, kwargs)

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._record(logging.WARNING, msg, args, kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._record(logging.ERROR, msg, args, kwargs)

    def critical(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._record(logging.CRITICAL, msg, args, kwargs)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        self._record(level, msg, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def replay(log: logging.Logger, records: Sequence[LogRecordTuple]) -> None:
    """Re-emit recorded lines as the original call sites would have, level permitting."""
    for level, pathname, lineno, func, message in records:
        if log.isEnabledFor(level):
            log.handle(log.makeRecord(log.name, level, pathname, lineno, message, (), None, func))


class Patcher:
    """Owns the wrapped functions and the per-process state they share.

    The state is plain attributes, not thread-local: lm_eval's CLI builds its
    TaskManager once, on the main thread, before any worker exists.
    """

    def __init__(self, targets: Targets, cache_dir: Path, log: logging.Logger) -> None:
        self._t = targets
        self._cache_dir = cache_dir
        self._log = log
        # Identity-compared stand-ins. The sentinel is an empty dict so that, were
        # it ever handed to the real process_cfg, lm_eval would just skip it.
        self._marker = targets.default_root / "<fastrun: cached built-in task index>"
        self._sentinel: dict[str, Any] = {}
        self._resolve_includes = False
        self._bypass = False
        self._pending: tuple[dict[str, Any], list[LogRecordTuple]] | None = None
        self._payload: bytes | None = None
        self._records: list[LogRecordTuple] = []
        self._preloaded: tuple[CacheKey, dict[str, Any], list[LogRecordTuple]] | None = None
        self._vouched = False  # set in a forked child whose fork server watched the task files

    def install(self) -> None:
        t = self._t
        t.task_index.build = staticmethod(self.build)
        t.task_index._iter_yaml_files = staticmethod(self.iter_yaml_files)
        t.task_index.process_cfg = staticmethod(self.process_cfg)
        t.index_mod.load_yaml = self.load_yaml

    # ------------------------------------------------------------- wrappers
    def build(self, paths: Any, *, resolve_includes: Any = True) -> Any:
        previous = self._resolve_includes
        self._resolve_includes = bool(resolve_includes)
        try:
            return self._t.orig_build(paths, resolve_includes=resolve_includes)
        finally:
            self._resolve_includes = previous

    def iter_yaml_files(self, root: Any) -> Iterator[Any]:
        if self._resolve_includes and not self._bypass and root == self._t.default_root:
            pending = self._defaults(root)
            if pending is not None:
                self._pending = pending
                yield self._marker
                return
        yield from self._t.orig_iter(root)

    def load_yaml(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        if path is self._marker:
            return self._sentinel
        return self._t.orig_load(path, *args, **kwargs)

    def process_cfg(self, cfg: Any, path: Any, index_: Any) -> None:
        if path is self._marker and cfg is self._sentinel and self._pending is not None:
            entries, records = self._pending
            self._pending = None
            replay(self._t.log, records)
            index_.update(entries)
            return None
        return self._t.orig_process(cfg, path, index_)  # type: ignore[no-any-return]

    # ---------------------------------------------------------- fork server
    def preload(self) -> None:
        """Load (or build) the built-in index now, ahead of the jobs (fork server).

        The first index build then takes these entries, after checking that the
        key, which fingerprints every task file, is still the one they were loaded under.
        """
        root = self._t.default_root
        try:
            key = self._key(root)
            entries, records = self._load_or_build(root, key)
        except Exception as err:  # the job will index the stock way, and say why
            self._log.warning("task index: cannot preload (%s: %s)", type(err).__name__, err)
            return
        self._preloaded = (key, entries, records)

    def vouch(self) -> None:
        """The fork server watched the task files since before it fingerprinted them, and
        nothing changed: this child takes the preloaded entries without checking again."""
        self._vouched = True

    @property
    def default_root(self) -> Path:
        return Path(self._t.default_root)

    def _take_preloaded(self, root: Path) -> tuple[dict[str, Any], list[LogRecordTuple]] | None:
        """The preloaded entries, if the task files are unchanged since they were loaded."""
        if self._preloaded is None:
            return None
        key, entries, records = self._preloaded
        self._preloaded = None
        if self._vouched:
            self._log.info(
                "task index: preloaded by the fork server (%d entries; files unchanged, "
                "watched by the fork server)",
                len(entries),
            )
            return entries, records
        started = time.perf_counter()
        if self._key(root) != key:
            self._log.warning("task index: task files changed since the fork server loaded them")
            return None
        self._log.info(
            "task index: preloaded by the fork server (%d entries; files unchanged, checked in "
            "%.2f s)",
            len(entries),
            time.perf_counter() - started,
        )
        return entries, records

    def _key(self, root: Path) -> CacheKey:
        return build_key(root, lm_eval_version=self._t.version, source_files=self._t.source_files)

    # ---------------------------------------------------------- index source
    def _defaults(self, root: Path) -> tuple[dict[str, Any], list[LogRecordTuple]] | None:
        """Entries (fresh objects) and log records to replay for the built-in root.

        Returns None if anything unexpected failed, so that the caller indexes
        the root the stock way instead.
        """
        try:
            preloaded = self._take_preloaded(root)
            if preloaded is not None:
                return preloaded
            if self._payload is not None:  # a second TaskManager in this process
                entries, _ = self._unpickle(self._payload)
                return entries, list(self._records)
            return self._load_or_build(root, None)
        except Exception as err:
            self._log.warning(
                "task index: unexpected %s (%s); indexing built-in tasks the stock way",
                type(err).__name__,
                err,
            )
            return None

    def _load_or_build(
        self, root: Path, key: CacheKey | None
    ) -> tuple[dict[str, Any], list[LogRecordTuple]]:
        started = time.perf_counter()
        cache: IndexCache | None = None
        try:
            cache = IndexCache(self._cache_dir, key or self._key(root), self._log)
        except OSError as err:
            self._log.warning("task index: cannot fingerprint %s (%s); not caching", root, err)

        if cache is not None:
            try:
                payload = cache.read()
            except CacheReject as err:
                self._log.warning("task index: rejecting cache: %s; rebuilding", err)
                payload, rejected = None, True
            else:
                rejected = False
            if payload is None:
                if not rejected:
                    self._log.info(
                        "task index: cache miss (%s); indexing built-in tasks once, "
                        "this takes 10-40 s",
                        cache.path,
                    )
            else:
                try:
                    entries, records = self._unpickle(payload)
                except Exception as err:
                    self._log.warning(
                        "task index: cache %s is unreadable (%s: %s); rebuilding",
                        cache.path,
                        type(err).__name__,
                        err,
                    )
                else:
                    self._payload, self._records = payload, records
                    self._log.info(
                        "task index: cache hit (%d entries from %s in %.2f s)",
                        len(entries),
                        cache.path,
                        time.perf_counter() - started,
                    )
                    return entries, records

        entries, records = self._build_root(root)
        built = time.perf_counter() - started
        try:
            payload = pickle.dumps((entries, records), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:
            self._log.warning(
                "task index: cannot serialise the index (%s: %s); not caching",
                type(err).__name__,
                err,
            )
            return entries, []
        self._payload, self._records = payload, records
        if cache is not None and cache.write(payload):
            self._log.info(
                "task index: built %d entries in %.1f s; cached at %s",
                len(entries),
                built,
                cache.path,
            )
        # The records were already emitted live during the build.
        return entries, []

    def _build_root(self, root: Path) -> tuple[dict[str, Any], list[LogRecordTuple]]:
        """Run lm_eval's own build on the built-in root alone, recording its log calls."""
        recorder = RecordingLogger(self._t.log, BUILD_OWN_LOG_TEMPLATES)
        self._bypass = True
        self._t.index_mod.log = recorder
        try:
            entries = self._t.orig_build([root], resolve_includes=True)
        finally:
            self._t.index_mod.log = self._t.log
            self._bypass = False
        if not isinstance(entries, dict):
            raise TypeError(f"TaskIndex.build returned {type(entries).__name__}, not dict")
        return entries, recorder.records

    def _unpickle(self, payload: bytes) -> tuple[dict[str, Any], list[LogRecordTuple]]:
        """Load and type-check a payload (gc paused: ~2x faster for 100k small objects)."""
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            obj = pickle.loads(payload)
        finally:
            if was_enabled:
                gc.enable()
        if not (isinstance(obj, tuple) and len(obj) == 2):
            raise TypeError("payload is not an (entries, records) pair")
        entries, records = obj
        entry_cls = self._t.entry_cls
        if not isinstance(entries, dict) or not all(
            isinstance(k, str) and isinstance(v, entry_cls) for k, v in entries.items()
        ):
            raise TypeError("entries are not a dict[str, Entry]")
        if not isinstance(records, list) or not all(
            isinstance(r, tuple) and len(r) == 5 for r in records
        ):
            raise TypeError("log records have an unexpected shape")
        return entries, records


_installed: list[Patcher] = []
_disabled: list[str] = []  # why fastrun fell back in this process (a fork server's jobs repeat it)


def disabled_message() -> str | None:
    """The "fastrun disabled: ..." line this process logged, if it fell back."""
    return _disabled[-1] if _disabled else None


def active() -> Patcher | None:
    """The patcher installed in this process, if lm_eval's index module was patched."""
    return _installed[-1] if _installed else None


def on_index_module_loaded(module: ModuleType, cache_dir: Path, log: logging.Logger) -> None:
    """Validate and patch; never raise (that would break lm_eval's own import)."""
    try:
        targets = inspect_targets(module)
        patcher = Patcher(targets, cache_dir, log)
        patcher.install()
        _installed.append(patcher)
    except Unsupported as err:
        _warn_disabled(log, err)
    except Exception as err:
        _say_disabled(
            log,
            f"fastrun disabled: unexpected {type(err).__name__} while inspecting lm_eval "
            f"({err}); falling back to stock lm_eval task indexing",
        )


def _warn_disabled(log: logging.Logger, err: Unsupported) -> None:
    _say_disabled(
        log,
        f"fastrun disabled: {err}; falling back to stock lm_eval task indexing "
        "(slow start, identical results)",
    )


def _say_disabled(log: logging.Logger, message: str) -> None:
    _disabled.append(message)
    log.warning("%s", message)


class PatchOnImport(importlib.abc.MetaPathFinder):
    """One-shot finder that patches ``lm_eval.tasks._index`` right after it executes.

    Patching lazily (instead of importing lm_eval.tasks up front, ~4 s) keeps
    ``--help``, ``ls``-free argparse errors and other paths that never build an
    index exactly as fast as stock. The module keeps its normal loader; only
    this spec's own loader instance gets an ``exec_module`` that patches after.
    """

    def __init__(self, callback: Callable[[ModuleType], None]) -> None:
        self._callback = callback

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname != INDEX_MODULE:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec: ModuleSpec | None = None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if find is not None:
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        loader: Any = spec.loader if spec is not None else None
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec
        callback = self._callback

        def exec_then_patch(module: ModuleType) -> None:
            exec_module(module)
            callback(module)

        loader.exec_module = exec_then_patch
        return spec


def install(cache_dir: Path, log: logging.Logger) -> None:
    """Arrange for lm_eval's task index to be patched when lm_eval loads it."""

    try:
        validated_version()
    except Unsupported as err:
        _warn_disabled(log, err)
        return

    def callback(module: ModuleType) -> None:
        on_index_module_loaded(module, cache_dir, log)

    already = sys.modules.get(INDEX_MODULE)
    if already is not None:
        callback(already)
    else:
        sys.meta_path.insert(0, PatchOnImport(callback))


def _print_digests() -> None:  # pragma: no cover - maintenance helper
    """Print the VALIDATED_SOURCES entry for the installed lm_eval."""
    import lm_eval.tasks._index as index_mod

    funcs = _raw_functions(index_mod)
    version = importlib.metadata.version("lm_eval")
    print(f'    "{version}": {{')
    for name, func in funcs.items():
        print(f'        "{name}": "{source_digest(func)}",')
    print("    },")


if __name__ == "__main__":  # pragma: no cover
    _print_digests()
