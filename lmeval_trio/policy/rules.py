"""The execution policy: what a job request may run, set, read and write.

An evaluation server holds GPUs and model credentials, so every way a request could run code
of its choosing (another executable, a preloaded library, Python from a task folder, remote
model code) or touch files outside the places it may use is refused unless the operator opted
in. Each refusal names the field and the rule.

Paths are judged where the job will use them (see paths.py): a request's paths may name the
job's own folder and the operator's roots, never the server's own files (its data directory:
the store, other jobs' folders, the shared caches). Code execution and online access are
judged on the values lm-eval will run with (see effective.py), defaults included.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmeval_trio.config import Settings
from lmeval_trio.errors import Forbidden, InvalidRequest
from lmeval_trio.harness.request_model import PATH_FIELDS as PATH_FLAGS
from lmeval_trio.policy import budget as admission
from lmeval_trio.policy.paths import Where, inside, resolve
from lmeval_trio.policy.secrets import secret_name

if TYPE_CHECKING:
    from lmeval_trio.harness.effective import EffectiveRun

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# Variables that make a loader, interpreter, compiler or shell run code of the caller's
# choosing, or that change whom the job trusts (certificates). Compared upper-cased.
DENIED_ENV_PREFIXES = (
    "LD_",
    "DYLD_",
    "PYTHON",
    "PERL5",
    "RUBY",
    "NODE_",
    "GCONV_",
    "MALLOC_",
    "GIT_",
    "OPENSSL_",
    "TRITON_",
)
DENIED_ENV_NAMES = frozenset(
    {
        # shells and the process search path
        *("PATH", "BASH_ENV", "ENV", "ZDOTDIR", "SHELL", "SHELLOPTS", "IFS", "PS4", "HOME"),
        "PROMPT_COMMAND",
        # glibc's "unsecure" variables (ignored for setuid programs for the same reason)
        *("GLIBC_TUNABLES", "GETCONF_DIR", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH"),
        *("NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TZDIR"),
        # compilers (Triton and torch build kernels at run time) and other interpreters
        *("CC", "CXX", "LDSHARED", "PERLLIB", "JAVA_TOOL_OPTIONS"),
        # Python code loaded from a folder the variable names
        *("HF_MODULES_CACHE", "MEGATRON_PATH"),
        # trust and secrets
        *("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"),
        "SSLKEYLOGFILE",
    }
)
# Harmless interpreter knobs a job may still set.
ALLOWED_PYTHON_ENV = frozenset({"PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONUNBUFFERED"})
#: Variables naming the Hugging Face caches a job writes (job_walls grants them): one list,
#: so every folder the wall opens for writing was judged (and made absolute) by the policy.
HF_CACHE_VARIABLES = (
    *("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE"),
    *("HF_ASSETS_CACHE", "HF_XET_CACHE"),
)
# Variables naming a folder or file the job reads or writes: their values obey the path rule.
PATH_ENV_NAMES = frozenset(
    {
        *HF_CACHE_VARIABLES,
        *("HF_HOME", "HF_TOKEN_PATH", "LM_HARNESS_CACHE_PATH"),
        *("TORCH_HOME", "TORCHINDUCTOR_CACHE_DIR", "VLLM_CACHE_ROOT", "NUMBA_CACHE_DIR"),
        *("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR", "WANDB_DIR"),
        *("TMPDIR", "TMP", "TEMP"),
    }
)
# A credential variable so named holds a path, judged (and passed resolved) like any other.
FILE_NAME_SUFFIXES = ("_FILE", "_PATH", "_DIR", "FILE", "PATH")
# Gated by allow_code_execution.
CODE_ENV_NAMES = frozenset({"HF_ALLOW_CODE_EVAL", "HF_DATASETS_TRUST_REMOTE_CODE"})
# Set by the server when code execution is off (the effective value, whatever the server's
# own environment holds; `evaluate` runs generated code only with HF_ALLOW_CODE_EVAL=1).
CODE_OFF_ENV = dict.fromkeys(sorted(CODE_ENV_NAMES), "0")
CODE_FLAGS = ("trust_remote_code", "confirm_run_unsafe_code")
# Set by the server when online access is off; a request may not lift them.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
ONLINE_FLAGS = ("wandb_args", "wandb_config_args", "trackio_args", "hf_hub_log_args")
# Folders lm-eval scans for task YAMLs or writes results into: symlinks inside them must
# stay inside the allowed places too.
SCANNED_FLAGS = ("include_path", "output_path")
# Paths the job reads: they must exist when the request is made.
READ_FLAGS = ("include_path", "config")
# Paths the job writes: never into the built-in read-only roots (the shipped examples).
WRITTEN_FLAGS = ("output_path", "use_cache")
# Effective defaults that run code from a model's repository whatever the request spells
# (lm-eval 0.4.13; found with `grep -rn trust_remote_code lm_eval/models lm_eval/tasks`).
# Every other model class defaults trust_remote_code to False or loads no repository code.
REMOTE_CODE_MODEL_DEFAULTS = {
    "sglang": "models/sglang_causallms.py: SGLangLM(trust_remote_code: bool = True)",
}
# Tasks whose own code loads the tokenizer named in model_args/metadata with
# trust_remote_code=True (task names, matched as prefixes).
REMOTE_CODE_TASK_PREFIXES = (
    "ruler",  # tasks/ruler/common_utils.py: get_tokenizer(...)
    "niah_",  # the RULER needle-in-a-haystack tasks (same helper)
    "babilong",  # tasks/babilong/common_utils.py: get_tokenizer(...)
)
MAX_CONFIG_BYTES = 1024 * 1024
NAME_MAX = 255  # bytes in one file name (Linux)
CONFIG_COPY = "request-config.yaml"  # the judged --config bytes, in the job's folder
MAX_GLOB_MATCHES = 1_000
MAX_SCANNED_ENTRIES = 100_000
CODE_RULE = "code execution is off (LMEVAL_ALLOW_CODE_EXECUTION)"
ONLINE_RULE = "online access is off (LMEVAL_ALLOW_ONLINE)"


class PolicyViolation(Forbidden):
    """A request the policy refuses (HTTP 403); ``field`` and ``rule`` say which and why."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class MissingPath(InvalidRequest, ValueError):
    """A path the job would read does not exist (HTTP 422): refused at submission rather
    than by a job that fails minutes later."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Admitted:
    """What the policy let through, and where each of the request's paths points."""

    flags: dict[str, Where]  # output_path, use_cache, include_path, config, samples
    tasks: dict[str, Where]  # task entries that are files, folders or globs
    env: dict[str, Where]  # variables the server knows to name one path
    #: The ``--config`` file's bytes as judged: the job reads this copy (CONFIG_COPY in its
    #: folder), so a file changed after the verdict changes nothing.
    config_bytes: bytes | None = None
    #: What lm-eval will run with, as the policy judged it (lm-eval's parser accepted it):
    #: a sweep's cells reuse it rather than parse each request again.
    run: EffectiveRun | None = None

    def apply(self, request: Mapping[str, Any], job_dir: Path) -> dict[str, Any]:
        """``request`` with every judged path absolute, for the job in ``job_dir``: what the
        job's argv and environment carry, so the child uses exactly what was judged."""
        values = dict(request)
        for name, where in self.flags.items():
            values[name] = str(where.at(job_dir))
        if self.config_bytes is not None:
            values["config"] = str(job_dir / CONFIG_COPY)
        if self.tasks:
            values["tasks"] = [
                str(self.tasks[t].at(job_dir)) if t in self.tasks else t
                for t in _task_names(request.get("tasks"))
            ]
        if self.env:
            env = dict(request.get("env_vars") or {})
            env.update({name: str(where.at(job_dir)) for name, where in self.env.items()})
            values["env_vars"] = env
        return values


