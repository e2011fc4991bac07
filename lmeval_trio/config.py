"""Server settings: the one place that reads the environment.

Every setting is an environment variable prefixed ``LMEVAL_`` except the two the original
server defined (``MAX_CONCURRENCY``, ``QUEUE_PROCESS_INTERVAL``), which keep their names so
existing deployments keep working. Values are validated once, at start, with errors that
name the variable.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from lmeval_trio.errors import CannotStart
from lmeval_trio.jobs.notify import NotifyTarget
from lmeval_trio.policy import webhook_targets
from lmeval_trio.policy.webhook_targets import Exemptions

# Environment variable name for each field whose name is not LMEVAL_<FIELD>.
_LEGACY_NAMES = {
    "max_concurrency": "MAX_CONCURRENCY",
    "queue_process_interval_s": "QUEUE_PROCESS_INTERVAL",
}
# Variables renamed since: read when the new name is unset.
_FORMER_NAMES = {"fork_servers": "LMEVAL_WARM_RUNNERS"}
_LIST_FIELDS = frozenset(
    {
        "api_keys",
        "allowed_lm_eval_paths",
        "allowed_path_roots",
        "env_allowlist",
        "cors_origins",
        "gpus",
        "webhook_allowed_hosts",
    }
)
_JSON_FIELDS = frozenset({"webhooks"})
_SECRET_FIELDS = frozenset({"api_keys"})
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ORIGIN = re.compile(r"https?://[^/\s:]+(:\d{1,5})?")
# Set to an empty value these are an error, not "unset": an empty key list would open the
# server (a deployment that writes LMEVAL_API_KEYS=$KEY with KEY unset must not start open).
_FAIL_CLOSED_FIELDS = frozenset({"api_keys"})


class SettingsError(CannotStart, ValueError):
    """The environment holds an invalid setting; the message names the variable."""


class Settings(BaseModel):
    """Effective configuration of one server (or one embedded supervisor)."""

    # validate_default: pydantic skips validators on defaults otherwise, and a default path
    # left relative would be read against whatever folder a process happens to run in.
    # allow_inf_nan: "inf" or "nan" as a duration (every *_s setting) would never end a wait.
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False
    )

    # The server's environment when these settings were read: what jobs inherit (see
    # ``runners/environment.py``). Taken here, once, so a library that sets variables in the
    # server's process later (importing lm_eval sets HF_XET_HIGH_PERFORMANCE) changes nothing
    # for jobs. Private: it holds whatever secrets the environment holds.
    _server_environment: dict[str, str] = PrivateAttr(default_factory=lambda: dict(os.environ))

    data_dir: Path = Field(
        default=Path("lmeval-data"),
        description="Where the job database, logs, results and caches live.",
    )
    max_concurrency: int = Field(default=4, ge=0, le=1024, description="Execution slots.")
    queue_process_interval_s: float = Field(
        default=15.0,
        ge=0,
        description="Accepted for compatibility; dispatch is event-driven and ignores it.",
    )
    kill_grace_s: float = Field(
        default=10.0, gt=0, le=600, description="SIGTERM → SIGKILL grace period for a job."
    )
    log_tail_lines: int = Field(
        default=100, ge=0, le=10_000, description="Lines of stdout/stderr in GET /job/{id}."
    )
    log_tail_max_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Bytes read from the end of a log for its tail."
    )
    progress_flush_s: float = Field(
        default=1.0, gt=0, description="How often live progress is written to the store."
    )
    requeue_interrupted: bool = Field(
        default=True,
        description="Requeue jobs that a crash or shutdown interrupted (else mark them Failed).",
    )
    fast_start: bool = Field(
        default=True, description="Run the server's lm-eval through the cached task index."
    )
    fork_servers: int = Field(
        default=2,
        ge=0,
        le=32,
        description="Fork servers (warm runners: lm-eval imported and the task index loaded "
        "once, every job forked from them) kept with fast start: one for jobs without "
        "env_vars and one per env_vars set that recurs, up to this many. 0 turns warm starts "
        "off. LMEVAL_WARM_RUNNERS, its former name, is read when this one is unset.",
    )
    fork_preload_hf: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Fork servers also import torch, transformers and lm-eval's Hugging Face "
        "model module, so an hf job goes straight to loading its model: auto where torch is "
        "importable in the job environment, on always, off never.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Caches shared by all jobs: lm-eval's task index and compiled bytecode "
        "(default: DATA_DIR/cache).",
    )
    install_signal_handlers: bool = Field(
        default=True, description="Turn SIGTERM into a graceful shutdown (served app only)."
    )
    shutdown_timeout_s: float = Field(
        default=30.0, gt=0, description="Upper bound for background work at shutdown."
    )
    # Time limits and retries (see README "Time limits and retries").
    job_timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=30 * 24 * 3600,
        description="Longest one attempt of a job may run when its request sets no timeout_s "
        "(unset: no limit).",
    )
    max_attempts_limit: int = Field(
        default=5, ge=1, le=100, description="The most max_attempts a request may ask for."
    )
    retry_base_delay_s: float = Field(
        default=10.0,
        gt=0,
        le=86_400,
        description="Wait before the second attempt; it doubles per failed attempt.",
    )
    retry_max_delay_s: float = Field(
        default=300.0, gt=0, le=86_400, description="The longest wait between attempts."
    )
    # Safety (see README "Security").
    api_keys: tuple[str, ...] = Field(
        default=(),
        repr=False,
        description="Bearer keys. Unset = open server; set, it must hold at least one key.",
    )
    api_keys_file: Path | None = Field(
        default=None, description="File with one key per line; it must hold at least one."
    )
    allowed_lm_eval_paths: tuple[str, ...] = Field(
        default=(), description="Executables a request may name as lm_eval_path."
    )
    allowed_path_roots: tuple[Path, ...] = Field(
        default=(), description="Roots (besides the data dir) that path fields may point into."
    )
    env_allowlist: tuple[str, ...] = Field(
        default=(), description="If set, the only env_vars names a request may pass."
    )
    allow_code_execution: bool = Field(
        default=False, description="Allow trust_remote_code / unsafe code tasks."
    )
    job_confinement: Literal["auto", "landlock", "off"] = Field(
        default="auto",
        description="Put every local job behind a Landlock wall (README 'Security'): auto "
        "where the kernel allows it, landlock to refuse to start without it, off never.",
    )
    allow_online: bool = Field(
        default=False, description="Let jobs reach the Hugging Face hub (else offline mode)."
    )
    cors_origins: tuple[str, ...] = Field(default=(), description="Allowed CORS origins.")
    max_queued_jobs: int = Field(default=10_000, ge=1, description="Queue bound (429 beyond).")
    max_sweep_cells: int = Field(
        default=1000, ge=1, le=100_000, description="Most cells one sweep may have (422 beyond)."
    )
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024, description="Body size bound.")
    admission_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Longest the checks of one submission (path resolution, folder walks) may "
        "take (403 beyond).",
    )
    check_tasks: bool = Field(
        default=True,
        description="Refuse at submission a task name lm-eval does not define, or an output "
        "type the model cannot serve (README: Checks before a job is queued).",
    )
    preflight: Literal["fail", "wait", "off"] = Field(
        default="wait",
        description="API-model jobs whose endpoint fails the pre-flight: fail at once, or "
        "wait queued (no slot held), retried with back-off up to preflight_wait_max_s.",
    )
    preflight_timeout_s: float = Field(
        default=5.0, gt=0, le=120, description="Bound on each pre-flight request."
    )
    preflight_wait_max_s: float = Field(
        default=600.0,
        gt=0,
        le=7 * 24 * 3600,
        description="Longest a job waits for its endpoint (preflight=wait) before it fails.",
    )
    task_check_wait_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Longest a submission waits for the task catalog (built once, at start or "
        "first use); past it the job goes through unchecked, saying so.",
    )
    task_catalog_timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="Longest building the task catalog of lm-eval's tasks or of one request's "
        "include_path folders may take (a cold build parses ~14,000 YAML files).",
    )
    body_read_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest a request body may take to arrive once its route reads it "
        "(408 and the connection closed beyond).",
    )
    retention_max_age_s: float | None = Field(
        default=None, gt=0, description="Delete finished jobs older than this."
    )
    retention_max_jobs: int | None = Field(
        default=None, ge=0, description="Keep at most this many finished jobs."
    )
    gpus: tuple[str, ...] = Field(default=(), description="GPU ids; when set they form the slots.")
    gpus_per_job: int = Field(default=1, ge=1, description="GPUs in one slot.")
    # Where jobs run (see README "Running jobs on a Ray cluster").
    backend: Literal["local", "ray"] = Field(
        default="local",
        description="Where jobs run: local child processes, or a Ray cluster (Ray Jobs API).",
    )
    ray_address: str = Field(
        default="http://127.0.0.1:8265",
        description="The Ray dashboard URL, which serves the Ray Jobs REST API.",
    )
    ray_num_gpus_default: float = Field(
        default=0, ge=0, description="GPUs a Ray job reserves when its request names none."
    )
    ray_num_cpus_default: float = Field(
        default=1, ge=0, description="CPUs a Ray job reserves when its request names none."
    )
    ray_status_poll_s: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="Ray status poll interval, used only while no log stream can be had.",
    )
    ray_unreachable_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="How long a submission retries an unreachable Ray cluster before the "
        "job fails with the reason.",
    )
    ray_detach_on_shutdown: bool = Field(
        default=True,
        description="At shutdown, leave Ray jobs running and re-attach at the next start "
        "(else stop them).",
    )
    # Webhooks (see README "Webhooks").
    webhooks: tuple[NotifyTarget, ...] = Field(
        default=(),
        max_length=64,
        description='Server-wide webhooks, a JSON list of {"url", "events"}: every job\'s '
        "(and sweep's) events go to them too.",
    )
    webhook_secret: str | None = Field(
        default=None,
        repr=False,
        description="The signing secret (whsec_ + base64 of 24-64 random bytes); unset: one "
        "generated at first start, kept in DATA_DIR/webhook-secret (0600).",
    )
    webhook_allowed_hosts: tuple[str, ...] = Field(
        default=(),
        description="Host names, addresses or CIDR blocks webhooks may reach although they "
        "are not public (loopback, private, link-local, ...).",
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Bound on each delivery attempt."
    )
    webhook_max_attempts: int = Field(
        default=12, ge=1, le=100, description="Attempts of one delivery before it is given up."
    )
    webhook_retry_base_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Wait before the second attempt; it doubles per attempt (with jitter).",
    )
    webhook_retry_max_s: float = Field(
        default=3600.0, gt=0, le=86_400, description="The longest wait between attempts."
    )
    # MLflow export (see README "MLflow export").
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="An MLflow tracking server (http(s)://host:port): every finished job is "
        "logged there as a run, through the outbox (unset: no export).",
    )
    mlflow_experiment: str = Field(
        default="lmeval-trio",
        min_length=1,
        max_length=500,
        description="The MLflow experiment runs are logged in (created if missing).",
    )
    mlflow_max_artifact_bytes: int = Field(
        default=50 * 1024 * 1024,
        ge=0,
        description="Largest results or samples file uploaded as an artifact (larger ones "
        "are listed in a tag instead).",
    )
    mlflow_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Bound on each request to the tracking server."
    )
    log_format: Literal["text", "json"] = Field(default="text", description="Server log format.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Server log level."
    )

    @field_validator("data_dir", "api_keys_file", "cache_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else _absolute_path(value)

    @field_validator("data_dir", "cache_dir", mode="after")
    @classmethod
    def _folder_or_missing(cls, value: Path | None) -> Path | None:
        """Created at start when missing; anything else than a folder cannot hold jobs."""
        if value is not None and value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a folder")
        return value

    @field_validator("api_keys_file", mode="after")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        """A key file that is not there would leave the server open without a word."""
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file")
        return value

    @field_validator("allowed_path_roots", "allowed_lm_eval_paths", mode="before")
    @classmethod
    def _no_colon_lists(cls, value: Any) -> Any:
        """``/a:/b`` (PATH style) would be taken as one path that does not exist."""
        for item in value if isinstance(value, list | tuple) else ():
            text = str(item)
            if ":" in text and any(part.startswith(("/", "~")) for part in text.split(":")[1:]):
                raise ValueError(f"{text!r}: separate entries with commas, not ':'")
        return value

    @field_validator("gpus", mode="after")
    @classmethod
    def _gpu_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """``0:1`` would be one GPU id that names no GPU (CUDA_VISIBLE_DEVICES uses commas)."""
        bad = [gpu for gpu in value if ":" in gpu or not gpu.strip()]
        if bad:
            raise ValueError(f"{bad}: separate GPU ids with commas, not ':'")
        return value

    @field_validator("env_allowlist", mode="after")
    @classmethod
    def _variable_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [name for name in value if not _VARIABLE_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"not environment variable names: {bad}")
        return value

    @field_validator("cors_origins", mode="after")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Browsers send ``scheme://host[:port]``; anything else would never match."""
        bad = [o for o in value if o != "*" and not _ORIGIN.fullmatch(o)]
        if bad:
            raise ValueError(f"origins look like https://host[:port] (or *), got {bad}")
        return value

    @field_validator("ray_address", "mlflow_tracking_uri", mode="after")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("webhook_allowed_hosts", mode="after")
    @classmethod
    def _exemptions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        Exemptions.parse(value)  # raises ValueError naming a bad entry
        return value

    @field_validator("webhook_secret", mode="after")
    @classmethod
    def _whsec(cls, value: str | None) -> str | None:
        """The Standard Webhooks form, so receivers' libraries take it as it is."""
        if value is not None and not valid_webhook_secret(value):
            raise ValueError("must be whsec_ followed by base64 of 24 to 64 bytes")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("api_keys", mode="after")
    @classmethod
    def _strip_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(key.strip() for key in value if key.strip())

    @model_validator(mode="after")
    def _key_sources_hold_keys(self) -> Settings:
        """A key source that is configured but empty must not silently open the server."""
        if "api_keys" in self.model_fields_set and not self.api_keys:
            raise ValueError(
                "LMEVAL_API_KEYS is set but holds no key; unset it to run an open server"
            )
        if self.api_keys_file is not None and not self._file_keys():
            raise ValueError(
                f"LMEVAL_API_KEYS_FILE: {self.api_keys_file} holds no key; remove the setting "
                "to run an open server"
            )
        return self

    @model_validator(mode="after")
    def _webhooks_may_be_reached(self) -> Settings:
        """A server-wide webhook naming a non-public address literally would fail every
        delivery: refused at start instead (names are judged at each delivery)."""
        exemptions = self.webhook_exemptions
        for hook in self.webhooks:
            address = webhook_targets.literal_address(webhook_targets.split(hook.url)[1])
            if address is not None:
                try:
                    webhook_targets.judge(hook.url, address, exemptions)
                except webhook_targets.TargetRefused as error:
                    raise ValueError(f"LMEVAL_WEBHOOKS: {error}") from None
        return self

    @model_validator(mode="after")
    def _shutdown_outlasts_grace(self) -> Settings:
        if self.shutdown_timeout_s <= self.kill_grace_s:
            raise ValueError(
                "LMEVAL_SHUTDOWN_TIMEOUT_S must exceed LMEVAL_KILL_GRACE_S, "
                "or a shutdown would cut the jobs' grace short"
            )
        return self

    @model_validator(mode="after")
    def _confinement_fits_backend(self) -> Settings:
        if self.job_confinement == "landlock" and self.backend != "local":
            raise ValueError(
                "LMEVAL_JOB_CONFINEMENT=landlock confines local jobs only, and "
                f"LMEVAL_BACKEND={self.backend} runs them elsewhere unconfined; use auto or off"
            )
        return self

    @model_validator(mode="after")
    def _data_dir_is_private(self) -> Settings:
        """The server makes its data dir private (0700) at start: a folder others share (or
        hold, or reach through an allowed root) must not be silently taken over."""
        why = _shared_folder_reason(self.data_dir, self.allowed_path_roots)
        if why:
            raise ValueError(f"LMEVAL_DATA_DIR={self.data_dir} {why}; name a folder of its own")
        return self

    @field_validator("allowed_path_roots", mode="after")
    @classmethod
    def _absolute_roots(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        roots = tuple(_absolute_path(p) for p in value)
        missing = [str(p) for p in roots if not p.is_dir()]
        if missing:
            raise ValueError(f"not existing folders: {missing}")
        return roots

    @field_validator("allowed_lm_eval_paths", mode="after")
    @classmethod
    def _absolute_executables(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        paths = tuple(os.path.expanduser(p) for p in value)
        relative = [p for p in paths if not os.path.isabs(p)]
        if relative:
            raise ValueError(f"entries must be absolute paths, got {relative}")
        unusable = [p for p in paths if not (os.path.isfile(p) and os.access(p, os.X_OK))]
        if unusable:
            raise ValueError(f"not executable files: {unusable}")
        return paths

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from the environment; ``overrides`` win (used by tests and the CLI)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = _config_file_values(env.get(CONFIG_FILE_VARIABLE))
        for name in cls.model_fields:
            raw = env.get(env_name(name), env.get(_FORMER_NAMES.get(name, "")))
            if raw is not None and (raw.strip() != "" or name in _FAIL_CLOSED_FIELDS):
                values[name] = _parse_raw(name, raw)
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as error:
            raise SettingsError(_describe(error)) from None

    @property
    def server_environment(self) -> Mapping[str, str]:
        """The server's environment as it was when these settings were built (read-only)."""
        return MappingProxyType(self._server_environment)

    @property
    def effective_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"

    @property
    def builtin_read_roots(self) -> tuple[Path, ...]:
        """Folders the server ships that jobs may read but never write: the example tasks,
        so the README's first job works without configuring any root."""
        return tuple(p for p in (SHIPPED_EXAMPLE_TASKS,) if p.is_dir())

    @property
    def webhook_exemptions(self) -> Exemptions:
        return Exemptions.parse(self.webhook_allowed_hosts)

    def all_api_keys(self) -> frozenset[str]:
        """Keys from the setting and the key file (read at start, so rotation = restart)."""
        return frozenset(self.api_keys) | self._file_keys()

    def _file_keys(self) -> frozenset[str]:
        if self.api_keys_file is None:
            return frozenset()
        try:
            text = self.api_keys_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise SettingsError(f"LMEVAL_API_KEYS_FILE: cannot read: {error}") from None
        return frozenset(line.strip() for line in text.splitlines() if line.strip())

    def public_dict(self) -> dict[str, Any]:
        """Effective settings with secrets masked, for GET /config and the start-up log."""
        data = self.model_dump(mode="json")
        for name in _SECRET_FIELDS:
            data[name] = f"<{len(data[name])} configured>"
        data["webhook_secret"] = None if self.webhook_secret is None else "<configured>"
        # A webhook URL may carry a token in its path (chat services' do): origins only.
        data["webhooks"] = [_origin(hook.url) for hook in self.webhooks]
        return data


CONFIG_FILE_VARIABLE = "LMEVAL_CONFIG_FILE"
#: ``examples/tasks`` of a source checkout (or the Docker image): read-only for jobs.
SHIPPED_EXAMPLE_TASKS = Path(__file__).resolve().parent.parent / "examples" / "tasks"


def valid_webhook_secret(value: str) -> bool:
    """Whether ``value`` is a secret in the ``whsec_<base64>`` form of Standard Webhooks."""
    import base64
    import binascii

    if not value.startswith("whsec_"):
        return False
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return False
    return 24 <= len(key) <= 64


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…"


def _absolute_path(path: Path) -> Path:
    """``path`` made absolute against the start-up folder, once: jobs run in their own
    folders and fork servers elsewhere, so a relative path would mean something else there."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def _shared_folder_reason(data_dir: Path, roots: tuple[Path, ...]) -> str | None:
    """Why ``data_dir`` cannot be the server's private folder, or None."""
    real = Path(os.path.realpath(data_dir))
    if real == Path("/"):
        return "is the root folder"
    for root in roots:
        root_real = Path(os.path.realpath(root))
        if root_real == real or real in root_real.parents:
            return f"is or contains the allowed path root {root} (LMEVAL_ALLOWED_PATH_ROOTS)"
    try:
        info = os.stat(real)
    except FileNotFoundError:
        return None  # created at start, private
    if info.st_mode & (stat.S_ISVTX | stat.S_IWOTH):
        return "is a shared folder (sticky or writable by everyone, like /tmp)"
    if info.st_uid != os.geteuid():
        return "is not owned by the server's user"
    return None


def _config_file_values(path: str | None) -> dict[str, Any]:
    """Settings from an optional TOML file (keys are the field names); the env wins."""
    if not path:
        return {}
    import tomllib

    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SettingsError(f"{CONFIG_FILE_VARIABLE}: cannot read {path}: {error}") from None
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise SettingsError(f"{CONFIG_FILE_VARIABLE}: unknown settings in {path}: {unknown}")
    return data


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return _LEGACY_NAMES.get(field, "LMEVAL_" + field.upper())


def _parse_raw(name: str, raw: str) -> Any:
    """Lists come comma-separated (or as a JSON array); everything else as given."""
    if name in _JSON_FIELDS:
        try:
            return json.loads(raw)
        except json.JSONDecodeError as error:
            raise SettingsError(f"{env_name(name)}: invalid JSON: {error}") from None
    if name not in _LIST_FIELDS:
        return raw
    text = raw.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            raise SettingsError(f"{env_name(name)}: invalid JSON list: {error}") from None
        return parsed
    return [part.strip() for part in text.split(",") if part.strip()]


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"] and message.startswith(("LMEVAL_", "MAX_", "QUEUE_")):
            parts.append(message)  # a rule across settings names its variables itself
            continue
        name = env_name(str(item["loc"][0])) if item["loc"] else "settings"
        parts.append(f"{name}: {message}")
    return "invalid settings: " + "; ".join(parts)
