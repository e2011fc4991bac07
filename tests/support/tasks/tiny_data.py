"""Dataset loaders for the tiny offline tasks (referenced from the YAMLs via ``!function``).

lm-eval calls ``custom_dataset(**metadata, **dataset_kwargs)``; metadata includes the
model_args, hence the ``**kwargs``. The rows come from the ``.jsonl`` file next to this
module, so the tasks work from any CWD and never touch the HF datasets cache.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


def _read_rows(name: str) -> list[dict[str, Any]]:
    text = (_HERE / f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _build(name: str) -> Any:
    # `datasets` ships no type information; importing it dynamically keeps mypy --strict
    # quiet without a `type: ignore` that would turn stale if stubs appear.
    datasets = importlib.import_module("datasets")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_read_rows(name))})


def load_tiny_mc(**kwargs: Any) -> Any:
    """8 multiple-choice questions: question, choices (4), label (index of the answer).

    Returns a ``datasets.DatasetDict`` with a single ``test`` split.
    """
    return _build("tiny_mc")


def load_tiny_gen(**kwargs: Any) -> Any:
    """6 short-answer questions: question, answer. Returns a ``datasets.DatasetDict``."""
    return _build("tiny_gen")
