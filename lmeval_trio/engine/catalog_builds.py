"""Builds and holds the task catalogs of one supervisor, every build in a child process.

lm-eval's index takes seconds of imports and, cold, 14,000 YAML files: never in the server.
The child (``harness/task_catalog.py``) names a JSON file, which is read in a worker thread.
The built-in catalog is built by a task in the supervisor's nursery that every waiter shares
(at start when task checks are on, else on first use); a request's ``include_path`` folders
are built when first named, behind the jobs' walls, and kept in memory while their stat
fingerprint stays the same (and on disk, by the child).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import trio

from lmeval_trio.config import Settings
from lmeval_trio.engine.catalog import Catalog, CatalogUnavailable, read_catalog_file
from lmeval_trio.harness.fastrun._cache import fingerprint_tree
from lmeval_trio.runners.job_walls import JobWalls

log = logging.getLogger("lmeval_trio.catalog")
CHILD_MODULE = "lmeval_trio.harness.task_catalog"
#: Task folders whose catalogs stay in memory (the least recently built go first).
MAX_HELD_FOLDERS = 32
#: A job's include_path folders and their stat fingerprints, as ``found_fingerprints`` lists them.
FoundFolders = tuple[Sequence[Path], list[tuple[str, int]]]


class Catalogs:
    """Builds and holds catalogs for one supervisor; every build runs in a child process."""

    def __init__(
        self,
        settings: Settings,
        environment: Callable[[], dict[str, str]],
        walls: JobWalls | None = None,
    ) -> None:
        self.settings = settings
        self._environment = environment
        self._walls = walls  # a user's task folder is read behind the jobs' walls
        self._nursery: trio.Nursery | None = None
        self._builtin: Catalog | None = None
        #: Set once lm-eval's catalog is built (it is then kept for the server's life).
        self.builtin_built = trio.Event()
        self._building: trio.Event | None = None
        self._error = "the task catalog was not built yet"
        self._by_folder: dict[Path, tuple[tuple[str, int], Catalog]] = {}
        #: Merged catalogs by (built-in catalog, the folders and their fingerprints).
        self._merged: dict[tuple[Catalog, tuple[tuple[Path, tuple[str, int]], ...]], Catalog] = {}
        self._scopes: set[trio.CancelScope] = set()
        self._closed = False

    def attach(self, nursery: trio.Nursery, *, preload_after: trio.Event | None = None) -> None:
        """The nursery that owns the built-in catalog's build (the supervisor's). With task
        checks on, the build starts once ``preload_after`` is set (the job caches prepared,
        so it reuses their task index rather than building it at the same time), and the
        first submission rarely waits for it."""
        self._nursery = nursery
        if preload_after is not None and self.settings.check_tasks:
            nursery.start_soon(self._preload, preload_after)

    async def _preload(self, after: trio.Event) -> None:
        with self._cancelled_at_close():
            await after.wait()
            with contextlib.suppress(CatalogUnavailable):  # logged; the next use retries
                await self.builtin()

    def close(self) -> None:
        """Shutdown: end the builds this object started (their children are killed)."""
        self._closed = True
        for scope in self._scopes:
            scope.cancel()

    @contextlib.contextmanager
    def _cancelled_at_close(self) -> Iterator[None]:
        with trio.CancelScope() as scope:
            if self._closed:
                scope.cancel()
            self._scopes.add(scope)
            try:
                yield
            finally:
                self._scopes.discard(scope)

    async def builtin(self) -> Catalog:
        """lm-eval's own tasks; the first caller starts the build, later ones share it.
        A failed build is retried by the next caller."""
        if self._builtin is not None:
            return self._builtin
        if self._building is None:
            if self._nursery is None:
                raise CatalogUnavailable("the server is not running")
            self._building = trio.Event()
            self._nursery.start_soon(self._build_builtin, self._building)
        await self._building.wait()
        if self._builtin is None:
            raise CatalogUnavailable(self._error)
        return self._builtin

    async def _build_builtin(self, done: trio.Event) -> None:
        try:
            with self._cancelled_at_close():
                (path,) = await self._run_child(["builtin"])
                self._builtin = await trio.to_thread.run_sync(read_catalog_file, path, "lm_eval")
            if self._builtin is None:  # cancelled: the server is stopping
                self._error = "the server is stopping"
                return
            log.info("task catalog: %d tasks, groups and tags", len(self._builtin))
            self.builtin_built.set()
        except (CatalogUnavailable, OSError, ValueError, KeyError) as error:
            self._error = f"the task catalog could not be built: {error}"
            log.warning("%s", self._error)
        finally:
            self._building = None
            done.set()

    async def folders(self, folders: Sequence[Path]) -> Catalog:
        """The entries lm-eval's index finds in ``folders`` (judged paths), later ones on top.
        A folder unchanged since its last build (same stat fingerprint) is served from
        memory; the others are built by one child."""
        prints = await trio.to_thread.run_sync(_fingerprints, folders)
        return await self._folders(folders, prints)

    async def _folders(self, folders: Sequence[Path], prints: list[tuple[str, int]]) -> Catalog:
        missing = [f for f, p in zip(folders, prints, strict=True) if self._held(f, p) is None]
        if missing:
            paths = await self._run_child([os.fspath(f) for f in missing], confined=True)
            for folder, path in zip(missing, paths, strict=True):
                built = await trio.to_thread.run_sync(read_catalog_file, path, os.fspath(folder))
                self._hold(folder, prints[folders.index(folder)], built)
        held = [self._held(f, p) for f, p in zip(folders, prints, strict=True)]
        return Catalog(e for catalog in held if catalog is not None for e in catalog.entries)

    def _held(self, folder: Path, fingerprint: tuple[str, int]) -> Catalog | None:
        found = self._by_folder.get(folder)
        return found[1] if found is not None and found[0] == fingerprint else None

    def _hold(self, folder: Path, fingerprint: tuple[str, int], catalog: Catalog) -> None:
        self._by_folder.pop(folder, None)
        self._by_folder[folder] = (fingerprint, catalog)
        while len(self._by_folder) > MAX_HELD_FOLDERS:  # the oldest first
            del self._by_folder[next(iter(self._by_folder))]

    async def for_request(
        self,
        find_folders: Callable[[], Sequence[Path]] | None,
        listed: FoundFolders | None = None,
    ) -> Catalog:
        """What a job can name: lm-eval's, then its ``include_path`` folders' (``find_folders``
        lists them, resolving paths: it runs in the worker thread that stats them, one hop,
        never on the event loop; None: the job names no folder). ``listed``: what
        ``found_fingerprints`` answered for them already, in a worker thread the request
        took anyway (the policy's), so no hop is needed here."""
        builtin = await self.builtin()
        if find_folders is None:
            return builtin
        if listed is None:
            listed = await trio.to_thread.run_sync(found_fingerprints, find_folders)
        folders, prints = listed
        if not folders:
            return builtin
        key = (builtin, tuple(zip(folders, prints, strict=True)))
        found = self._merged.pop(key, None)  # popped and put back: most recent last
        if found is None:  # merging sorts ~15,000 entries: once per folder state, not per job
            found = builtin.merged(await self._folders(folders, prints))
        self._merged[key] = found
        while len(self._merged) > MAX_HELD_FOLDERS:  # the least recently used first
            del self._merged[next(iter(self._merged))]
        return found

    async def _run_child(self, roots: Sequence[str], *, confined: bool = False) -> list[Path]:
        """Run the harness child; a user's folders behind the walls every job has (a YAML
        ``include:`` can name any file: the child may read only what a job may)."""
        cache = self.settings.effective_cache_dir
        catalog_cache = cache / "task-catalog"
        argv = [sys.executable, "-m", CHILD_MODULE, "--index-cache", str(cache / "task-index")]
        argv += ["--catalog-cache", str(catalog_cache)]
        argv += [word for root in roots for word in ("--root", root)]
        if confined and self._walls is not None and self._walls.confined:
            tmpdir = catalog_cache / "tmp"
            await trio.to_thread.run_sync(_make_folder, tmpdir)
            walls = self._walls.helper([str(catalog_cache)], str(tmpdir))
            argv = self._walls.command(argv, walls)
        with trio.move_on_after(self.settings.task_catalog_timeout_s) as scope:
            done = await trio.run_process(
                argv,
                env=self._environment(),
                cwd=self.settings.data_dir,
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        if scope.cancelled_caught:
            raise CatalogUnavailable(
                f"building it took over {self.settings.task_catalog_timeout_s:g} s "
                "(LMEVAL_TASK_CATALOG_TIMEOUT_S)"
            )
        return _child_files(done, len(roots))


def found_fingerprints(find_folders: Callable[[], Sequence[Path]]) -> FoundFolders:
    """The folders ``find_folders`` lists and their stat fingerprints (a worker thread)."""
    folders = find_folders()
    return folders, _fingerprints(folders)


def _fingerprints(folders: Sequence[Path]) -> list[tuple[str, int]]:
    """Every folder's stat fingerprint, in one worker thread."""
    return [fingerprint_tree(folder) for folder in folders]


def _make_folder(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)


def _child_files(done: subprocess.CompletedProcess[bytes], expected: int) -> list[Path]:
    """The files the child named, or why it failed (its last stderr line, never more)."""
    if done.returncode == 0:
        try:
            files = json.loads(done.stdout.decode().strip().splitlines()[-1])["catalogs"]
            if isinstance(files, list) and len(files) == expected:
                return [Path(f) for f in files]
        except (ValueError, IndexError, KeyError, TypeError):
            pass
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    last = lines[-1][:300] if lines else "no output"
    raise CatalogUnavailable(f"lm-eval's task index failed (exit code {done.returncode}): {last}")
