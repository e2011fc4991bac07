"""Rows of the example task (lm-eval calls ``load`` through the YAML's ``!function``)."""

from __future__ import annotations

import importlib
from typing import Any

ROWS = [
    {"question": "What is 2 + 2?", "choices": ["3", "4", "5", "22"], "label": 1},
    {"question": "What is 3 * 3?", "choices": ["6", "12", "33", "9"], "label": 3},
    {"question": "What is 10 - 7?", "choices": ["4", "3", "5", "6"], "label": 1},
    {"question": "What is 5 + 6?", "choices": ["10", "11", "12", "13"], "label": 1},
    {"question": "What is 12 / 4?", "choices": ["3", "4", "6", "8"], "label": 0},
    {"question": "What is 7 * 2?", "choices": ["9", "12", "14", "72"], "label": 2},
]


def load(**kwargs: Any) -> Any:
    """A ``datasets.DatasetDict`` with one ``test`` split (lm-eval passes metadata kwargs)."""
    datasets = importlib.import_module("datasets")  # untyped: imported dynamically for mypy
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS)})
