"""Which files a local job may touch, and how its command carries that wall into the child.

Each local job runs behind a Landlock wall (``confinement.py``) put up at the moment its process
becomes the job. It may write only its own folder (with its own ``TMPDIR`` inside), the
operator's output roots, the Hugging Face cache and ``/dev`` (GPUs, shared memory); it may read
the system, the Python environment, the server's task-index cache and the operator's roots.
Nothing else of the data directory is reachable: not the store, not other jobs, not the
server's caches for writing. A path that contains the data directory is never granted.
"""

from __future__ import annotations

import logging
import os
import site
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from lmeval_trio.config import Settings
from lmeval_trio.errors import CannotStart
from lmeval_trio.policy.rules import HF_CACHE_VARIABLES
from lmeval_trio.runners import confinement
from lmeval_trio.runners.confinement import Walls

log = logging.getLogger("lmeval_trio.confinement")

#: What every process needs to read: programs, libraries, configuration, kernel interfaces.
SYSTEM_READ = (
    *("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt"),
    *("/proc", "/sys", "/run", "/nix", "/snap"),
)
#: Device files: GPUs (/dev/nvidia*, /dev/dri), /dev/shm for data loaders, /dev/null.
DEVICES = "/dev"
TEMP_VARIABLES = ("TMPDIR", "TMP", "TEMP")
#: Native threads that importing lm-eval starts (OpenBLAS's pool with numpy, jemalloc's purger
#: with pyarrow) make forking unsafe, so a fork server that has any lets its jobs start cold.
#: These keep the defaults thread-free (numpy's BLAS runs single-threaded; torch has its own
#: pool); ``runners/environment.py`` sets them for confined and forked jobs.
SINGLE_THREADED_IMPORTS = {
    "OPENBLAS_NUM_THREADS": "1",
    "JE_ARROW_MALLOC_CONF": "background_thread:false",
}
PROBE_TIMEOUT_S = 30.0
#: The exec wrapper: the standard library only, so it starts in ~10 ms.
WRAPPER = (sys.executable, "-I", "-S", os.path.abspath(confinement.__file__))


class ConfinementUnavailable(CannotStart):
    """LMEVAL_JOB_CONFINEMENT=landlock, but jobs cannot be confined here; says why."""


@dataclass(frozen=True)
class ConfinementStatus:
    """Whether jobs run confined, for /healthz, /metrics and the start-up log."""

    mode: str  # the setting: auto, landlock or off
    confined: bool
    landlock_abi: int  # 0: none
    reason: str  # why jobs are (not) confined


