"""Byte sizes written as ints or strings such as ``"4MiB"``, ``"2GB"`` or ``"512"``."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from inferno_memory.errors import InvalidSizeError

__all__ = ["ALIGNMENT", "Size", "align_up", "format_size", "parse_size"]

#: Alignment of every block the pool hands out; matches what cudaMalloc guarantees.
ALIGNMENT = 256

Size = int | str
"""A size in bytes: an int, or a string with an optional decimal or binary unit."""

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Size, *, field: str = "size") -> int:
    """Return ``value`` as a whole number of bytes.

    Ints are taken as bytes; strings accept ``B``, decimal units (``KB``, ``MB``, ``GB``,
    ``TB``: powers of 1000) and binary units (``KiB``, ``MiB``, ``GiB``, ``TiB``: powers of
    1024), case-insensitively, with a decimal number (``"1.5GiB"``) as long as the result is a
    whole number of bytes. Raises `InvalidSizeError` naming ``field`` otherwise.
    """
    if isinstance(value, bool):
        raise InvalidSizeError(f"{field}: expected a size in bytes, got the bool {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidSizeError(f"{field}: size must be >= 0 bytes, got {value}")
        return value
    if not isinstance(value, str):
        raise InvalidSizeError(
            f"{field}: expected an int or a string such as '4MiB', got {type(value).__name__}"
        )
    match = _PATTERN.match(value)
    if match is None:
        raise InvalidSizeError(f"{field}: cannot read {value!r} as a size (e.g. '512', '4MiB')")
    number, unit = match.groups()
    multiplier = _UNITS.get(unit.lower())
    if multiplier is None:
        known = ", ".join(u for u in ("B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"))
        raise InvalidSizeError(f"{field}: unknown unit {unit!r} in {value!r}; use one of {known}")
    try:
        total = Decimal(number) * multiplier
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise InvalidSizeError(f"{field}: cannot read {value!r} as a size") from exc
    if total != total.to_integral_value():
        raise InvalidSizeError(f"{field}: {value!r} is not a whole number of bytes")
    return int(total)


def align_up(nbytes: int, alignment: int = ALIGNMENT) -> int:
    """Round ``nbytes`` up to a multiple of ``alignment`` (a power of two)."""
    return (nbytes + alignment - 1) & ~(alignment - 1)


def format_size(nbytes: int) -> str:
    """Render ``nbytes`` for humans, e.g. ``"3.50 MiB (3670016 B)"``."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(nbytes) >= factor:
            return f"{nbytes / factor:.2f} {unit} ({nbytes} B)"
    return f"{nbytes} B"
