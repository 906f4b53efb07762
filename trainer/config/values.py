"""Values of settings that are more than a number: durations (``trainer.time_budget``)."""

from __future__ import annotations

import re
from typing import Any

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def parse_duration(value: Any) -> float | None:
    """Seconds of ``90``, ``90s``, ``10m``, ``1h30m``, ``1.5h``; None for null/off; ValueError otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none", "off")):
        return None
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text or len({u for _, u in parts}) != len(parts):
                raise ValueError(value)
            seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if not 0 < seconds < 366 * 24 * 3600:
        raise ValueError(value)
    return seconds
