"""What a job's own code can reach: each attempt is "ok" or the exception's name.

Used from inside real jobs, by ``escape_lm_eval.py`` (a program allowed as ``lm_eval_path``)
and by the ``escape`` task's ``!function`` loader. Targets come as a JSON object mapping an
attempt to a path: ``read:<name>`` reads a file, ``list:<name>`` lists a folder, ``write:<name>``
creates a file in a folder, ``tmpfile`` creates a temp file wherever TMPDIR says.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
_ROWS = _HERE / "tiny_mc.jsonl"  # copied next to this file with the task


def attempt(kind: str, path: str) -> str:
    try:
        if kind == "read":
            Path(path).read_bytes()
        elif kind == "list":
            os.listdir(path)
        elif kind == "write":
            Path(path, f"escape-{os.getpid()}").write_text("written by a job")
        elif kind == "tmpfile":
            with tempfile.NamedTemporaryFile(dir=None) as handle:
                handle.write(b"x")
                return "ok:" + os.path.dirname(handle.name)
        else:
            return f"unknown attempt {kind}"
    except OSError as err:
        return type(err).__name__
    return "ok"


def attempts(targets: dict[str, str]) -> dict[str, str]:
    return {name: attempt(name.split(":", 1)[0], path) for name, path in targets.items()}


def load(**kwargs: Any) -> Any:
    """The ``escape`` task's dataset: tiny_mc's rows; the attempts go to ``escape.json`` in
    the job's working directory (its own folder)."""
    targets = json.loads((_HERE / "targets.json").read_text())
    Path("escape.json").write_text(json.dumps(attempts(targets)))
    rows = [json.loads(line) for line in _ROWS.read_text().splitlines() if line.strip()]
    datasets = importlib.import_module("datasets")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
