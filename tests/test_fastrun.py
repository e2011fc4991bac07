"""Tests for ``python -m lmeval_trio.harness.fastrun``: parity with stock lm_eval, cache, fallbacks.

The end-to-end part runs real lm_eval subprocesses (``--model dummy``) on the
tiny tasks in ``tests/support/fastrun_tasks``. Only one of them is a stock
``lm_eval`` run; the three slow ones (stock, cold fastrun, stock fallback)
start together to share the wall clock. Subprocesses get a pycache prefix in
the session temp dir: this machine exports PYTHONDONTWRITEBYTECODE=1 and the
venv has no .pyc files, which otherwise costs every process ~5-10 s of
compiling.
"""

from __future__ import annotations

import compileall
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lmeval_trio.harness import fastrun
from lmeval_trio.harness.fastrun import _cache, _main, _patch, _warm
from lmeval_trio.runners.fork_server import LAUNCHER
from lmeval_trio.runners.job_walls import SINGLE_THREADED_IMPORTS
from tests.support import hf_model

FASTRUN_TASKS = Path(__file__).parent / "support" / "fastrun_tasks"
PYTHON = sys.executable
LM_EVAL = str(Path(PYTHON).with_name("lm_eval"))
RUN_TIMEOUT = 600.0
LM_EVAL_ARGS = [
    "run",
    "--model",
    "dummy",
    "--model_args",
    "pretrained=dummy",
    "--tasks",
    "fastrun_mc,fastrun_gen",
    "--include_path",
    str(FASTRUN_TASKS),
    "--log_samples",
]
#: Keys of results_*.json that must be identical between runs.
COMPARED_KEYS = (
    "results",
    "n-samples",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "group_subtasks",
)
#: lm_eval installs python modules next to its YAML files; same for both runners.
_LOG_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2}:\d{2}:\d{2}:\d{2} ")


def lm_eval_tasks_dir() -> Path:
    """lm_eval's built-in tasks dir, found without importing lm_eval.tasks (~5 s)."""
    spec = importlib.util.find_spec("lm_eval")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def expected_cache(cache_dir: Path) -> _cache.IndexCache:
    """The cache file a fastrun job would use for the installed lm_eval."""
    tasks = lm_eval_tasks_dir()
    key = _cache.build_key(
        tasks,
        lm_eval_version=importlib.metadata.version("lm_eval"),
        source_files={
            "_index.py": tasks / "_index.py",
            "_yaml_loader.py": tasks / "_yaml_loader.py",
        },
    )
    return _cache.IndexCache(cache_dir, key, logging.getLogger("test"))


# ---------------------------------------------------------------- end to end


@dataclass
class Run:
    """One finished subprocess with its outputs."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    output_dir: Path

    def results(self) -> dict[str, Any]:
        files = sorted((self.output_dir / "dummy").glob("results_*.json"))
        assert len(files) == 1, (files, self.stderr[-3000:])
        data: dict[str, Any] = json.loads(files[0].read_text())
        return data

    def samples(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for path in sorted((self.output_dir / "dummy").glob("samples_*.jsonl")):
            task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
            out[task] = [json.loads(line) for line in path.read_text().splitlines()]
        return out


@dataclass
class Env:
    """Shared environment for every subprocess of the session."""

    root: Path
    env: dict[str, str]

    def start(
        self, name: str, argv: list[str], *, with_output: bool = True
    ) -> tuple[subprocess.Popen[str], Path, float]:
        out = self.root / "out" / name
        cmd = [*argv, "--output_path", str(out)] if with_output else argv
        proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return proc, out, time.monotonic()

    def finish(self, started: tuple[subprocess.Popen[str], Path, float]) -> Run:
        proc, out, t0 = started
        try:
            stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            pytest.fail(f"{proc.args!r} timed out\n{stderr[-3000:]}")
        args = proc.args
        assert isinstance(args, list)
        return Run(
            [str(a) for a in args], proc.returncode, stdout, stderr, time.monotonic() - t0, out
        )

    def run(self, name: str, argv: list[str], *, with_output: bool = True) -> Run:
        return self.finish(self.start(name, argv, with_output=with_output))


def fastrun_argv(cache_dir: Path, *lm_eval_args: str) -> list[str]:
    return fastrun.command(list(lm_eval_args), index_cache=cache_dir, python=PYTHON)


@pytest.fixture(scope="session")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("fastrun")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LMEVAL_", "PYTHONDONTWRITEBYTECODE", "HF_"))
    }
    env |= {
        "HF_HOME": str(root / "hf"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPYCACHEPREFIX": str(root / "pycache"),
        "PYTHONUNBUFFERED": "1",
    }
    # Fill the pycache once, so the concurrent runs below don't all compile lm_eval.
    subprocess.run(
        [PYTHON, "-c", "import lm_eval.__main__, lm_eval.evaluator, lm_eval.tasks"],
        env=env,
        cwd=root,
        check=True,
        timeout=RUN_TIMEOUT,
    )
    return Env(root, env)


@dataclass
class SlowRuns:
    stock: Run
    cold: Run
    fallback: Run
    cache_dir: Path


#: Makes lm_eval's TaskIndex look renamed, as a future lm_eval might.
_RENAMED_INTERNAL = (
    "import sys; from lmeval_trio.harness.fastrun import _patch, _main; "
    "_patch.TASKINDEX_METHODS = ('build', '_iter_yaml_files', 'process_cfg_renamed'); "
    "_main.main()"
)


@pytest.fixture(scope="session")
def slow_runs(e2e: Env) -> SlowRuns:
    """The three ~20 s runs, started together.

    * stock: the real ``lm_eval`` console script (the only stock run);
    * cold: fastrun whose cache file exists but is corrupt -> warn, rebuild, cache;
    * fallback: fastrun with an unrecognised lm_eval internal -> warn, stock path.
    """
    cache_dir = e2e.root / "index-cache"
    cache_dir.mkdir(mode=0o700)
    cache_file = expected_cache(cache_dir).path
    cache_file.write_bytes(b"this is not a task index\n")
    cache_file.chmod(0o600)
    fallback_cache = e2e.root / "fallback-cache"

    stock = e2e.start("stock", [LM_EVAL, *LM_EVAL_ARGS])
    cold = e2e.start("cold", fastrun_argv(cache_dir, *LM_EVAL_ARGS))
    fallback = e2e.start(
        "fallback",
        [PYTHON, "-c", _RENAMED_INTERNAL, "--index-cache", str(fallback_cache), *LM_EVAL_ARGS],
    )
    runs = SlowRuns(e2e.finish(stock), e2e.finish(cold), e2e.finish(fallback), cache_dir)
    for run in (runs.stock, runs.cold, runs.fallback):
        assert run.returncode == 0, (run.argv, run.stderr[-4000:])
    return runs


@pytest.fixture(scope="session")
def warm_run(e2e: Env, slow_runs: SlowRuns) -> Run:
    run = e2e.run("warm", fastrun_argv(slow_runs.cache_dir, *LM_EVAL_ARGS))
    assert run.returncode == 0, run.stderr[-4000:]
    print(
        f"\nfastrun timings: stock {slow_runs.stock.seconds:.1f} s, "
        f"cold {slow_runs.cold.seconds:.1f} s, fallback {slow_runs.fallback.seconds:.1f} s "
        f"(concurrent; each timed until collected), warm {run.seconds:.1f} s"
    )
    return run


def assert_same_results(expected: Run, actual: Run) -> None:
    want, got = expected.results(), actual.results()
    for key in COMPARED_KEYS:
        assert got.get(key) == want.get(key), key
    assert got["config"]["model_args"] == want["config"]["model_args"]
    assert actual.samples() == expected.samples()
    assert actual.stdout == expected.stdout


def lm_eval_log_lines(run: Run) -> list[str]:
    """stderr minus timestamps, tqdm bars, fastrun's own lines and the output dir."""
    stderr = run.stderr.replace(str(run.output_dir), "<output_path>")
    lines = []
    for raw in re.split(r"[\r\n]|(?=\d{4}-\d{2}-\d{2}:\d{2}:\d{2}:\d{2} )", stderr):
        line = _LOG_PREFIX.sub("", raw).rstrip()
        if not line or "[fastrun]" in line or re.search(r"\d+/\d+ \[", line):
            continue
        lines.append(line)
    return lines


