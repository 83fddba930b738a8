"""A progress bar on a terminal for loads and conversions; silent elsewhere."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["byte_progress"]

#: Below this many bytes a load is quick enough that a bar would only flicker.
_MIN_BYTES = 64 << 20


@contextmanager
def byte_progress(
    description: str, total: int, *, enabled: bool | None = None
) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(nbytes)`` callable that drives a bar on stderr when it is a terminal."""
    show = sys.stderr.isatty() and total >= _MIN_BYTES if enabled is None else enabled
    if not show:
        yield lambda _n: None
        return
    from tqdm import tqdm

    with tqdm(
        total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, leave=False
    ) as bar:
        yield bar.update