@dataclass(frozen=True)
class Policy:
    """The rules in force, derived from settings once."""

    settings: Settings
    default_executable: tuple[str, ...]

    @property
    def roots(self) -> tuple[Path, ...]:
        """Folders a request's paths may name besides the job's own folder: the operator's
        roots and the built-in read-only ones (the shipped examples)."""
        builtin = (Path(os.path.realpath(r)) for r in self.settings.builtin_read_roots)
        return (*self.write_roots, *builtin)

    @property
    def write_roots(self) -> tuple[Path, ...]:
        """Where jobs may write besides their own folder: the operator's roots only."""
        return tuple(Path(os.path.realpath(r)) for r in self.settings.allowed_path_roots)

    @property
    def server_dirs(self) -> tuple[Path, ...]:
        """The server's own files (the store, every job's folder, the shared caches): never a
        request's target, even where an operator root contains them."""
        dirs = (self.settings.data_dir, self.settings.effective_cache_dir)
        return tuple(Path(os.path.realpath(d)) for d in dirs)

    @property
    def jobs_dir(self) -> Path:
        """Where job folders are made; relative paths start in ``jobs_dir/<id>``."""
        return self.settings.data_dir / "jobs"

    def admit(self, values: Mapping[str, Any]) -> Admitted:
        """Judge a request (raise PolicyViolation, MissingPath or RequestRejected) and return
        where its paths point. Files are judged as paths before anything reads them."""
        self.check_executable(values.get("lm_eval_path"))
        env = self.check_env(values.get("env_vars") or {})
        flags, tasks = self.check_paths(values, "")
        raw = self.read_config(flags["config"]) if "config" in flags else None
        config = None if raw is None else _parse_config(raw)
        if config is not None:
            self.check_paths(config, "config.")
        run = self.check_effective(values, config)
        return Admitted(flags, tasks, env, raw, run)

    def check(self, values: Mapping[str, Any]) -> None:
        """Raise for the first rule ``values`` (a request dict) breaks."""
        self.admit(values)

    def read_config(self, where: Where) -> bytes:
        """A ``--config`` YAML's bytes, read only once it was judged as a path."""
        path = where.path
        try:
            if path is None or not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
                raise PolicyViolation("config", f"must be a file of at most {MAX_CONFIG_BYTES} B")
            with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as file:
                return file.read(MAX_CONFIG_BYTES)
        except OSError as error:
            raise PolicyViolation("config", f"cannot read the file ({error.strerror})") from None

    def check_executable(self, path: str | None) -> None:
        """The child runs this literal path from its own folder, so it must be absolute."""
        if path is None:
            return
        if not os.path.isabs(path) or "\0" in path:
            raise PolicyViolation("lm_eval_path", "must be an absolute path")
        allowed = {os.path.realpath(p) for p in self.settings.allowed_lm_eval_paths}
        if os.path.realpath(path) not in allowed:
            raise PolicyViolation(
                "lm_eval_path",
                "only the server's own lm-eval may run; this executable is not in "
                "LMEVAL_ALLOWED_LM_EVAL_PATHS",
            )

    def check_env(self, env: Mapping[str, str]) -> dict[str, Where]:
        """Judge each variable; return where the ones known to name a path point.

        Any other value that looks like a path (or a list of them, ``:``-separated) obeys
        the path rule too: a variable the server does not know can still tell a library
        where to read or write. A credential (secrets.secret_name) is a path when its name
        says so (``…_FILE``, ``…CREDENTIALS…``) or when its value names an existing thing;
        a token that merely holds a ``/`` is not judged."""
        known = {}
        for name, value in env.items():
            field = f"env_vars.{name}"
            rule = self._env_rule(name)
            if rule is not None:
                raise PolicyViolation(field, rule)
            if name.upper() in PATH_ENV_NAMES:  # caches and temp folders: written to
                known[name] = self.check_path(field, value, write=True)
            elif secret_name(name) and _names_a_file(name):  # a key file: read by the job
                known[name] = self.check_path(field, value)
            elif secret_name(name):  # a token may hold a "/": judged if it names a thing
                for entry in _path_entries(value):
                    if self._names_something(entry):
                        self.check_path(field, entry)
            else:
                for entry in _path_entries(value):
                    self.check_path(field, entry)
        return known

    def _names_something(self, value: str) -> bool:
        """``value`` read as a path names something that exists (outside the job's new
        folder, where nothing exists yet): a credential's value that is in truth a path."""
        try:
            where = resolve(value, self.jobs_dir)
            return where.path is not None and os.path.lexists(where.path)
        except (ValueError, OSError):
            return False

    def _env_rule(self, name: str) -> str | None:
        """Why ``name`` may not be set, or None."""
        allowlist = self.settings.env_allowlist
        if not _NAME.match(name):
            return "not a valid environment variable name"
        if allowlist and name not in allowlist:
            return "not in LMEVAL_ENV_ALLOWLIST"
        if _hijacks_loader(name):
            return "variables that change which code programs load or trust are refused"
        if name in CODE_ENV_NAMES and not self.settings.allow_code_execution:
            return CODE_RULE
        if name in OFFLINE_ENV and not self.settings.allow_online:
            return "online access is off (LMEVAL_ALLOW_ONLINE)"
        if name == "CUDA_VISIBLE_DEVICES" and self.settings.gpus:
            return "the server assigns GPUs (LMEVAL_GPUS)"
        return None

    def check_paths(
        self, values: Mapping[str, Any], prefix: str
    ) -> tuple[dict[str, Where], dict[str, Where]]:
        """Judge the path flags and path-like task entries of ``values`` (a request, or a
        config file's contents with ``prefix`` "config.")."""
        flags = {}
        for name in PATH_FLAGS:
            value = values.get(name)
            items = value if name == "include_path" and isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, str):
                    flags[name] = self.check_path(
                        prefix + name,
                        item,
                        scan=name in SCANNED_FLAGS,
                        read=name in READ_FLAGS,
                        write=name in WRITTEN_FLAGS,
                    )
        if "use_cache" in flags:
            self._check_cache_files(prefix + "use_cache", flags["use_cache"])
        samples = values.get("samples")
        if isinstance(samples, str) and _is_samples_file(samples):
            flags["samples"] = self.check_path(prefix + "samples", samples, read=True)
        tasks = {}
        for task in dict.fromkeys(_task_paths(values.get("tasks"))):  # each spelling once
            tasks[task] = self._check_task(prefix + "tasks", task)
        return flags, tasks

    def _check_cache_files(self, field: str, where: Where) -> None:
        """lm-eval's ``--use_cache`` is a prefix: it opens ``<prefix>_rank<N>.db``. Those
        files, followed through any symlink already there, obey the rule too."""
        if where.path is None:
            return  # in the job's new folder: nothing there yet
        prefix = str(where.path)
        for name in (f"{prefix}_rank0.db", *self._glob(glob.escape(prefix) + "_rank*.db")):
            self._allowed(field, Path(os.path.realpath(name)))

    def _check_task(self, field: str, task: str) -> Where:
        """A task file, folder or glob (lm-eval expands globs itself: judge each match)."""
        if not glob.has_magic(task):
            return self.check_path(field, task, scan=True, read=True)
        where = self.check_path(field, task)
        matches = self._glob(str(where.at(self.jobs_dir / "_")))
        if not matches:
            raise MissingPath(field, f"the pattern {_shown(field, task)} matches no file")
        for match in matches:
            self.check_path(field, match, scan=True)
        return where

    def resolve(self, field: str, value: str) -> Where:
        """Where ``value`` points for the job (see paths.py)."""
        try:
            return resolve(value, self.jobs_dir)
        except (ValueError, OSError) as error:  # names too long (the message, not the name)
            why = getattr(error, "strerror", None) or str(error)
            raise PolicyViolation(field, f"not a usable path: {why}") from None

    def check_path(
        self,
        field: str,
        value: str,
        *,
        scan: bool = False,
        read: bool = False,
        write: bool = False,
    ) -> Where:
        """``value`` must point into the job's own folder or an operator root, never into
        the server's own files; with ``read`` it must exist (the job reads it); with
        ``scan``, every symlink in the folder it names obeys the same rule (lm-eval reads
        every YAML file in it); with ``write``, the built-in read-only roots do not count."""
        admission.charge(field)
        if "\0" in value:  # no process can use it; a relative one would pass unresolved
            raise PolicyViolation(field, "not a usable path: it holds a NUL byte")
        where = self.resolve(field, value)
        if where.own is not None:
            if any(len(os.fsencode(part)) > NAME_MAX for part in where.own.parts):
                raise PolicyViolation(field, "not a usable path: File name too long")
            if read:  # the job's folder is new: nothing in it exists yet
                raise MissingPath(
                    field, f"{_shown(field, value)} does not exist in the job's folder"
                )
            return where
        assert where.path is not None
        self._allowed(field, where.path, self.write_roots if write else None)
        if read and not _exists(field, where.path):
            raise MissingPath(field, f"{_shown(field, value)} does not exist")
        if scan and _is_dir(field, where.path) and admission.first_walk(where.path):
            for link in _symlinks_under(field, where.path):
                self._allowed(field, Path(os.path.realpath(link)))
        return where

    def _allowed(self, field: str, resolved: Path, roots: tuple[Path, ...] | None = None) -> None:
        roots = self.roots if roots is None else roots
        if any(inside(resolved, own) for own in self.server_dirs):
            raise PolicyViolation(
                field,
                "names the server's own files (its data directory); a job may use its own "
                "folder (a relative path) and the allowed roots",
            )
        if not any(inside(resolved, root) for root in roots):
            names = ", ".join(str(r) for r in roots) or "none configured"
            raise PolicyViolation(
                field,
                f"path must lie in the job's own folder or under an allowed root ({names})",
            )

    def _glob(self, pattern: str) -> list[str]:
        """What lm-eval's own expansion of a task glob would match (bounded)."""
        matches = list(itertools.islice(_charged(glob.iglob(pattern)), MAX_GLOB_MATCHES + 1))
        if len(matches) > MAX_GLOB_MATCHES:
            raise PolicyViolation("tasks", f"the pattern matches over {MAX_GLOB_MATCHES} paths")
        return matches

    def check_effective(
        self, request: Mapping[str, Any], config: Mapping[str, Any] | None
    ) -> EffectiveRun:
        """Judge code execution and online access on what lm-eval will run with: the argv
        parsed by lm-eval's own parser, merged with the config file as lm-eval merges it,
        the model class's own defaults included. Returns that run."""
        from lmeval_trio.harness.effective import effective_run

        run = effective_run(request, config)
        if not self.settings.allow_code_execution:
            self._check_code(run)
        if not self.settings.allow_online:
            for name in ONLINE_FLAGS:
                if run.values.get(name):
                    raise PolicyViolation(run.field(name), ONLINE_RULE)
        return run

    def _check_code(self, run: EffectiveRun) -> None:
        for name in CODE_FLAGS:
            if run.values.get(name):
                raise PolicyViolation(run.field(name), CODE_RULE)
        for name in ("model_args", "gen_kwargs", "metadata"):
            if _truthy_key(run.values.get(name), "trust_remote_code"):
                raise PolicyViolation(run.field(name), "trust_remote_code needs " + CODE_RULE)
        model = str(run.values.get("model") or "")
        model_args = run.values.get("model_args")
        explicit = isinstance(model_args, dict) and "trust_remote_code" in model_args
        if model in REMOTE_CODE_MODEL_DEFAULTS and not explicit:
            raise PolicyViolation(
                run.field("model"),
                f"lm-eval's {model!r} model trusts remote code unless model_args sets "
                f"trust_remote_code=False, and {CODE_RULE}",
            )
        for task in _task_names(run.values.get("tasks")):
            if task.startswith(REMOTE_CODE_TASK_PREFIXES):
                raise PolicyViolation(
                    run.field("tasks"),
                    f"task {task!r} loads its tokenizer with trust_remote_code=True, and "
                    + CODE_RULE,
                )