class JobWalls:
    """The walls of this server's local jobs; ``check`` must run once before use."""

    def __init__(self, settings: Settings, fastrun_prefix: Sequence[str] | None) -> None:
        self.settings = settings
        self.fastrun_prefix = tuple(fastrun_prefix) if fastrun_prefix else None
        self.status = ConfinementStatus(settings.job_confinement, False, 0, "not checked yet")
        self._data_dir = settings.data_dir.resolve()
        self._read: tuple[str, ...] = ()
        self._write: tuple[str, ...] = ()
        self._server_files: tuple[Path, ...] = ()

    @property
    def confined(self) -> bool:
        return self.status.confined

    async def check(self) -> ConfinementStatus:
        """Find out whether the kernel enforces a wall here; log the verdict (loudly if jobs
        will run unconfined). Raises ConfinementUnavailable if the setting requires one."""
        mode = self.settings.job_confinement
        if mode == "off":
            self.status = ConfinementStatus(mode, False, 0, "LMEVAL_JOB_CONFINEMENT=off")
        elif self.settings.backend != "local":
            self.status = ConfinementStatus(mode, False, 0, "Ray jobs run unconfined")
        else:
            abi, reason = await _probe()
            self.status = ConfinementStatus(mode, abi > 0, abi, reason)
        if mode == "landlock" and not self.status.confined:
            raise ConfinementUnavailable(
                f"LMEVAL_JOB_CONFINEMENT=landlock, but jobs cannot be confined: "
                f"{self.status.reason}"
            )
        if self.status.confined:
            self._read, self._write = await trio.to_thread.run_sync(self._static_paths)
            log.info("jobs run confined (Landlock ABI %d)", self.status.landlock_abi)
        else:
            log.warning(
                "JOBS RUN UNCONFINED: %s. A job's own code (task !function, metrics, a custom "
                "lm_eval_path) can read and write everything this server can, including the "
                "store and other jobs; see README 'Security'.",
                self.status.reason,
            )
        return self.status

    def walls(
        self, job_dir: Path, own_env: Mapping[str, str], env: Mapping[str, str], argv: Sequence[str]
    ) -> Walls | None:
        """The walls of one job (None when jobs run unconfined). Blocking (it resolves paths
        and creates the Hugging Face cache folders), so call it in a thread.

        ``own_env`` holds the job's own variables (a TMPDIR there is kept), ``env`` everything
        the process gets."""
        if not self.confined:
            return None
        job_dir = job_dir.resolve()
        write = [str(job_dir), *self._write, *self._hf_caches(job_dir, env)]
        read = [*self._read, *_executable(argv)]
        tmpdir = None if any(name in own_env for name in TEMP_VARIABLES) else job_dir / "tmp"
        return Walls(
            read=tuple(self._granted(read)),
            write=tuple(self._granted(write)),
            tmpdir=None if tmpdir is None else str(tmpdir),
        )

    def helper(self, write: Sequence[str], tmpdir: str) -> Walls | None:
        """Walls for a helper the server starts on a request's behalf (the task catalog's
        child reading a user's task folder, whose YAML ``include:`` may name any file): what
        every job may read, and only ``write`` (and ``/dev``), with ``tmpdir`` (inside ``write``)
        for temporary files. None when jobs run unconfined."""
        if not self.confined:
            return None
        writable = self._granted([DEVICES, *write])
        read = tuple(self._granted(self._read))
        return Walls(read=read, write=tuple(writable), tmpdir=tmpdir)

    def command(self, argv: Sequence[str], walls: Walls | None) -> list[str]:
        """The argv that starts ``argv`` behind ``walls``: fastrun puts the wall up itself
        (``--walls``), anything else through the exec wrapper (``confinement.py`` as a script).
        ``-P`` and ``-I`` keep the job folder off sys.path, so nothing the job left there runs
        before the wall is up."""
        if walls is None:
            return list(argv)
        if self._is_fastrun(argv):
            return [argv[0], "-P", *argv[1:3], "--walls=" + walls.encode(), *argv[3:]]
        return [*WRAPPER, *walls.to_args(), "--", *argv]

    def _is_fastrun(self, argv: Sequence[str]) -> bool:
        prefix = self.fastrun_prefix
        return prefix is not None and tuple(argv[: len(prefix)]) == prefix

    def _static_paths(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What every job may read and write, resolved once."""
        roots = [str(root) for root in self.settings.allowed_path_roots]
        for root in roots:
            if _contains(Path(root).resolve(), self._data_dir):
                log.warning(
                    "LMEVAL_ALLOWED_PATH_ROOTS entry %s contains the data directory; "
                    "confined jobs may not write or read it (only their own folder)",
                    root,
                )
        index_cache = self.settings.effective_cache_dir / "task-index"
        index_cache.mkdir(parents=True, exist_ok=True)
        builtin = [str(root) for root in self.settings.builtin_read_roots]  # shipped examples
        read = [*SYSTEM_READ, *_python_paths(), str(index_cache), *roots, *builtin]
        write = [DEVICES, *roots]
        own = [str(self.settings.data_dir), str(self.settings.effective_cache_dir), *builtin]
        own += [*_python_paths(), _source_root()]
        self._server_files = tuple(Path(os.path.realpath(p)) for p in own)
        return tuple(self._granted(read)), tuple(self._granted(write))

    def _hf_caches(self, job_dir: Path, env: Mapping[str, str]) -> list[str]:
        """The Hugging Face caches the job will use, created now: the job cannot create them
        itself when their parent lies outside its walls. A job's own values arrive absolute
        (the policy resolved them, policy.HF_CACHE_VARIABLES); a relative one, or one in the
        server's own files (the data and cache dirs, the shipped read-only roots, the Python
        environment and the server's source), is never granted nor created."""
        home = env.get("HOME") or os.path.expanduser("~")
        xdg = env.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
        folders = [env.get("HF_HOME") or os.path.join(xdg, "huggingface")]
        folders += [env[name] for name in HF_CACHE_VARIABLES if env.get(name)]
        made = []
        for folder in folders:
            expanded = folder.replace("~", home, 1) if folder.startswith("~") else folder
            path = Path(os.path.realpath(expanded))
            if not os.path.isabs(expanded) or not self._may_write_cache(path, job_dir):
                log.warning("not granting the Hugging Face cache %r to the job", folder)
                continue
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                log.warning("cannot create the Hugging Face cache %s: %s", path, err)
                continue
            made.append(str(path))
        return made

    def _may_write_cache(self, path: Path, job_dir: Path) -> bool:
        """``path`` is in the job's folder, or neither in nor around the server's own files."""
        if _contains(job_dir, path):
            return True
        return not any(_contains(path, own) or _contains(own, path) for own in self._server_files)

    def _granted(self, paths: Iterable[str]) -> Iterable[str]:
        """Resolved, deduplicated, existing paths, none containing the data directory."""
        seen: set[str] = set()
        for path in paths:
            resolved = Path(os.path.realpath(path))
            if str(resolved) in seen or not resolved.exists():
                continue
            if _contains(resolved, self._data_dir):
                continue
            seen.add(str(resolved))
            yield str(resolved)


def _contains(path: Path, inner: Path) -> bool:
    return path == inner or path in inner.parents


def _python_paths() -> list[str]:
    """The interpreter and every folder it imports from (our own package's folder, not the
    project folder around it, which may hold the data directory)."""
    import lmeval_trio

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths |= {p for p in sysconfig.get_paths().values() if p}
    paths |= set(site.getsitepackages())
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    paths.add(os.path.dirname(lmeval_trio.__file__ or ""))
    paths |= {p for p in sys.path if p and os.path.isdir(p)}
    return sorted(p for p in paths if p)


def _source_root() -> str:
    """The folder around the server's package (its project, for a source checkout)."""
    import lmeval_trio

    return os.path.dirname(os.path.dirname(os.path.realpath(lmeval_trio.__file__ or "")))


def _executable(argv: Sequence[str]) -> list[str]:
    """A custom lm_eval_path must be readable (a script) and executable by the job."""
    return [argv[0]] if argv and os.path.isabs(argv[0]) else []


async def _probe() -> tuple[int, str]:
    """(ABI, reason): put up a wall in a throwaway child and check that it holds."""
    argv = [*WRAPPER, "--probe"]
    try:
        with trio.fail_after(PROBE_TIMEOUT_S):
            done = await trio.run_process(
                argv,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                stdin=subprocess.DEVNULL,
            )
    except (OSError, trio.TooSlowError) as err:
        return 0, f"the Landlock probe could not run: {err}"
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        return 0, detail[-1] if detail else f"the Landlock probe failed ({done.returncode})"
    abi = int(done.stdout.decode().strip() or 0)
    return abi, f"Landlock ABI {abi} enforced by the kernel"
