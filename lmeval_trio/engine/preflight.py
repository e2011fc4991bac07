"""Endpoint pre-flight for API models: does the model server answer, serve the requested
model, and (``tokenizer_backend=remote``) its tokenizer route, before a job is run?

Only lm-eval's OpenAI-compatible family is checked (``local-completions``,
``local-chat-completions``, ``openai-completions``, ``openai-chat-completions``). The checks
are two GETs, bounded by LMEVAL_PREFLIGHT_TIMEOUT_S: ``<server>/v1/models`` (any HTTP answer
means the endpoint is up; a model list must name ``model``) and, for a remote tokenizer,
``<server>/tokenizer_info``, the route lm-eval's RemoteTokenizer validates first. No
evaluation request is ever sent. A credential (``api_key`` in model_args, else
``OPENAI_API_KEY`` in env_vars) is sent as lm-eval would send it and never shown: every
message names the endpoint without user information, query or credentials.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping
from typing import Any

import httpx
import trio

from lmeval_trio.errors import InvalidRequest
from lmeval_trio.harness.effective import EffectiveRun

API_MODELS = frozenset(
    {
        "local-completions",
        "local-chat-completions",
        "openai-completions",
        "openai-chat-completions",
    }
)
#: lm-eval's defaults when model_args names no base_url.
DEFAULT_BASE_URLS = {
    "openai-completions": "https://api.openai.com/v1/completions",
    "openai-chat-completions": "https://api.openai.com/v1/chat/completions",
}
#: Model ids a refusal lists.
MAX_LISTED_MODELS = 10


class EndpointDown(InvalidRequest):
    """The model endpoint cannot serve the job (422 at submission, or the job's reason)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


async def check(run: EffectiveRun, env_vars: Mapping[str, str], timeout_s: float) -> str:
    """The pre-flight verdict for ``run`` (what lm-eval will run with); raises EndpointDown."""
    model = str(run.values.get("model") or "")
    if model not in API_MODELS:
        return f"not an API model ({model}): nothing to check"
    args = run.values.get("model_args")
    args = args if isinstance(args, dict) else {}
    base_url = str(args.get("base_url") or DEFAULT_BASE_URLS.get(model, ""))
    if not base_url:
        raise EndpointDown(run.field("model_args"), f"{model} needs a base_url in model_args")
    root = server_root(base_url)
    field = run.field("model_args")
    headers = _auth(args, env_vars)
    verify = await trio.to_thread.run_sync(_ssl_context)
    async with httpx.AsyncClient(
        timeout=timeout_s, headers=headers, trust_env=False, verify=verify
    ) as http:
        detail = await _models(http, root, base_url, str(args.get("model") or ""), field)
        if str(args.get("tokenizer_backend") or "") == "remote":
            detail += "; " + await _tokenizer(http, root, field)
    return detail


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """The TLS settings every check's client would make for itself (httpx's defaults,
    ``trust_env=False``), made once: loading the CA bundle costs ~30 ms of CPU per client,
    which every API job's dispatch waited for. Called in a worker thread."""
    return httpx.create_ssl_context(trust_env=False)


def server_root(base_url: str) -> str:
    """The server's root, as lm-eval's RemoteTokenizer derives it from ``base_url``."""
    return base_url.replace("/v1/completions", "").replace("/v1/chat/completions", "").rstrip("/")


def shown(url: str) -> str:
    """``url`` without user information, query or fragment (credentials never shown)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "the base_url"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}{parsed.path}"


async def _get(http: httpx.AsyncClient, url: str, field: str, what: str) -> httpx.Response:
    """GET ``url``; ``what`` names the endpoint in a refusal (never ``url``'s credentials)."""
    try:
        return await http.get(url)
    except httpx.ConnectError:
        raise EndpointDown(field, f"{what} refused the connection") from None
    except httpx.TimeoutException:
        raise EndpointDown(
            field, f"{what} did not answer in time (LMEVAL_PREFLIGHT_TIMEOUT_S)"
        ) from None
    except (httpx.HTTPError, ValueError) as error:
        raise EndpointDown(field, f"{what} cannot be reached ({type(error).__name__})") from None


async def _models(http: httpx.AsyncClient, root: str, base_url: str, model: str, field: str) -> str:
    url = f"{root}/v1/models"
    response = await _get(http, url, field, f"endpoint {shown(base_url)}")
    if response.status_code != 200:
        return f"{shown(base_url)} answers (its model list: HTTP {response.status_code})"
    served = _model_ids(response)
    if served is None or not model:
        return f"{shown(base_url)} answers"
    if model not in served:
        listed = ", ".join(repr(m) for m in served[:MAX_LISTED_MODELS]) or "no model"
        raise EndpointDown(
            f"{field}.model" if field == "model_args" else field,
            f"endpoint {shown(base_url)} serves {listed}, not {model!r}",
        )
    return f"{shown(base_url)} answers and serves {model!r}"


def _model_ids(response: httpx.Response) -> list[str] | None:
    try:
        data = response.json().get("data")
    except (ValueError, AttributeError):
        return None
    if not isinstance(data, list):
        return None
    return [str(item["id"]) for item in data if isinstance(item, dict) and "id" in item]


async def _tokenizer(http: httpx.AsyncClient, root: str, field: str) -> str:
    url = f"{root}/tokenizer_info"
    tokenizer_field = f"{field}.tokenizer_backend" if field == "model_args" else field
    response = await _get(http, url, tokenizer_field, f"remote tokenizer {shown(url)}")
    if response.status_code != 200:
        raise EndpointDown(
            tokenizer_field,
            f"remote tokenizer {shown(url)} answered HTTP {response.status_code} "
            "(tokenizer_backend=remote needs it)",
        )
    return "its remote tokenizer answers"


def _auth(args: Mapping[str, Any], env_vars: Mapping[str, str]) -> dict[str, str]:
    key = args.get("api_key") or env_vars.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}
