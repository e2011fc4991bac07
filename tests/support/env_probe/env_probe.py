"""Dataset loader for the ``env_probe`` task: tiny_mc's rows, plus a record of what the job
process saw at import time, written to ``import_env.json`` in its working directory."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

_ROWS = Path(__file__).resolve().parent.parent / "tasks" / "tiny_mc.jsonl"


def load(**kwargs: Any) -> Any:
    constants = importlib.import_module("huggingface_hub.constants")
    seen = {
        "etag_timeout_at_import": constants.HF_HUB_ETAG_TIMEOUT,
        "etag_timeout_now": os.environ.get("HF_HUB_ETAG_TIMEOUT"),
        "pid": os.getpid(),
    }
    Path("import_env.json").write_text(json.dumps(seen))
    rows = [json.loads(line) for line in _ROWS.read_text().splitlines() if line.strip()]
    datasets = importlib.import_module("datasets")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