def _names_a_file(name: str) -> bool:
    """A credential variable whose name says its value is a file or folder
    (``GOOGLE_APPLICATION_CREDENTIALS``, ``AWS_SHARED_CREDENTIALS_FILE``, ``SSL_KEY_FILE``)."""
    upper = name.upper()
    return upper.endswith(FILE_NAME_SUFFIXES) or "CREDENTIALS" in upper


def _hijacks_loader(name: str) -> bool:
    upper = name.upper()
    if upper in ALLOWED_PYTHON_ENV:
        return False
    return upper in DENIED_ENV_NAMES or upper.startswith(DENIED_ENV_PREFIXES)


def _charged(matches: Iterator[str]) -> Iterator[str]:
    for match in matches:
        admission.charge("tasks")
        yield match


def _task_names(tasks: Any) -> Iterable[str]:
    if isinstance(tasks, str):
        return [t.strip() for t in tasks.split(",")]
    if isinstance(tasks, list):
        return [t.strip() for item in tasks for t in str(item).split(",")]
    return []


def _task_paths(tasks: Any) -> Iterator[str]:
    """Task entries lm-eval would read from disk: YAML files (or globs) and folders."""
    for task in _task_names(tasks):
        if "/" in task or task.startswith(("~", ".")) or task.endswith((".yaml", ".yml")):
            yield task


