"""What lm-eval will run with: the request's flags read by lm-eval's own parser, merged with
a ``--config`` file the way lm-eval merges it.

The policy decides on these values, never on raw text: a JSON escape, a ``key=value``
spelling or a config file all arrive here as the dict lm-eval's model class will receive.
The merge is lm-eval's own (``lm_eval.config.evaluate_config.EvaluatorConfig``), checked at
start-up by :func:`evaluator_config`.
"""

from __future__ import annotations

import ast
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any

from lmeval_trio.harness.request_model import FlagKind, RequestRejected
from lmeval_trio.harness.versions import LmEvalUnsupported, unsupported

#: EvaluatorConfig.model's default in lm-eval 0.4.13 (the model when a request names none).
LM_EVAL_DEFAULT_MODEL = "hf"


@dataclass(frozen=True)
class EffectiveRun:
    """lm-eval's run settings for a request, and which came from the config file."""

    values: dict[str, Any]
    from_config: frozenset[str]

    def field(self, name: str) -> str:
        """The request field a refusal of ``name`` should name."""
        return f"config.{name}" if name in self.from_config else name


def effective_run(request: Mapping[str, Any], config: Mapping[str, Any] | None) -> EffectiveRun:
    """The settings lm-eval builds from ``request`` (and the already judged contents of its
    config file): EvaluatorConfig.from_cli's precedence, CLI values over the file's."""
    from lmeval_trio.harness import argv

    namespace = argv.check(request)
    cli = {
        name: value
        for name, value in vars(namespace).items()
        if (value or value == 0) and name not in ("command", "func")
    }
    if config is None:
        return EffectiveRun({"model": LM_EVAL_DEFAULT_MODEL, **cli}, frozenset())
    merged = _merge(config, cli)
    return EffectiveRun(merged, frozenset(name for name in config if name not in cli))


def _merge(config: Mapping[str, Any], cli: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's own merge and parsing (its string dicts through simple_parse_args_string).
    Refusals name the file, never quote it."""
    from dataclasses import asdict, fields

    try:
        config_class = evaluator_config()
    except LmEvalUnsupported as error:
        raise RequestRejected("config", str(error)) from None
    known = {f.name for f in fields(config_class)}
    if not set(config) <= known:
        raise RequestRejected("config", "the config file sets keys lm-eval does not know")
    check_config_values(config)
    values = {**asdict(config_class()), **config, **cli}
    try:
        parsed = _parsed(config_class(**values))
    except (TypeError, ValueError, AttributeError):
        raise RequestRejected("config", "lm-eval cannot parse the config file's values") from None
    return {name: getattr(parsed, name) for name in known}


EVALUATOR_CONFIG = "lm_eval.config.evaluate_config.EvaluatorConfig"
_PURPOSE = "the server merges a request's --config file with it, as lm-eval does"
_NEEDED_METHOD = "_parse_dict_args"


def require_evaluator_config(source: Path | None = None) -> None:
    """The start-up check: lm-eval's source (``source``, default the installed
    ``lm_eval/config/evaluate_config.py``) defines EvaluatorConfig with ``_parse_dict_args``.

    Read, not imported: its imports cost ~2 s and ~20 MB that a server which never sees a
    ``--config`` request would pay for nothing. Raises LmEvalUnsupported naming the internal.
    """
    path = source or _installed_source()
    try:
        tree = ast.parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError) as error:
        raise unsupported(EVALUATOR_CONFIG, f"cannot be read ({error})", _PURPOSE) from None
    found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EvaluatorConfig"]
    if not found:
        raise unsupported(EVALUATOR_CONFIG, f"is missing from {path}", _PURPOSE)
    methods = {n.name for n in found[0].body if isinstance(n, ast.FunctionDef)}
    if _NEEDED_METHOD not in methods:
        raise unsupported(f"{EVALUATOR_CONFIG}.{_NEEDED_METHOD}", "is missing", _PURPOSE)


def _installed_source() -> Path:
    import lm_eval

    return Path(str(lm_eval.__file__)).parent / "config" / "evaluate_config.py"


@functools.cache
def evaluator_config() -> type[Any]:
    """lm-eval's run settings class, imported when a request first has a ``--config``.
    Raises LmEvalUnsupported naming what is missing (only if lm-eval changed under a running
    server: :func:`require_evaluator_config` checked it at start-up)."""
    try:
        from lm_eval.config.evaluate_config import EvaluatorConfig
    except ImportError as error:
        raise unsupported(EVALUATOR_CONFIG, f"cannot be imported ({error})", _PURPOSE) from error
    if not (isinstance(EvaluatorConfig, type) and is_dataclass(EvaluatorConfig)):
        raise unsupported(EVALUATOR_CONFIG, "is not a dataclass", _PURPOSE)
    if not callable(getattr(EvaluatorConfig, _NEEDED_METHOD, None)):
        raise unsupported(f"{EVALUATOR_CONFIG}.{_NEEDED_METHOD}", "is missing", _PURPOSE)
    return EvaluatorConfig


def _parsed(settings: Any) -> Any:
    """The settings as lm-eval reads them: its string dicts through simple_parse_args_string,
    and (lm-eval 0.4.13 on) its seed normalised; older releases use a file's seed as it is."""
    settings = settings._parse_dict_args()
    normalize_seed = getattr(settings, "_normalize_seed", None)
    return settings if normalize_seed is None else normalize_seed()


def check_config_values(config: Mapping[str, Any]) -> None:
    """Each value of the config file that is one of lm-eval's flags, judged as the request's
    own flag would be: its YAML type, then lm-eval's parser on the word it makes. lm-eval uses
    a file's values as they are (a string ``limit`` fails minutes into the job), so a value
    the flag's type would not produce is refused now. Refusals name ``config.<key>`` and
    never quote the value (the file may be someone else's)."""
    from lmeval_trio.harness.request_model import PATH_FIELDS, check_with_parser, flag_specs

    for spec in flag_specs():
        value = config.get(spec.name)
        if value is None:
            continue
        field = f"config.{spec.name}"
        problem = _type_problem(spec.kind, value, path=spec.name in PATH_FIELDS)
        if problem:
            raise RequestRejected(field, problem)
        if spec.name in PATH_FIELDS:
            continue  # judged as paths by the policy
        if isinstance(value, list) and kind_joins_lists(spec.kind):
            value = ",".join(str(item) for item in value)  # `seed: [0, 1, 2, 3]`
        try:
            check_with_parser(spec.words(value))
        except RequestRejected:
            raise RequestRejected(field, "lm-eval's parser refuses the file's value") from None


def kind_joins_lists(kind: FlagKind) -> bool:
    """A YAML list for a text flag (``seed``) is lm-eval's comma-separated word."""
    return kind in (FlagKind.TEXT, FlagKind.LIST)


def _type_problem(kind: FlagKind, value: Any, *, path: bool) -> str | None:
    """Why ``value`` (read from YAML) is not what the flag's own parser would produce."""
    if path:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) and "\0" not in item for item in items):
            return "must be a path (text without NUL bytes)"
        return None
    if kind is FlagKind.SWITCH and not isinstance(value, bool):
        return "must be true or false"
    if kind is FlagKind.INTEGER and (isinstance(value, bool) or not isinstance(value, int)):
        return "must be an integer"
    if kind is FlagKind.NUMBER and (
        isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    ):
        return "must be a finite number"
    return None
