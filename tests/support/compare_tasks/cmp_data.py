"""Dataset loader of the comparison test task (``!function cmp_data.load_cmp_mc``): 40
multiple-choice rows from ``cmp_mc.jsonl`` beside this module (no HF datasets cache)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


def load_cmp_mc(**kwargs: Any) -> Any:
    """40 rows: question, choices (4), label. A ``datasets.DatasetDict`` with ``test``."""
    text = (_HERE / "cmp_mc.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    datasets = importlib.import_module("datasets")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def plain_mean(items: list[float]) -> float:
    """A mean as a custom aggregation: lm-eval knows no standard error for it (it writes
    "N/A"), which the comparison tests use."""
    return sum(items) / len(items)
