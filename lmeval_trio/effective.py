"""What lm-eval will run with: the request's flags read by lm-eval's own parser, merged with
a ``--config`` file the way lm-eval merges it.

The policy decides on these values, never on raw text: a JSON escape, a ``key=value``
spelling or a config file all arrive here as the dict lm-eval's model class will receive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmeval_trio.cli_schema import RequestRejected

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
    from lmeval_trio import command

    namespace = command.check(request)
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

    from lm_eval.config.evaluate_config import EvaluatorConfig

    known = {f.name for f in fields(EvaluatorConfig)}
    if not set(config) <= known:
        raise RequestRejected("config", "the config file sets keys lm-eval does not know")
    values = {**asdict(EvaluatorConfig()), **config, **cli}
    try:
        parsed = EvaluatorConfig(**values)._parse_dict_args()
    except (TypeError, ValueError, AttributeError):
        raise RequestRejected("config", "lm-eval cannot parse the config file's values") from None
    return {name: getattr(parsed, name) for name in known}
