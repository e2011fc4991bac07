"""The bare stack for benchmark 14: a Quart-Trio app whose ``POST /job`` reads the JSON body
and answers as lmeval-trio does (``{"status": "success", "job_id": N}``), with nothing else:
no validation, policy, store, supervisor or logging of its own. Served by the same
``hypercorn --config hypercorn.toml`` command (trio worker, access log on), it is the floor
that every ``POST /job`` of the real server stands on."""

from __future__ import annotations

import itertools
from typing import Any

from quart import request
from quart_trio import QuartTrio

app = QuartTrio(__name__)
_ids = itertools.count(1)


@app.post("/job")
async def submit() -> dict[str, Any]:
    body = await request.get_json()
    if not isinstance(body, dict):
        return {"status": "error"}
    return {"status": "success", "job_id": next(_ids)}
