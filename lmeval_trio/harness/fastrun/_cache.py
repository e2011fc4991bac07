"""On-disk cache of the built-in task index: key, fingerprint, safe read/write.

This module knows nothing about lm_eval's classes: it stores an opaque payload
(a pickle made by ``_patch``) behind a one-line JSON header. The header holds
the full key material, so a cache built for another lm_eval, Python, PyYAML or
task tree is detected and rebuilt (never trusted), and a SHA-256 of the
payload, so a truncated or corrupted file is detected before unpickling.

Pickle executes code on load, so a cache is only read from a directory and
file owned by the current user and not writable by group or others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MAGIC = "lmeval-trio-fastrun-task-index"
#: Bump when the payload layout changes.
FORMAT = 1
_MAX_HEADER = 1 << 16
#: Temp files older than this are leftovers of killed writers.
_STALE_TMP_SECONDS = 3600.0
_SKIP_DIRS = frozenset({"__pycache__"})

KeyMaterial = Mapping[str, str | int]


def fingerprint_tree(root: Path) -> tuple[str, int]:
    """SHA-256 over (relative path, size, mtime_ns, inode) of every file under root.

    Every file counts, not just ``*.yaml``: built-in tasks ``include:``
    extension-less templates such as ``_default_template_yaml``. Only
    ``__pycache__`` is skipped, because Python rewrites it and it never feeds
    the index. Directory symlinks are followed (a superset of what lm_eval's
    glob sees), with loop protection. A stat walk is ~0.1-0.25 s for 15,500
    files here, versus ~10-20 s to re-parse them.

    The inode catches a file replaced by another of equal size and mtime
    (editors, reinstalls). ctime is deliberately left out: uv installs by
    hard-linking from its cache, so any other venv linking the same wheel
    bumps every file's ctime (seen here) without changing a byte.
    """
    digest = hashlib.sha256()
    count = 0
    seen_dirs: set[tuple[int, int]] = set()

    def walk(directory: str, rel: str) -> None:
        nonlocal count
        try:
            dst = os.stat(directory)
        except OSError:
            return
        ident = (dst.st_dev, dst.st_ino)
        if ident in seen_dirs:
            return
        seen_dirs.add(ident)
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name_rel = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if entry.name not in _SKIP_DIRS:
                    digest.update(b"D\0" + os.fsencode(name_rel) + b"\n")
                    walk(entry.path, name_rel)
                continue
            try:
                st = entry.stat()
                line = f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
            except OSError:
                line = "unreadable"
            digest.update(b"F\0" + os.fsencode(name_rel) + b"\0" + line.encode() + b"\n")
            count += 1

    walk(os.fspath(root), "")
    return digest.hexdigest(), count


def file_sha256(path: Path) -> str:
    """Content hash of one (small) source file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """Everything the cached index depends on, plus its digest."""

    material: dict[str, str | int]
    digest: str

    @classmethod
    def from_material(cls, material: KeyMaterial) -> CacheKey:
        mat = dict(material)
        mat["format"] = FORMAT
        blob = json.dumps(mat, sort_keys=True, separators=(",", ":")).encode()
        return cls(material=mat, digest=hashlib.sha256(blob).hexdigest())


def build_key(
    tasks_dir: Path,
    *,
    lm_eval_version: str,
    source_files: Mapping[str, Path],
) -> CacheKey:
    """Key for the index of ``tasks_dir``.

    ``source_files`` are the lm_eval modules that compute the index (their
    content is hashed, so a patched lm_eval invalidates the cache). PyYAML's
    version and C-loader flag and the Python version are included because they
    change what the YAML parses to and what pickle can load.
    """
    import yaml

    tree_hash, count = fingerprint_tree(tasks_dir)
    material: dict[str, str | int] = {
        "lm_eval_version": lm_eval_version,
        "tasks_dir": os.fspath(tasks_dir),
        "python": f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}",
        "pyyaml": f"{yaml.__version__}+libyaml={bool(getattr(yaml, '__with_libyaml__', False))}",
        "tree_sha256": tree_hash,
        "tree_files": count,
    }
    for label, path in sorted(source_files.items()):
        material[f"src:{label}"] = file_sha256(path)
    return CacheKey.from_material(material)


class CacheReject(Exception):
    """A cache file exists but must not be used; the message says why."""


