from __future__ import annotations

import pytest
from inferno_memory import InvalidSizeError, format_size, parse_size
from inferno_memory.sizes import align_up


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512", 512),
        ("4MiB", 4 * 1024**2),
        ("2GB", 2_000_000_000),
        ("1.5 KiB", 1536),
        ("1kib", 1024),
        ("0", 0),
        ("3B", 3),
        (7, 7),
    ],
)
def test_parse_size_accepts_ints_and_units(text: int | str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["-1", "4 furlongs", "", "1.3B", "MiB", -5, True, 1.5])
def test_parse_size_rejects_bad_values_naming_the_field(bad: object) -> None:
    with pytest.raises(InvalidSizeError, match="pool_size"):
        parse_size(bad, field="pool_size")  # type: ignore[arg-type]


def test_align_up_and_format() -> None:
    assert align_up(0) == 0
    assert align_up(1) == 256
    assert align_up(256) == 256
    assert align_up(257) == 512
    assert format_size(3 * 1024**2) == "3.00 MiB (3145728 B)"
    assert format_size(12) == "12 B"