def test_cold_run_matches_stock_and_rebuilds_corrupt_cache(slow_runs: SlowRuns) -> None:
    cold = slow_runs.cold
    assert_same_results(slow_runs.stock, cold)
    assert lm_eval_log_lines(cold) == lm_eval_log_lines(slow_runs.stock)
    assert re.search(
        r"WARNING .*\[fastrun\] task index: rejecting cache: .*unreadable header.*rebuilding",
        cold.stderr,
    )
    assert "[fastrun] task index: built " in cold.stderr
    cache = expected_cache(slow_runs.cache_dir)
    assert cache.read() is not None  # the rebuilt file replaced the corrupt one


def test_warm_run_hits_cache_and_matches_stock(slow_runs: SlowRuns, warm_run: Run) -> None:
    assert "[fastrun] task index: cache hit" in warm_run.stderr
    assert "task index: built" not in warm_run.stderr
    assert "WARNING  [fastrun]" not in warm_run.stderr
    assert_same_results(slow_runs.stock, warm_run)
    assert lm_eval_log_lines(warm_run) == lm_eval_log_lines(slow_runs.stock)


def test_unrecognised_internal_falls_back_to_stock(slow_runs: SlowRuns) -> None:
    run = slow_runs.fallback
    assert re.search(
        r"WARNING .*\[fastrun\] fastrun disabled: .*has no attribute 'process_cfg_renamed'"
        r".*falling back to stock",
        run.stderr,
    )
    assert "task index:" not in run.stderr
    assert not (slow_runs.cache_dir.parent / "fallback-cache").exists()
    assert_same_results(slow_runs.stock, run)
    assert lm_eval_log_lines(run) == lm_eval_log_lines(slow_runs.stock)


def test_tampered_cache_key_is_rejected(e2e: Env, slow_runs: SlowRuns, warm_run: Run) -> None:
    """A cache whose header claims another lm_eval version is never trusted."""
    good = expected_cache(slow_runs.cache_dir)
    tampered_dir = e2e.root / "tampered-cache"
    tampered_dir.mkdir(mode=0o700)
    header, payload = good.path.read_bytes().split(b"\n", 1)
    meta = json.loads(header)
    meta["key"]["lm_eval_version"] = "0.0.1"
    target = tampered_dir / good.path.name
    target.write_bytes(json.dumps(meta).encode() + b"\n" + payload)
    target.chmod(0o600)
    cache = _cache.IndexCache(tampered_dir, good.key, logging.getLogger("test"))
    with pytest.raises(_cache.CacheReject, match=r"key mismatch.*lm_eval_version"):
        cache.read()


def test_argparse_error_exits_2(e2e: Env, tmp_path: Path) -> None:
    run = e2e.run(
        "argparse", fastrun_argv(tmp_path, "run", "--model", "dummy", "--bogus"), with_output=False
    )
    assert run.returncode == 2
    assert "lm-eval: error: unrecognized arguments: --bogus" in run.stderr
    assert run.stdout == ""


