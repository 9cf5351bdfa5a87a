"""One duration syntax for the whole platform: ``500ms``, ``30s``, ``15m``, ``2h``, ``7d``.

Used by the HTTP APIs' ``since`` windows (:func:`parse_since`: a unit is required and the
window must be longer than zero) and by probe, alert and marker definitions
(``noops.observe._rules_common.parse_duration``: a bare number is seconds, zero is allowed).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

from noops.errors import UsageError

__all__ = ["parse_duration", "parse_since"]

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: str | float | int, what: str = "duration", *,
                   error: type[UsageError] = UsageError, unit_required: bool = False) -> float:
    """Seconds from ``30s``, ``500ms``, ``2m``, ``1h``, ``7d`` or (unless ``unit_required``) a
    bare number of seconds; anything else, or a negative number, raises ``error`` saying what
    to write."""
    if isinstance(value, bool):
        raise error(f"{what} must be a duration such as 30s, 2m or 1h, not {value!r}")
    if isinstance(value, int | float) and not unit_required:
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match or (unit_required and not match.group(2)):
            raise error(f"{what} {value!r} is not a duration: use e.g. 30s, 15m, 2h or 7d "
                        "(or 500ms)")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds < 0:
        raise error(f"{what} must not be negative (got {value!r})")
    return seconds


def parse_since(text: str) -> timedelta:
    """A ``since`` window (``90s``/``15m``/``2h``/``7d``, more than zero) as a timedelta; anything
    else is a :class:`UsageError`."""
    seconds = parse_duration(text, "since", unit_required=True)
    if seconds <= 0:
        raise UsageError(f"since={text!r} is not a duration longer than zero: use e.g. 30s, 15m, "
                         "2h or 7d")
    return timedelta(seconds=seconds)
