"""The execution policy: what a job request may run, set, read and write.

An evaluation server holds GPUs and model credentials, so every way a request could run code
of its choosing (another executable, a preloaded library, Python from a task folder, remote
model code) or touch files outside the server's folders is refused unless the operator opted
in. Each refusal names the field and the rule.

Paths are judged where the job will see them: a job runs in its own folder under the data
dir, so relative paths start there, and symlinks are followed before the verdict.
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
from typing import Any

from lmeval_trio import admission
from lmeval_trio.cli_schema import PATH_FIELDS as PATH_FLAGS
from lmeval_trio.config import Settings

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

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
# Variables naming a folder or file the job reads or writes: their values obey the path rule.
PATH_ENV_NAMES = frozenset(
    {
        *("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE"),
        *("HF_ASSETS_CACHE", "HF_TOKEN_PATH", "TRANSFORMERS_CACHE", "LM_HARNESS_CACHE_PATH"),
        *("TORCH_HOME", "TORCHINDUCTOR_CACHE_DIR", "VLLM_CACHE_ROOT", "NUMBA_CACHE_DIR"),
        *("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR", "WANDB_DIR"),
        *("TMPDIR", "TMP", "TEMP"),
    }
)
# Gated by allow_code_execution.
CODE_ENV_NAMES = frozenset({"HF_ALLOW_CODE_EVAL", "HF_DATASETS_TRUST_REMOTE_CODE"})
CODE_FLAGS = ("trust_remote_code", "confirm_run_unsafe_code")
# Set by the server when online access is off; a request may not lift them.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
ONLINE_FLAGS = ("wandb_args", "wandb_config_args", "trackio_args", "hf_hub_log_args")
# Folders lm-eval scans for task YAMLs: symlinks inside them must stay inside the roots too.
SCANNED_FLAGS = ("include_path",)
MAX_CONFIG_BYTES = 1024 * 1024
MAX_GLOB_MATCHES = 1_000
MAX_SCANNED_ENTRIES = 100_000
CODE_RULE = "code execution is off (LMEVAL_ALLOW_CODE_EXECUTION)"


class PolicyViolation(Exception):
    """A request the policy refuses (HTTP 403); ``field`` and ``rule`` say which and why."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