class IndexCache:
    """One cache file per (tasks dir, key) inside ``cache_dir``.

    Reads never raise for bad data: they return None on a plain miss and raise
    :class:`CacheReject` (a reason to log, then rebuild) for anything wrong
    with an existing file. Writes go to a temp file in the same directory and
    are published with ``os.replace``, so concurrent jobs only ever see whole
    files; the last writer wins and all writers write equivalent data.
    """

    def __init__(self, cache_dir: Path, key: CacheKey, log: logging.Logger) -> None:
        self.cache_dir = cache_dir
        self.key = key
        self._log = log
        tasks_dir = str(key.material.get("tasks_dir", ""))
        self._prefix = "task-index-" + hashlib.sha256(tasks_dir.encode()).hexdigest()[:12] + "-"
        self.path = cache_dir / f"{self._prefix}{key.digest[:32]}.pickle"

    # ------------------------------------------------------------------ read
    def read(self) -> bytes | None:
        """Return the verified payload, None if there is no cache file."""
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return None
        except OSError as err:
            raise CacheReject(f"cannot open {self.path}: {err}") from err
        with fh:
            self._check_owner(os.fstat(fh.fileno()), self.path, "file")
            self._check_owner(os.stat(self.cache_dir), self.cache_dir, "directory")
            try:
                header_line = fh.readline(_MAX_HEADER)
                header = json.loads(header_line)
            except (OSError, ValueError) as err:
                raise CacheReject(f"{self.path}: unreadable header ({err})") from err
            if not isinstance(header, dict) or header.get("magic") != MAGIC:
                raise CacheReject(f"{self.path}: not a fastrun task-index cache")
            if header.get("key") != self.key.material or header.get("digest") != self.key.digest:
                raise CacheReject(
                    f"{self.path}: key mismatch ({self._describe_mismatch(header.get('key'))})"
                )
            try:
                payload = fh.read()
            except OSError as err:
                raise CacheReject(f"{self.path}: read failed ({err})") from err
        if len(payload) != header.get("payload_len") or (
            hashlib.sha256(payload).hexdigest() != header.get("payload_sha256")
        ):
            raise CacheReject(f"{self.path}: payload is truncated or corrupt")
        return payload

    def _describe_mismatch(self, stored: object) -> str:
        if not isinstance(stored, dict):
            return "no key stored"
        fields = sorted(
            name
            for name in set(stored) | set(self.key.material)
            if stored.get(name) != self.key.material.get(name)
        )
        return "differs in: " + (", ".join(fields) or "digest")

    @staticmethod
    def _check_owner(st: os.stat_result, path: Path, what: str) -> None:
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise CacheReject(f"{what} {path} is not owned by the current user; not unpickling it")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise CacheReject(f"{what} {path} is group/world-writable; not unpickling it")

    # ----------------------------------------------------------------- write
    def write(self, payload: bytes) -> bool:
        """Atomically publish payload; log a warning and return False on failure."""
        header = {
            "magic": MAGIC,
            "key": self.key.material,
            "digest": self.key.digest,
            "payload_len": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "created": time.time(),
        }
        tmp_name: str | None = None
        try:
            self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".pickle", dir=self.cache_dir)
            with os.fdopen(fd, "wb") as fh:
                fh.write(json.dumps(header, sort_keys=True).encode() + b"\n")
                fh.write(payload)
            os.replace(tmp_name, self.path)
            tmp_name = None
        except OSError as err:
            self._log.warning("task index: could not write cache %s (%s)", self.path, err)
            return False
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
        self._prune()
        return True

    def _prune(self) -> None:
        """Drop caches of older fingerprints of the same tasks dir and dead temp files.

        Without this every lm_eval upgrade would leave a 15 MB file behind. A
        racing job that still wants a pruned file just rebuilds it.
        """
        now = time.time()
        try:
            with os.scandir(self.cache_dir) as it:
                names = [(e.name, e.path) for e in it]
        except OSError:
            return
        for name, path in names:
            stale = name.startswith(self._prefix) and name != self.path.name
            if name.startswith(".tmp-"):
                try:
                    stale = now - os.stat(path).st_mtime > _STALE_TMP_SECONDS
                except OSError:
                    stale = False
            if stale:
                with contextlib.suppress(OSError):
                    os.unlink(path)
