"""The grammar of rates in settings: ``100/minute``, ``10 per 5 seconds``, ``5/minute;100/hour``.

``PETSTORE_RATE_LIMIT`` is a core setting (SPEC §1) that more than one plugin reads: the rate
limiter enforces it, the auth plugin announces it (``/user/login``'s ``X-Rate-Limit``). Its
grammar lives here, beside the setting, so that neither plugin imports the other. The core
itself limits nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d+)?\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Rate:
    """``limit`` requests per ``window`` seconds."""

    limit: int
    window: int

    def per_hour(self) -> int:
        return self.limit * 3600 // self.window


def parse_rates(text: str) -> tuple[Rate, ...]:
    """``"100/minute"``, ``"10 per 5 seconds"``, ``"5/minute;100/hour"`` -> rates; ValueError otherwise."""
    rates = []
    for part in text.split(";"):
        match = _RATE.match(part)
        if match is None or int(match.group(1)) <= 0 or match.group(2) == "0":
            raise ValueError(f"not a rate: {part.strip()!r} (write e.g. 100/minute, 10/5 seconds, 5/minute;50/hour)")
        rates.append(Rate(int(match.group(1)), int(match.group(2) or 1) * _UNITS[match.group(3).lower()]))
    return tuple(rates)