@dataclass(frozen=True)
class Policy:
    """The rules in force, derived from settings once."""

    settings: Settings
    default_executable: tuple[str, ...]

    @property
    def roots(self) -> tuple[Path, ...]:
        data = self.settings.data_dir.resolve()
        return (data, *(r.resolve() for r in self.settings.allowed_path_roots))

    @property
    def job_cwd(self) -> Path:
        """Stands for any job's folder (they all sit at data/jobs/<id>): relative paths start
        there. The name never exists, so ``..`` from it is resolved lexically."""
        return self.settings.data_dir / "jobs" / "_"

    def check(self, values: Mapping[str, Any]) -> None:
        """Raise PolicyViolation for the first rule ``values`` (a request dict) breaks."""
        self.check_executable(values.get("lm_eval_path"))
        self.check_env(values.get("env_vars") or {})
        self.check_paths(values)
        self.check_code_execution(values)
        self.check_online(values)
        config = values.get("config")
        if isinstance(config, str):
            self.check_config_file(config)

    def check_config_file(self, path: str) -> None:
        """A ``--config`` YAML can set any flag, so its contents obey the same rules."""
        content = self._read_config(self.resolve("config", path))
        nested = {k: v for k, v in content.items() if k != "config"}
        if isinstance(nested.get("include_path"), list):
            for item in nested.pop("include_path"):
                self.check_path("config.include_path", str(item), scan=True)
        try:
            self.check(nested)
        except PolicyViolation as violation:
            raise PolicyViolation(f"config.{violation.field}", violation.rule) from None

    def _read_config(self, path: Path) -> dict[str, Any]:
        import yaml

        try:
            if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
                raise PolicyViolation("config", f"must be a file of at most {MAX_CONFIG_BYTES} B")
            content = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError) as error:
            raise PolicyViolation("config", f"cannot read the config file: {error}") from None
        if not isinstance(content, dict):
            raise PolicyViolation("config", "the config file must hold a mapping")
        return content

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

    def check_env(self, env: Mapping[str, str]) -> None:
        for name, value in env.items():
            field = f"env_vars.{name}"
            rule = self._env_rule(name)
            if rule is not None:
                raise PolicyViolation(field, rule)
            if name.upper() in PATH_ENV_NAMES:
                self.check_path(field, value)

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

    def check_paths(self, values: Mapping[str, Any]) -> None:
        for name in PATH_FLAGS:
            value = values.get(name)
            if isinstance(value, str):
                self.check_path(name, value, scan=name in SCANNED_FLAGS)
        for task in dict.fromkeys(_task_paths(values.get("tasks"))):  # each spelling once
            self.check_path("tasks", task, scan=True)
            for match in self._glob(task):
                self.check_path("tasks", match, scan=True)
        samples = values.get("samples")
        if isinstance(samples, str) and _is_samples_file(samples):
            self.check_path("samples", samples)

    def resolve(self, field: str, value: str) -> Path:
        """Where ``value`` points for a job, symlinks followed."""
        try:
            joined = os.path.join(self.job_cwd, os.path.expanduser(value))
            return Path(os.path.realpath(joined))
        except (ValueError, OSError) as error:  # NUL bytes, symlink loops
            raise PolicyViolation(field, f"not a usable path: {error}") from None

    def check_path(self, field: str, value: str, *, scan: bool = False) -> None:
        """``value`` must resolve inside one of the allowed roots; with ``scan``, so must
        every symlink in the folder it names (lm-eval reads every YAML file in it)."""
        admission.charge(field)
        resolved = self.resolve(field, value)
        self._inside_roots(field, resolved)
        if scan and _is_dir(field, resolved) and admission.first_walk(resolved):
            for link in _symlinks_under(field, resolved):
                self._inside_roots(field, self.resolve(field, str(link)))

    def _inside_roots(self, field: str, resolved: Path) -> None:
        if not any(resolved == root or root in resolved.parents for root in self.roots):
            roots = ", ".join(str(r) for r in self.roots)
            raise PolicyViolation(field, f"path must lie under an allowed root ({roots})")

    def _glob(self, pattern: str) -> list[str]:
        """lm-eval expands task YAML globs itself; check what they match, too."""
        if not glob.has_magic(pattern):
            return []
        found = glob.iglob(os.path.join(self.job_cwd, os.path.expanduser(pattern)))
        matches = list(itertools.islice(_charged(found), MAX_GLOB_MATCHES + 1))
        if len(matches) > MAX_GLOB_MATCHES:
            raise PolicyViolation("tasks", f"the pattern matches over {MAX_GLOB_MATCHES} paths")
        return matches

    def check_code_execution(self, values: Mapping[str, Any]) -> None:
        if self.settings.allow_code_execution:
            return
        for name in CODE_FLAGS:
            if values.get(name):
                raise PolicyViolation(name, CODE_RULE)
        if _asks_remote_code(values.get("model_args")):
            raise PolicyViolation("model_args", "trust_remote_code needs " + CODE_RULE)

    def check_online(self, values: Mapping[str, Any]) -> None:
        if self.settings.allow_online:
            return
        for name in ONLINE_FLAGS:
            if values.get(name):
                raise PolicyViolation(name, "online access is off (LMEVAL_ALLOW_ONLINE)")

    def job_environment(self) -> dict[str, str]:
        """Variables the server sets for every job (after the request's own)."""
        env = {"PYTHONUNBUFFERED": "1"}
        if not self.settings.allow_online:
            env.update(OFFLINE_ENV)
        return env


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
        raise PolicyViolation(field, f"not a usable path: {error}") from None


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


def _asks_remote_code(model_args: Any) -> bool:
    """Whether lm-eval would pass a true trust_remote_code to the model (or cannot tell)."""
    if isinstance(model_args, dict):
        return _truthy_key(model_args, "trust_remote_code")
    if isinstance(model_args, str) and "trust_remote_code" in model_args:
        parsed = _parse_mapping(model_args)
        return parsed is None or _truthy_key(parsed, "trust_remote_code")
    return False


def _parse_mapping(text: str) -> dict[str, Any] | None:
    """``text`` as lm-eval reads model_args (JSON object or k=v pairs); None if unparsable."""
    from lm_eval._cli.utils import key_val_to_dict

    try:
        parsed = json.loads(text)
    except ValueError:
        try:
            parsed = key_val_to_dict(text)
        except (ValueError, SyntaxError):
            return None
    return parsed if isinstance(parsed, dict) else None


def _truthy_key(mapping: dict[Any, Any], key: str) -> bool:
    """``key`` set to anything truthy, at any depth (keys compared loosely)."""
    for name, value in mapping.items():
        if str(name).strip().lower() == key and value:
            return True
        if isinstance(value, dict) and _truthy_key(value, key):
            return True
    return False
