"""Memory sizes as people write them ("600MiB", "1.5 GiB", 900) and as the code uses them (bytes)."""

from __future__ import annotations

import math
import re

MIB = 1 << 20
MAX_SIZE = 1 << 60

_UNITS = {
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory(value: object) -> int:
    """Bytes in ``value``: a bare number means MiB; strings may carry B, KiB, MiB, GiB, KB, MB or GB."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a memory size; write e.g. 600MiB or 1.5GiB")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a memory size; write e.g. 600MiB or 1.5GiB")
        number, unit = float(value), "mib"
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        number, unit = float(match.group(1)), (match.group(2).lower() or "mib")
    else:
        raise ValueError(f"{value!r} is not a memory size; write e.g. 600MiB or 1.5GiB")
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {unit!r} in {value!r}; use one of B, KiB, MiB, GiB, KB, MB, GB")
    if not math.isfinite(number * _UNITS[unit]) or number * _UNITS[unit] > MAX_SIZE:
        raise ValueError(f"{value!r} is larger than any memory ({MAX_SIZE >> 60} EiB)")
    size = int(round(number * _UNITS[unit]))
    if size <= 0:
        raise ValueError(f"{value!r} is not a positive memory size")
    return size


def mib(size_bytes: float) -> float:
    """``size_bytes`` in MiB, for people."""
    return size_bytes / MIB


def format_memory(size_bytes: int) -> str:
    """A size as :func:`parse_memory` reads it back exactly: ``"600MiB"``, or ``"123456B"``."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size_bytes % factor == 0:
            return f"{size_bytes // factor}{unit}"
    return f"{size_bytes}B"
