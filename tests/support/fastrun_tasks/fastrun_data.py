"""In-memory datasets for the fastrun test tasks.

Rows live in code (not a relative ``data_files`` path) so the tasks work from
any CWD and write nothing to the HuggingFace datasets cache.
"""

from __future__ import annotations

from typing import Any

_MC_ROWS: list[dict[str, Any]] = [
    {
        "question": "What colour is the sky on a clear day?",
        "choices": ["red", "blue", "green", "black"],
        "label": 1,
    },
    {
        "question": "How many legs does a spider have?",
        "choices": ["six", "four", "eight", "ten"],
        "label": 2,
    },
    {
        "question": "Which planet is closest to the sun?",
        "choices": ["Mercury", "Venus", "Earth", "Mars"],
        "label": 0,
    },
    {"question": "What is 2 + 2?", "choices": ["3", "4", "5", "22"], "label": 1},
    {"question": "Which animal barks?", "choices": ["cat", "cow", "fish", "dog"], "label": 3},
    {
        "question": "What is frozen water called?",
        "choices": ["ice", "steam", "sand", "oil"],
        "label": 0,
    },
    {
        "question": "Which month comes after May?",
        "choices": ["April", "June", "July", "March"],
        "label": 1,
    },
    {
        "question": "What do bees make?",
        "choices": ["milk", "silk", "honey", "wax paper"],
        "label": 2,
    },
]

_GEN_ROWS: list[dict[str, Any]] = [
    {"question": "What is the capital of France?", "answer": "Paris"},
    {"question": "What is the capital of Italy?", "answer": "Rome"},
    {"question": "What is 3 times 3?", "answer": "9"},
    {"question": "What colour is grass?", "answer": "green"},
    {"question": "Opposite of hot?", "answer": "cold"},
    {"question": "Say lol.", "answer": "lol"},
]


def _dataset(rows: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_mc(**kwargs: Any) -> Any:
    """lm_eval calls custom_dataset(**metadata, **dataset_kwargs): accept anything."""
    return _dataset(_MC_ROWS)


def load_gen(**kwargs: Any) -> Any:
    """See load_mc."""
    return _dataset(_GEN_ROWS)
