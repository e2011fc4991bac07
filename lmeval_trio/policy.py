"""The execution policy: what a job request may run, set, read and write.

An evaluation server holds GPUs and model credentials, so every way a request could run code
of its choosing (another executable, a preloaded library, Python from a task folder, remote
model code) or touch files outside the server's folders is refused unless the operator opted
in. Each refusal names the field and the rule.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmeval_trio.config import Settings

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Variables that make a loader, interpreter or shell run code of the caller's choosing.
DENIED_ENV_PREFIXES = ("LD_", "DYLD_", "PYTHON", "PERL5", "RUBY", "NODE_", "GCONV_", "MALLOC_")
DENIED_ENV_NAMES = frozenset(
    {
        "PATH",
        "BASH_ENV",
        "ENV",
        "SHELL",
        "SHELLOPTS",
        "IFS",
        "PS4",
        "HOME",
        "PROMPT_COMMAND",
        "GIT_SSH_COMMAND",
        "GIT_EXEC_PATH",
        "JAVA_TOOL_OPTIONS",
        "OPENSSL_CONF",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
    }
)
# Harmless interpreter knobs a job may still set.
ALLOWED_PYTHON_ENV = frozenset({"PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONUNBUFFERED"})
# Gated by allow_code_execution.
CODE_ENV_NAMES = frozenset({"HF_ALLOW_CODE_EVAL", "HF_DATASETS_TRUST_REMOTE_CODE"})
CODE_FLAGS = ("trust_remote_code", "confirm_run_unsafe_code")
# Set by the server when online access is off; a request may not lift them.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
ONLINE_FLAGS = ("wandb_args", "wandb_config_args", "trackio_args", "hf_hub_log_args")
# Flags whose value is a filesystem path.
PATH_FLAGS = ("output_path", "include_path", "use_cache", "config")


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
        import yaml

        try:
            with open(os.path.expanduser(path), encoding="utf-8") as file:
                content = yaml.safe_load(file)
        except (OSError, yaml.YAMLError) as error:
            raise PolicyViolation("config", f"cannot read the config file: {error}") from None
        if not isinstance(content, dict):
            raise PolicyViolation("config", "the config file must hold a mapping")
        nested = {k: v for k, v in content.items() if k != "config"}
        if isinstance(nested.get("include_path"), list):
            for item in nested.pop("include_path"):
                self.check_path("config.include_path", str(item))
        try:
            self.check(nested)
        except PolicyViolation as violation:
            raise PolicyViolation(f"config.{violation.field}", violation.rule) from None

    def check_executable(self, path: str | None) -> None:
        if path is None:
            return
        allowed = {_real(p) for p in self.settings.allowed_lm_eval_paths}
        if _real(path) not in allowed:
            raise PolicyViolation(
                "lm_eval_path",
                "only the server's own lm-eval may run; this executable is not in "
                "LMEVAL_ALLOWED_LM_EVAL_PATHS",
            )

    def check_env(self, env: Mapping[str, str]) -> None:
        allowlist = set(self.settings.env_allowlist)
        for name in env:
            field = f"env_vars.{name}"
            if not _NAME.match(name):
                raise PolicyViolation(field, "not a valid environment variable name")
            if allowlist and name not in allowlist:
                raise PolicyViolation(field, "not in LMEVAL_ENV_ALLOWLIST")
            if _hijacks_loader(name):
                raise PolicyViolation(field, "variables that change how programs load are refused")
            if name in CODE_ENV_NAMES and not self.settings.allow_code_execution:
                raise PolicyViolation(field, "code execution is off (LMEVAL_ALLOW_CODE_EXECUTION)")
            if name in OFFLINE_ENV and not self.settings.allow_online:
                raise PolicyViolation(field, "online access is off (LMEVAL_ALLOW_ONLINE)")
            if name == "CUDA_VISIBLE_DEVICES" and self.settings.gpus:
                raise PolicyViolation(field, "the server assigns GPUs (LMEVAL_GPUS)")

    def check_paths(self, values: Mapping[str, Any]) -> None:
        for name in PATH_FLAGS:
            value = values.get(name)
            if isinstance(value, str):
                self.check_path(name, value)
        for task in _task_names(values.get("tasks")):
            if "/" in task or task.endswith((".yaml", ".yml")):
                self.check_path("tasks", task)
        samples = values.get("samples")
        if isinstance(samples, str) and not samples.lstrip().startswith("{"):
            self.check_path("samples", samples)

    def check_path(self, field: str, value: str) -> None:
        """``value`` must resolve (symlinks followed) inside one of the allowed roots."""
        resolved = Path(os.path.realpath(os.path.expanduser(value)))
        if not any(resolved == root or root in resolved.parents for root in self.roots):
            roots = ", ".join(str(r) for r in self.roots)
            raise PolicyViolation(field, f"path must lie under an allowed root ({roots})")

    def check_code_execution(self, values: Mapping[str, Any]) -> None:
        if self.settings.allow_code_execution:
            return
        for name in CODE_FLAGS:
            if values.get(name):
                raise PolicyViolation(name, "code execution is off (LMEVAL_ALLOW_CODE_EXECUTION)")
        if _asks_remote_code(values.get("model_args")):
            raise PolicyViolation(
                "model_args", "trust_remote_code needs LMEVAL_ALLOW_CODE_EXECUTION"
            )

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


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _hijacks_loader(name: str) -> bool:
    upper = name.upper()
    if upper in ALLOWED_PYTHON_ENV:
        return False
    return upper in DENIED_ENV_NAMES or upper.startswith(DENIED_ENV_PREFIXES)


def _task_names(tasks: Any) -> Iterable[str]:
    if isinstance(tasks, str):
        return [t.strip() for t in tasks.split(",")]
    if isinstance(tasks, list):
        return [t.strip() for item in tasks for t in str(item).split(",")]
    return []


def _asks_remote_code(model_args: Any) -> bool:
    if isinstance(model_args, dict):
        return bool(model_args.get("trust_remote_code"))
    if isinstance(model_args, str):
        return re.search(r"trust_remote_code\s*=\s*(true|1|yes)", model_args, re.I) is not None
    return False