def test_own_usage_error_exits_2(e2e: Env) -> None:
    run = e2e.run("usage", [PYTHON, "-m", fastrun.MODULE, "--index-cache"], with_output=False)
    assert run.returncode == 2
    assert "fastrun: error: --index-cache needs a directory" in run.stderr


def test_unknown_task_exits_1(e2e: Env, slow_runs: SlowRuns) -> None:
    run = e2e.run(
        "unknown",
        fastrun_argv(slow_runs.cache_dir, "--model", "dummy", "--tasks", "no_such_task_xyz"),
        with_output=False,
    )
    assert run.returncode == 1
    assert "ValueError: Tasks not found: no_such_task_xyz" in run.stderr
    assert "[fastrun] task index: cache hit" in run.stderr


def test_sigterm_kills_by_signal(e2e: Env, slow_runs: SlowRuns) -> None:
    """No handler is installed: SIGTERM kills the job like it kills stock lm_eval."""
    proc, _, _ = e2e.start("sigterm", fastrun_argv(slow_runs.cache_dir, *LM_EVAL_ARGS))
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == -signal.SIGTERM


# ------------------------------------------------------------------ argv


@pytest.mark.parametrize(
    ("argv", "cache", "rest"),
    [
        (["run", "--model", "dummy"], None, ["run", "--model", "dummy"]),
        (["--index-cache", "/c", "run"], "/c", ["run"]),
        (["--index-cache=/c", "--", "--index-cache", "x"], "/c", ["--index-cache", "x"]),
        (["--", "run"], None, ["run"]),
        (
            ["--model", "dummy", "--index-cache", "/c"],
            None,
            ["--model", "dummy", "--index-cache", "/c"],
        ),
        ([], None, []),
    ],
)
def test_split_args(argv: list[str], cache: str | None, rest: list[str]) -> None:
    opts = _main.parse_options(argv)
    assert (opts.cache_dir, opts.lm_eval_args) == (cache, rest)


@pytest.mark.parametrize("argv", [["--index-cache"], ["--index-cache="], ["--index-cache", ""]])
def test_split_args_rejects_missing_dir(argv: list[str]) -> None:
    with pytest.raises(_main.UsageError):
        _main.parse_options(argv)


def test_command_separates_lm_eval_args() -> None:
    argv = fastrun.command(["--index-cache", "run"], index_cache="/c", python="py")
    assert argv == [
        "py",
        "-m",
        "lmeval_trio.harness.fastrun",
        "--index-cache",
        "/c",
        "--",
        "--index-cache",
        "run",
    ]
    opts = _main.parse_options(argv[3:])
    assert (opts.cache_dir, opts.lm_eval_args) == ("/c", ["--index-cache", "run"])


