"""Values as standard JSON can carry them: NaN and Infinity become null.

Below both the engine (its read model caches listing bytes) and the HTTP edge (its JSON
provider), so neither imports the other for it.
"""

from __future__ import annotations

import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (containers copied)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value
