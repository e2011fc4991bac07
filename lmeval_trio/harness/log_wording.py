"""The words of lm-eval's log lines and tqdm bar descriptions that progress parsing keys on,
and of the errors that make a failed attempt worth another (``engine/retries.py``).

lm-eval has no machine-readable progress; ``jobs``' progress parser (``progress.py``) reads
its stderr, and everything in it that is lm-eval's own wording lives here, next to where
lm-eval prints it (0.4.10 through 0.4.13 print alike). If a release rewords one, progress
degrades safely: the phase it marked is not recognised, the percent stays where it was, and
the job's own outcome and results are unaffected (100 when it succeeds). ``tests/test_compat.py``
checks every :data:`SOURCES` pattern against the installed lm-eval on each supported release.
"""

from __future__ import annotations

import re

# Cheap substring tests run before each log line's regex (most lines match none).
RUNNING_HINT = "Running"
MODEL_HINT = "Initializing"
CACHED_HINT = "Cached requests"
# The log line ends with the phrase (so only its tail is searched); the hf bar
# description is followed by ": pct%" instead.
#: ``evaluator.py``: ``eval_logger.info("Running %s requests", reqtype)``; opens a phase.
RUNNING_LOG = re.compile(r"(?:^|[\s\]])Running (\w{1,64}) requests$")
RUNNING_TAIL = 100  # > len(" Running <64 chars> requests")
#: Bars named after their request type (hf, vllm, sglang, ...: ``desc="Running
#: loglikelihood requests"``; watsonx: ``"Running generate_until function ..."``).
DESC_REQTYPE = re.compile(r"Running (\w{1,64}) (?:requests|function)")
#: ``api_models.py``'s bar (``desc="Requesting API"``): a phase named after itself.
SELF_NAMED_PHASE = "Requesting API"
DESC_SELF_NAMED = re.compile(re.escape(SELF_NAMED_PHASE))
#: Preparation bars inside a phase: tokenising, cache checks (``api/model.py``), vllm's own
#: ``Processed prompts``, datasets' map/filter/download bars.
DESC_NOT_INFERENCE = re.compile(
    r"tokeniz|checking cached|processed prompts|adding requests|\bmap\b|\bfilter\b"
    r"|split|download|loading|resolving|bootstrap",
    re.IGNORECASE,
)
#: ``api/task.py``: ``Building contexts for <task> on rank <n>...``; closes the phase.
BUILDING_LOG = "Building contexts for "
#: ``evaluator.py``: ``Initializing <model> model, with arguments: ...``: the model class.
MODEL_LOG = re.compile(r"Initializing (\S{1,64}) model, with arguments")
#: ``api/model.py``: lm-eval's response cache (--use_cache: resumed and requeued jobs) answers
#: these requests before the model's bar starts, whose total is then only the remainder.
CACHED_LOG = re.compile(r"Cached requests: (\d{1,15}), Requests remaining: (\d{1,15})")
# Models whose loglikelihood_rolling first windows every document under an unlabeled bar
# (instant, not inference) and then scores batches of windows under per-batch "Running
# loglikelihood requests" bars (lm-eval 0.4.13: HFLM and its subclasses, VLLM, SGLang,
# NeMo). Other models (API, dummy, gguf, ...) score inside that unlabeled bar's loop.
WINDOWING_MODELS = frozenset(
    {"hf", "hf-auto", "huggingface", "steered", "hf-mistral3", "mamba_ssm", "habana", "ipex"}
    | {"openvino", "vllm", "sglang", "nemo_lm"}
)

# -- transient failures ---------------------------------------------------------------------
# A failed job's cause is the last line of its stderr that names an exception (lm-eval exits
# with a traceback). API models (``models/api_models.py``) retry each request themselves
# (tenacity, ``max_retries``), then re-raise what the HTTP client raised: requests' (one
# request at a time) or aiohttp's (``num_concurrent`` > 1). Before any request, the remote
# tokenizer (``utils.py``'s ``RemoteTokenizer``) wraps requests' error in a RuntimeError.
#: Exception classes (the last dotted part) of a connection refused, reset or dropped.
CONNECTION_ERRORS = frozenset(
    {
        "ConnectionError",  # requests: refused, reset, aborted (and urllib3's Max retries)
        "ChunkedEncodingError",  # requests: the connection dropped mid-answer
        "ProtocolError",  # urllib3: the same, unwrapped
        "ClientConnectorError",  # aiohttp: cannot connect (refused)
        "ClientConnectionError",
        "ClientConnectionResetError",
        "ClientOSError",  # aiohttp: reset by peer
        "ServerDisconnectedError",  # aiohttp: dropped
        "ClientPayloadError",  # aiohttp: dropped mid-answer
        "ConnectionRefusedError",
        "ConnectionResetError",
        "ConnectionAbortedError",
        "RemoteDisconnected",
    }
)
#: A host name that does not resolve is a wrong ``base_url``, not a passing outage.
NOT_TRANSIENT = re.compile(
    r"NameResolutionError|Name or service not known|nodename nor servname|getaddrinfo failed"
    r"|No address associated",
    re.IGNORECASE,
)
#: The status of an HTTP error answer: requests' ``raise_for_status`` ("503 Server Error:
#: Service Unavailable for url: …", "429 Client Error: …") and aiohttp's
#: (``ClientResponseError: 503, message='Service Unavailable', url=…``).
HTTP_STATUS = re.compile(r"\b(\d{3}) (?:Client|Server) Error\b|ClientResponseError: (\d{3}),")
#: Connection failures as requests words them inside another exception's message (the remote
#: tokenizer's ``RuntimeError: RemoteTokenizer: GET … failed after 3 attempts: <requests>``).
CONNECTION_WORDS = re.compile(
    r"Connection refused|Connection reset|Connection aborted|RemoteDisconnected"
    r"|Failed to establish a new connection|Server disconnected|Cannot connect to host"
)
REMOTE_TOKENIZER_FAILED = re.compile(r"RemoteTokenizer: \S+ \S+ failed after \d+ attempts: ")


def transient_error(line: str) -> bool:
    """Whether ``line`` (a traceback's final exception line) says the model endpoint refused
    or dropped a connection, or answered 5xx or 429: a failure another attempt may not see."""
    head, _, message = line.strip().partition(":")
    if NOT_TRANSIENT.search(message):
        return False
    status = HTTP_STATUS.search(line)
    if status is not None:
        code = int(status.group(1) or status.group(2))
        return code == 429 or 500 <= code <= 599
    if head.rsplit(".", 1)[-1] in CONNECTION_ERRORS:
        return True
    return bool(REMOTE_TOKENIZER_FAILED.search(message) and CONNECTION_WORDS.search(message))


#: Where each phrase is printed: (module under ``lm_eval/``, a pattern its source matches).
SOURCES = (
    ("evaluator.py", r"Running (?:%s|\{reqtype\}) requests"),
    ("evaluator.py", r"Initializing (?:%s|\{model\}) model, with arguments"),
    ("api/task.py", r"Building contexts for "),
    ("api/model.py", r"Cached requests: .*, Requests remaining: "),
    ("models/api_models.py", r'desc="Requesting API"'),
    ("models/huggingface.py", r'desc="Running loglikelihood requests"'),
    ("models/api_models.py", r"response\.raise_for_status\(\)"),
    ("models/api_models.py", r"reraise=True"),
    (
        "utils.py",
        r"RemoteTokenizer: \{method\} \{url\} failed after \{self\.max_retries\} attempts",
    ),
)