def test_default_cache_dir_reads_env_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fastrun.ENV_INDEX_CACHE, "/somewhere")
    assert fastrun.default_cache_dir() == "/somewhere"
    monkeypatch.delenv(fastrun.ENV_INDEX_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert fastrun.default_cache_dir() == "/xdg/lmeval-trio/task-index"


# ---------------------------------------------------------- cache (no lm_eval)


def make_tree(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    (root / "a" / "t.yaml").write_text("task: t\n")
    (root / "a" / "_default_template_yaml").write_text("output_type: multiple_choice\n")
    (root / "a" / "__pycache__").mkdir()
    (root / "a" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    return root


def test_fingerprint_tracks_every_file_but_pycache(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tasks")
    base, count = _cache.fingerprint_tree(root)
    assert count == 2
    (root / "a" / "__pycache__" / "y.pyc").write_bytes(b"\0")
    assert _cache.fingerprint_tree(root)[0] == base
    template = root / "a" / "_default_template_yaml"
    template.write_text("output_type: generate_until\n")  # an extension-less include
    changed = _cache.fingerprint_tree(root)[0]
    assert changed != base
    (root / "b").mkdir()
    assert _cache.fingerprint_tree(root)[0] != changed
    st = template.stat()
    os.utime(template, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    touched = _cache.fingerprint_tree(root)[0]
    assert touched != changed


def test_fingerprint_ignores_ctime_but_not_inode(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tasks")
    base = _cache.fingerprint_tree(root)[0]
    task = root / "a" / "t.yaml"
    os.link(task, tmp_path / "hardlink")  # what uv does from its cache: ctime changes
    os.chmod(task, 0o600)
    assert _cache.fingerprint_tree(root)[0] == base
    st = task.stat()
    replacement = tmp_path / "replacement"
    replacement.write_text("task: u\n")  # same size, different content, new inode
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, task)
    assert task.stat().st_size == st.st_size and task.stat().st_mtime_ns == st.st_mtime_ns
    assert _cache.fingerprint_tree(root)[0] != base


def test_fingerprint_survives_symlink_loop(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tasks")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    digest, count = _cache.fingerprint_tree(root)
    assert count == 2 and len(digest) == 64


def key_for(root: Path, version: str = "0.4.13") -> _cache.CacheKey:
    src = root / "a" / "t.yaml"
    return _cache.build_key(root, lm_eval_version=version, source_files={"t.yaml": src})


def test_key_changes_with_version_and_tree(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tasks")
    key = key_for(root)
    assert key == key_for(root)
    assert key_for(root, "0.4.14").digest != key.digest
    (root / "a" / "new.yaml").write_text("task: new\n")
    assert key_for(root).digest != key.digest


def test_cache_round_trip_and_rejections(tmp_path: Path) -> None:
    log = logging.getLogger("test")
    root = make_tree(tmp_path / "tasks")
    cache_dir = tmp_path / "cache"
    cache = _cache.IndexCache(cache_dir, key_for(root), log)
    assert cache.read() is None  # plain miss, no directory yet
    assert cache.write(b"payload-1")
    assert oct(cache_dir.stat().st_mode & 0o777) == "0o700"
    assert oct(cache.path.stat().st_mode & 0o777) == "0o600"
    assert cache.read() == b"payload-1"

    blob = cache.path.read_bytes()
    cache.path.write_bytes(blob[:-1])
    with pytest.raises(_cache.CacheReject, match="truncated or corrupt"):
        cache.read()
    cache.path.write_bytes(blob[:-1] + b"X")
    with pytest.raises(_cache.CacheReject, match="truncated or corrupt"):
        cache.read()
    cache.path.write_bytes(b"\x80garbage")
    with pytest.raises(_cache.CacheReject, match="unreadable header"):
        cache.read()
    cache.path.write_bytes(b'{"magic": "something else"}\n')
    with pytest.raises(_cache.CacheReject, match="not a fastrun"):
        cache.read()

    cache.write(b"payload-2")
    cache.path.chmod(0o666)
    with pytest.raises(_cache.CacheReject, match="world-writable"):
        cache.read()


def test_write_prunes_other_fingerprints_only(tmp_path: Path) -> None:
    log = logging.getLogger("test")
    root = make_tree(tmp_path / "tasks")
    other_root = make_tree(tmp_path / "other")
    cache_dir = tmp_path / "cache"
    old = _cache.IndexCache(cache_dir, key_for(root), log)
    old.write(b"old")
    other = _cache.IndexCache(cache_dir, key_for(other_root), log)
    other.write(b"other tasks dir")
    stale_tmp = cache_dir / ".tmp-dead.pickle"
    stale_tmp.write_bytes(b"")
    os.utime(stale_tmp, (0, 0))
    (root / "a" / "t.yaml").write_text("task: t2\n")
    new = _cache.IndexCache(cache_dir, key_for(root), log)
    assert new.path != old.path
    new.write(b"new")
    assert not old.path.exists() and not stale_tmp.exists()
    assert other.read() == b"other tasks dir"
    assert new.read() == b"new"


def test_concurrent_writers_never_expose_partial_files(tmp_path: Path) -> None:
    log = logging.getLogger("test")
    cache = _cache.IndexCache(tmp_path / "cache", key_for(make_tree(tmp_path / "t")), log)
    payloads = {bytes([i]) * 200_000 for i in range(4)}
    stop = threading.Event()
    seen: list[bytes | None] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append(cache.read())  # raises CacheReject on a partial file

    def writer(payload: bytes) -> None:
        for _ in range(10):
            assert cache.write(payload)

    read_thread = threading.Thread(target=reader)
    read_thread.start()
    writers = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    read_thread.join()
    assert set(seen) <= payloads | {None}
    assert cache.read() in payloads
    assert [p.name for p in cache.cache_dir.iterdir()] == [cache.path.name]


def test_write_failure_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = _cache.IndexCache(
        blocker / "sub", key_for(make_tree(tmp_path / "t")), logging.getLogger("t")
    )
    with caplog.at_level(logging.WARNING, logger="t"):
        assert cache.write(b"x") is False
    assert "could not write cache" in caplog.text


# ------------------------------------------------------ logging replay (no lm_eval)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def capture(level: int, *loggers: logging.Logger) -> Iterator[ListHandler]:
    """Attach a handler directly (lm_eval's own setup may stop propagation to root)."""
    handler = ListHandler()
    saved = [(lg, lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(level)
        lg.propagate = False
    try:
        yield handler
    finally:
        for lg, lvl, prop in saved:
            lg.removeHandler(handler)
            lg.setLevel(lvl)
            lg.propagate = prop


def test_recording_logger_attributes_records_to_the_caller() -> None:
    real = logging.getLogger("test.fake_index")
    recorder = _patch.RecordingLogger(real, frozenset({"skip me %s"}))

    def process(log: Any) -> None:
        log.debug("Skip %s (%s)", Path("/x.yaml"), ValueError("bad"))
        log.warning("Duplicate task name 'x'")
        log.debug("skip me %s", 1)

    with capture(logging.INFO, real) as live:
        process(recorder)
    assert [(r.levelno, r.funcName, r.getMessage()) for r in live.records] == [
        (logging.WARNING, "process", "Duplicate task name 'x'")
    ]
    assert [(r[0], r[3], r[4]) for r in recorder.records] == [
        (logging.DEBUG, "process", "Skip /x.yaml (bad)"),
        (logging.WARNING, "process", "Duplicate task name 'x'"),
    ]
    with capture(logging.DEBUG, real) as replayed:
        _patch.replay(real, recorder.records)
    assert [
        (r.levelno, r.pathname, r.lineno, r.funcName, r.getMessage()) for r in replayed.records
    ] == recorder.records


# -------------------------------------------------- validation (no lm_eval.tasks)


def test_inspect_targets_reports_missing_class() -> None:
    fake = type(sys)("lm_eval.tasks._index")
    with pytest.raises(_patch.Unsupported, match="TaskIndex is missing"):
        _patch.inspect_targets(fake)


def test_inspect_targets_reports_unvalidated_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_patch, "VALIDATED_SOURCES", {"9.9.9": {}})
    with pytest.raises(_patch.Unsupported, match=r"lm_eval \S+ has not been validated"):
        _patch.inspect_targets(type(sys)("x"))


def test_an_unvalidated_lm_eval_is_reported_before_its_index_loads(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """lm_eval < 0.4.12 never imports the index module: the warning cannot wait for it."""
    monkeypatch.setattr(_patch, "VALIDATED_SOURCES", {"9.9.9": {}})
    finders = list(sys.meta_path)
    log = logging.getLogger("test.fastrun.unvalidated")
    with caplog.at_level(logging.WARNING, logger=log.name):
        _patch.install(tmp_path, log)
    assert sys.meta_path == finders  # nothing waits to patch
    version = importlib.metadata.version("lm_eval")
    assert caplog.messages == [
        f"fastrun disabled: lm_eval {version} has not been validated (validated: 9.9.9); "
        "falling back to stock lm_eval task indexing (slow start, identical results)"
    ]


# ------------------------------------------- in-process parity with lm_eval's build


FAKE_BUILTIN = {
    "arc/_template_yaml": "output_type: multiple_choice\ndoc_to_text: q\n",
    "arc/arc_easy.yaml": "include: _template_yaml\ntask: arc_easy\ntag: [ai2_arc]\n",
    "arc/arc_hard.yaml": "include: _template_yaml\ntask: arc_hard\ntag: ai2_arc\n",
    "arc/dup.yaml": "task: arc_easy\n",  # duplicate name -> WARNING from process_cfg
    "grp/group.yaml": "group: grp\ntask: [arc_easy, arc_hard]\n",
    "bad/shape.yaml": "dataset_path: x\n",  # unknown shape -> DEBUG "Skip"
    "bad/list.yaml": "- 1\n",
    "py/task.yaml": "task: pyt\nclass: !function mod.Cls\n",
    "__pycache__/ignored.yaml": "task: nope\n",
}
INCLUDED = {
    "mine.yaml": "task: arc_hard\n",  # overrides a "built-in" -> merge WARNING
    "extra.yaml": "task: extra\ntag: ai2_arc\n",
}


def write_files(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture(scope="module")
def index_mod() -> Any:
    import lm_eval.tasks._index as index_mod

    return index_mod


@pytest.fixture
def fresh_process(index_mod: Any) -> Iterator[Callable[[], None]]:
    """Undo fastrun's patches: between simulated processes and after the test."""
    saved = {n: index_mod.TaskIndex.__dict__[n] for n in _patch.TASKINDEX_METHODS}
    saved_load, saved_log = index_mod.load_yaml, index_mod.log

    def restore() -> None:
        for name, raw in saved.items():
            setattr(index_mod.TaskIndex, name, raw)
        index_mod.load_yaml, index_mod.log = saved_load, saved_log

    try:
        yield restore
    finally:
        restore()


FASTRUN_TEST_LOG = logging.getLogger("test.fastrun")
BuildResult = tuple[dict[str, Any], list[tuple[Any, ...]], list[str]]


def capture_build(index_mod: Any, paths: list[Path], **kwargs: Any) -> BuildResult:
    """Build, returning (index, lm_eval log records, fastrun messages)."""
    with capture(logging.DEBUG, index_mod.log, FASTRUN_TEST_LOG) as handler:
        index = index_mod.TaskIndex.build(paths, **kwargs)
    lm = [
        (r.name, r.levelno, r.pathname, r.lineno, r.funcName, r.getMessage())
        for r in handler.records
        if r.name.startswith("lm_eval")
    ]
    ours = [r.getMessage() for r in handler.records if r.name == FASTRUN_TEST_LOG.name]
    return index, lm, ours


def test_patched_build_equals_stock_build(
    index_mod: Any, fresh_process: Callable[[], None], tmp_path: Path
) -> None:
    builtin = write_files(tmp_path / "builtin", FAKE_BUILTIN)
    included = write_files(tmp_path / "included", INCLUDED)
    paths = [builtin, included]
    stock = capture_build(index_mod, paths)
    stock_flat = capture_build(index_mod, paths, resolve_includes=False)
    stock_index, stock_logs, _ = stock
    assert {r[1] for r in stock_logs} >= {logging.DEBUG, logging.WARNING}  # both paths exercised
    assert stock_index["arc_hard"].yaml_path == included / "mine.yaml"  # include_path wins

    targets = dataclasses.replace(_patch.inspect_targets(index_mod), default_root=builtin)
    cache_dir = tmp_path / "cache"

    def new_process() -> None:
        fresh_process()
        _patch.Patcher(targets, cache_dir, FASTRUN_TEST_LOG).install()

    new_process()
    cold_index, cold_logs, cold_msgs = capture_build(index_mod, paths)
    assert any("cache miss" in m for m in cold_msgs), cold_msgs
    assert list(cold_index.items()) == list(stock_index.items())
    assert cold_logs == stock_logs

    new_process()
    warm_index, warm_logs, warm_msgs = capture_build(index_mod, paths)
    assert any("cache hit" in m for m in warm_msgs), warm_msgs
    assert list(warm_index.items()) == list(stock_index.items())
    assert warm_logs == stock_logs
    assert warm_index["arc_easy"] is not cold_index["arc_easy"]

    # A second TaskManager in the same process: fresh, equal entries; same log lines.
    again_index, again_logs, again_msgs = capture_build(index_mod, paths)
    assert list(again_index.items()) == list(stock_index.items())
    assert again_logs == stock_logs and not again_msgs
    assert again_index["arc_easy"] is not warm_index["arc_easy"]

    # resolve_includes=False never uses the cache (built with includes resolved).
    flat_index, flat_logs, flat_msgs = capture_build(index_mod, paths, resolve_includes=False)
    assert (flat_index, flat_logs, flat_msgs) == stock_flat


@pytest.mark.parametrize("damage", ["payload", "header"])
def test_bad_cache_content_rebuilds_with_warning(
    index_mod: Any, fresh_process: Callable[[], None], tmp_path: Path, damage: str
) -> None:
    builtin = write_files(tmp_path / "builtin", FAKE_BUILTIN)
    stock_index, stock_logs, _ = capture_build(index_mod, [builtin])
    targets = dataclasses.replace(_patch.inspect_targets(index_mod), default_root=builtin)
    cache_dir = tmp_path / "cache"
    key = _cache.build_key(
        builtin, lm_eval_version=targets.version, source_files=targets.source_files
    )
    cache = _cache.IndexCache(cache_dir, key, FASTRUN_TEST_LOG)
    if damage == "payload":  # a valid file whose pickle is not an index
        cache.write(pickle.dumps(("not", "entries")))
        expected = "is unreadable"
    else:  # a real index, but the header claims another lm_eval version
        _patch.Patcher(targets, cache_dir, FASTRUN_TEST_LOG).install()
        capture_build(index_mod, [builtin])
        fresh_process()
        head, payload = cache.path.read_bytes().split(b"\n", 1)
        meta = json.loads(head)
        meta["key"]["lm_eval_version"] = "0.0.1"
        cache.path.write_bytes(json.dumps(meta).encode() + b"\n" + payload)
        expected = "key mismatch (differs in: lm_eval_version)"

    _patch.Patcher(targets, cache_dir, FASTRUN_TEST_LOG).install()
    index, logs, msgs = capture_build(index_mod, [builtin])
    assert list(index.items()) == list(stock_index.items()) and logs == stock_logs
    assert any(expected in m and "rebuilding" in m for m in msgs), msgs
    assert any(m.startswith("task index: built") for m in msgs), msgs
    assert cache.read() is not None


# ------------------------------------------------------------ fork server


@dataclass
class ForkServerProcess:
    proc: subprocess.Popen[bytes]
    name: str  # its socket's
    preloading: str  # what it printed before it was ready (the server's log, not a job's)


def start_fork_server(
    e2e: Env, cache_dir: Path, env: dict[str, str] | None = None, *, preload_hf: str = "off"
) -> ForkServerProcess:
    """``fastrun --fork-server`` on a socket made here (as the server makes it), once ready."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    name = f"lmeval-trio-test-{os.getpid()}-{time.monotonic_ns()}"
    env = {**(env or e2e.env), **SINGLE_THREADED_IMPORTS}  # as the server sets them
    listener.bind("\0" + name)
    listener.listen(8)
    argv = [PYTHON, "-m", fastrun.MODULE, "--index-cache", str(cache_dir), "--fork-server"]
    with listener:
        proc = subprocess.Popen(
            [
                *argv,
                f"--listen-fd={listener.fileno()}",
                "--grace-s=2",
                f"--preload-hf={preload_hf}",
            ],
            cwd=e2e.root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),),
            start_new_session=True,
        )
    assert proc.stdout is not None
    said = b""
    while (line := proc.stdout.readline()) != _warm.READY:
        assert line, said.decode()
        said += line
    return ForkServerProcess(proc, name, said.decode())


def launch(
    e2e: Env,
    server: ForkServerProcess,
    name: str,
    args: list[str],
    *,
    spec: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[Run, str]:
    """A job through the launcher, as the server starts it: its run, and what the launcher
    said on its info pipe (``pid N`` or ``cold REASON``)."""
    out = e2e.root / "out" / name
    full = [*args, "--output_path", str(out)]
    text = spec or _warm.Spec(args=full, cwd=str(e2e.root)).encode().decode().strip()
    info_r, info_w = os.pipe()
    options = [f"--socket={server.name}", f"--info-fd={info_w}", f"--spec={text}"]
    cold = fastrun_argv(e2e.root / "unused-cache", *full)
    proc = subprocess.Popen(
        [*LAUNCHER, *options, "--", *cold],
        cwd=e2e.root,
        env={**(env or e2e.env), **SINGLE_THREADED_IMPORTS},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=(info_w,),
        start_new_session=True,
    )
    os.close(info_w)
    run = e2e.finish((proc, out, time.monotonic()))
    with os.fdopen(info_r, "rb") as info:
        return run, info.read().decode()


def end_fork_server(server: ForkServerProcess) -> None:
    """Drain it: it exits quietly (its own log says so, nothing else)."""
    rest, _ = server.proc.communicate(b"drain\n", timeout=RUN_TIMEOUT)
    lines = rest.decode().splitlines()
    assert server.proc.returncode == 0, lines
    assert len(lines) == 1 and "asked to drain; exiting once 0 job(s) end" in lines[0], lines


def test_forked_job_matches_stock(e2e: Env, slow_runs: SlowRuns, warm_run: Run) -> None:
    """Results, samples, stdout and lm-eval's log lines of a forked job are stock's."""
    server = start_fork_server(e2e, slow_runs.cache_dir)
    runs = [launch(e2e, server, f"forked-{n}", LM_EVAL_ARGS) for n in range(2)]
    assert "[fastrun] task index: cache hit" in server.preloading
    for run, said in runs:
        assert run.returncode == 0, run.stderr[-4000:]
        assert re.fullmatch(r"pid \d+\n", said), said
        # The job's log starts when it is forked: the fork server's preload is not in it.
        assert "task index: cache hit" not in run.stderr
        first_line = run.stderr.splitlines()[0]
        assert "[fastrun] warm start: forked by a fork server" in first_line, run.stderr[:2000]
        assert "[fastrun] task index: preloaded by the fork server" in run.stderr
        assert "WARNING  [fastrun]" not in run.stderr
        assert_same_results(slow_runs.stock, run)
        assert lm_eval_log_lines(run) == lm_eval_log_lines(slow_runs.stock)
    end_fork_server(server)


def test_stale_fork_server_retires_and_the_job_starts_cold(
    e2e: Env, slow_runs: SlowRuns, warm_run: Run
) -> None:
    """A file the fork server imported changes (an upgrade): it refuses the job, which the
    launcher starts cold (never stale, never failed), and it retires."""
    site = e2e.root / "stale-site"
    site.mkdir(exist_ok=True)
    module = site / "sitecustomize.py"
    module.write_text("VERSION = 1\n")
    env = {**e2e.env, "PYTHONPATH": str(site)}
    server = start_fork_server(e2e, slow_runs.cache_dir, env)
    module.write_text("VERSION = 22\n")
    run, said = launch(e2e, server, "stale-fork-server", LM_EVAL_ARGS, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    assert re.fullmatch(
        r"cold fork server refused: .*sitecustomize\.py changed since the fork server imported "
        r"it\n",
        said,
    ), said
    assert "[fastrun] warm start" not in run.stderr
    assert_same_results(slow_runs.stock, run)
    assert lm_eval_log_lines(run) == lm_eval_log_lines(slow_runs.stock)
    rest, _ = server.proc.communicate(timeout=RUN_TIMEOUT)  # it retired by itself
    assert server.proc.returncode == 0
    assert "sitecustomize.py changed since it was imported; exiting once 0 job(s) end" in (
        rest.decode()
    )


@pytest.mark.parametrize(
    ("spec", "env", "refusal"),
    [
        ('{"args": "run", "cwd": "/"}', None, "invalid job spec: 'args' must be a list of strings"),
        (None, {"ANOTHER_VARIABLE": "1"}, "the job's environment differs from the fork server's"),
    ],
)
def test_fork_server_refuses_what_it_cannot_serve(
    e2e: Env,
    slow_runs: SlowRuns,
    spec: str | None,
    env: dict[str, str] | None,
    refusal: str,
) -> None:
    server = start_fork_server(e2e, slow_runs.cache_dir)
    job_env = {**e2e.env, **env} if env else None
    run, said = launch(e2e, server, "refused", ["--help"], spec=spec, env=job_env)
    assert said == f"cold fork server refused: {refusal}\n"
    assert run.returncode == 0 and "usage:" in run.stdout  # the cold start ran the job
    end_fork_server(server)


def test_fork_server_without_jobs_exits_quietly(e2e: Env, slow_runs: SlowRuns) -> None:
    end_fork_server(start_fork_server(e2e, slow_runs.cache_dir))


def test_import_snapshot_sees_changed_and_new_files(tmp_path: Path) -> None:
    package = tmp_path / "snap_pkg"
    package.mkdir()
    module = package / "snapmod_xyz.py"
    module.write_text("X = 1\n")
    sys.path.insert(0, str(package))
    try:
        importlib.import_module("snapmod_xyz")
        snapshot = _warm.ImportSnapshot()
        assert snapshot.changed() is None
        module.write_text("X = 22\n")
        assert snapshot.changed() == str(module)
        module.write_text("X = 1\n")
        shutil.rmtree(package / "__pycache__", ignore_errors=True)  # the import's own
        snapshot = _warm.ImportSnapshot()
        compileall.compile_dir(package, quiet=1)  # the server's bytecode compile: no change
        assert (package / "__pycache__").is_dir()
        assert snapshot.changed() is None
        (package / "newly_installed.pth").write_text("")  # the sys.path directory changes
        assert snapshot.changed() in (str(package), str(module))
    finally:
        sys.path.remove(str(package))
        sys.modules.pop("snapmod_xyz", None)


@pytest.mark.parametrize(
    ("argv", "fork_server", "listen_fd", "grace_s"),
    [
        (["--fork-server"], True, None, 5.0),
        (["--index-cache", "/c", "--fork-server", "--listen-fd", "7"], True, 7, 5.0),
        (["--listen-fd=9", "--grace-s=1.5", "--fork-server"], True, 9, 1.5),
        (["run", "--fork-server"], False, None, 5.0),
    ],
)
def test_fork_server_options(
    argv: list[str], fork_server: bool, listen_fd: int | None, grace_s: float
) -> None:
    opts = _main.parse_options(argv)
    assert (opts.fork_server, opts.listen_fd, opts.grace_s) == (fork_server, listen_fd, grace_s)


@pytest.mark.parametrize(
    "argv",
    [
        ["--fork-server", "run"],
        ["--listen-fd", "x"],
        ["--listen-fd="],
        ["--grace-s=soon"],
        ["--fork-server", "--", "run"],
    ],
)
def test_fork_server_option_errors(argv: list[str]) -> None:
    with pytest.raises(_main.UsageError):
        _main.parse_options(argv)


def test_tree_watch_vouches_only_for_an_unchanged_tree(tmp_path: Path) -> None:
    """The fork server's watch over the built-in tasks: any change below the root (a file
    edited, added, renamed, a folder added) ends its vouching for good; the bytecode compile's
    ``__pycache__`` does not count, as the index's fingerprint skips it too."""
    from lmeval_trio.harness.fastrun._watch import TreeWatch

    (tmp_path / "group" / "deep").mkdir(parents=True)
    task = tmp_path / "group" / "deep" / "task.yaml"
    task.write_text("task: a\n")
    for change in (
        lambda: task.write_text("task: b\n"),
        lambda: (tmp_path / "group" / "new.yaml").write_text("task: c\n"),
        lambda: task.rename(tmp_path / "group" / "moved.yaml"),
        lambda: (tmp_path / "group" / "folder").mkdir(),
    ):
        watch = TreeWatch(str(tmp_path))
        (tmp_path / "group" / "__pycache__").mkdir(exist_ok=True)
        task.read_text() if task.exists() else None
        assert watch.unchanged()
        change()
        assert not watch.unchanged()
        assert not watch.unchanged()  # for good
        watch.close_in_child()


def test_folder_watch_covers_its_folders_not_below(tmp_path: Path) -> None:
    """The import snapshot's watch: a change in a watched folder ends its vouching (then the
    snapshot stats every file); one in a folder below it, or a ``__pycache__`` added, does not
    (each imported file's own folder is watched, so nothing imported lives below)."""
    from lmeval_trio.harness.fastrun._watch import FolderWatch

    (tmp_path / "below").mkdir()
    watch = FolderWatch([str(tmp_path)])
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "below" / "other.py").write_text("")
    assert watch.unchanged()
    (tmp_path / "module.py").write_text("X = 1\n")
    assert not watch.unchanged()
    watch.close_in_child()
    assert not FolderWatch([str(tmp_path / "missing")]).unchanged()  # cannot vouch


# ------------------------------------------------------------ fork servers that preload hf

HF_TASKS = hf_model.TASKS
HF_MODEL_ARGS = ["--model", "hf", "--tasks", "tiny_mc", "--include_path", str(HF_TASKS)]


def build_tiny_hf_model(folder: Path) -> Path:
    """The tiny local GPT-2 of tests/support/hf_model.py; skipped where torch & co are not
    installed."""
    for module in ("torch", "tokenizers", "transformers"):
        pytest.importorskip(module)
    return hf_model.build_tiny_hf_model(folder)


def hf_results(run: Run) -> dict[str, Any]:
    files = sorted(run.output_dir.rglob("results_*.json"))
    assert len(files) == 1, (files, run.stderr[-3000:])
    data: dict[str, Any] = json.loads(files[0].read_text())
    return data


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def maps_torch(pid: int) -> bool:
    """Whether the process has torch's shared library mapped (it imported torch)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_forked_hf_job_matches_stock(e2e: Env, tmp_path: Path) -> None:
    """A fork server that preloaded torch, transformers and lm-eval's hf module has one
    thread when it forks, and its forked hf job's results, samples and log are stock's."""
    model = build_tiny_hf_model(tmp_path / "tiny-gpt2")
    args = ["run", *HF_MODEL_ARGS, "--model_args", f"pretrained={model}", "--log_samples"]
    # transformers 5 fetches hub kernels unless told not to (or the kernels package is in).
    e2e = dataclasses.replace(e2e, env={**e2e.env, "USE_HUB_KERNELS": "0"})
    stock = e2e.start("hf-stock", [LM_EVAL, *args])
    server = start_fork_server(e2e, tmp_path / "cache", preload_hf="on")
    assert maps_torch(server.proc.pid)
    assert threads_of(server.proc.pid) == 1  # no OpenMP, MKL or tokenizers pool before forking
    run, said = launch(e2e, server, "hf-forked", args)
    assert threads_of(server.proc.pid) == 1
    stock_run = e2e.finish(stock)
    assert stock_run.returncode == 0, stock_run.stderr[-4000:]
    assert run.returncode == 0, run.stderr[-4000:]
    assert re.fullmatch(r"pid \d+\n", said), said  # forked, not sent cold
    assert "WARNING  [fastrun]" not in run.stderr
    assert "TOKENIZERS_PARALLELISM" not in run.stderr + stock_run.stderr
    want, got = hf_results(stock_run), hf_results(run)
    for key in COMPARED_KEYS:
        assert got.get(key) == want.get(key), key
    assert got["results"]["tiny_mc"]["acc,none"] == want["results"]["tiny_mc"]["acc,none"]
    stock_samples = [
        json.loads(line)
        for f in stock_run.output_dir.rglob("samples_*.jsonl")
        for line in f.read_text().splitlines()
    ]
    forked_samples = [
        json.loads(line)
        for f in run.output_dir.rglob("samples_*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert len(forked_samples) == 8
    assert [s["resps"] for s in forked_samples] == [s["resps"] for s in stock_samples]
    assert lm_eval_log_lines(run) == lm_eval_log_lines(stock_run)
    end_fork_server(server)


@pytest.mark.parametrize(("preload_hf", "hide_torch"), [("auto", True), ("off", False)])
def test_fork_server_does_not_preload_hf(
    e2e: Env, tmp_path: Path, preload_hf: str, hide_torch: bool
) -> None:
    """Auto in a job environment where torch is not importable, or off: no torch imported."""
    env = dict(e2e.env)
    if hide_torch:  # as in an environment without torch: find_spec and import find nothing
        site = tmp_path / "no-torch"
        site.mkdir()
        (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
        env["PYTHONPATH"] = str(site)
    server = start_fork_server(e2e, tmp_path / "cache", env, preload_hf=preload_hf)
    assert not maps_torch(server.proc.pid)
    assert "transformers" not in Path(f"/proc/{server.proc.pid}/maps").read_text()
    end_fork_server(server)


def test_auto_preloads_hf_where_torch_is_importable() -> None:
    assert _warm.preloads_hf("auto") is (importlib.util.find_spec("torch") is not None)
    assert _warm.preloads_hf("on") and not _warm.preloads_hf("off")
    assert _main.parse_options(["--fork-server", "--preload-hf=off"]).preload_hf == "off"
    with pytest.raises(_main.UsageError, match="auto, on or off"):
        _main.parse_options(["--fork-server", "--preload-hf=sometimes"])