def _is_samples_file(samples: str) -> bool:
    """lm-eval reads ``samples`` as JSON, else as the path of a JSON file."""
    try:
        json.loads(samples)
    except ValueError:
        return True
    return False


def _is_dir(field: str, path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError as error:  # a name too long, say: lm-eval could not use it either
        raise PolicyViolation(field, f"not a usable path: {error.strerror or error}") from None


def _symlinks_under(field: str, folder: Path) -> Iterator[Path]:
    seen = 0
    for parent, dirs, files in os.walk(folder):
        admission.charge(field, len(dirs) + len(files))
        seen += len(dirs) + len(files)
        if seen > MAX_SCANNED_ENTRIES:
            raise PolicyViolation(field, f"the folder holds over {MAX_SCANNED_ENTRIES} entries")
        for name in (*dirs, *files):
            entry = Path(parent, name)
            if entry.is_symlink():
                yield entry


def _parse_config(raw: bytes) -> dict[str, Any]:
    """A config file can set any flag, so its contents obey the same rules. Refusals never
    quote the file: it may be someone else's."""
    import yaml

    try:
        content = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise PolicyViolation("config", "the file is not UTF-8 text") from None
    except yaml.YAMLError as error:
        raise PolicyViolation("config", f"the file is not valid YAML{_where(error)}") from None
    if not isinstance(content, dict):
        raise PolicyViolation("config", "the config file must hold a mapping")
    return content


def _path_entries(value: str) -> Iterator[str]:
    """The entries of an environment value that look like paths: ``:``-separated, each
    absolute, home- or dot-relative, or holding a ``/``. URLs are not paths, except
    ``file://`` ones."""
    if _URL.match(value):
        if value.lower().startswith("file://"):
            yield value[len("file://") :]
        return
    for entry in value.split(os.pathsep):
        if entry.startswith(("/", "~", ".")) or "/" in entry:
            yield entry


def _shown(field: str, value: str) -> str:
    """``value`` as a refusal shows it: quoted for the request's own fields, never for the
    config file's (it may be someone else's file, and its values secrets)."""
    return "the file's value" if field.startswith("config.") else _short(value)


def _short(value: str) -> str:
    """A value quoted in a message, cut to a readable length."""
    return repr(value if len(value) <= 200 else value[:200] + "...")


def _exists(field: str, path: Path) -> bool:
    try:
        path.stat()
    except FileNotFoundError:
        return False
    except OSError as error:  # a name too long, a loop: no process could use it either
        raise PolicyViolation(field, f"not a usable path: {error.strerror or error}") from None
    return True


def _where(error: Exception) -> str:
    """Where in a file the YAML parser stopped: a position, never the file's text."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return ""
    return f" (line {mark.line + 1}, column {mark.column + 1})"


def _truthy_key(mapping: Any, key: str) -> bool:
    """``key`` set to anything truthy, at any depth (keys compared loosely)."""
    if not isinstance(mapping, dict):
        return False
    for name, value in mapping.items():
        if str(name).strip().lower() == key and value:
            return True
        if isinstance(value, dict) and _truthy_key(value, key):
            return True
    return False
