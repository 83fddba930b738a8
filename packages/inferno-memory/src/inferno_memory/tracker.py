"""`MemoryTracker`: calls listeners when usage crosses a threshold of a budget, either way."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from types import TracebackType

from inferno_memory.errors import MemoryConfigError
from inferno_memory.protocols import StatisticsSource
from inferno_memory.sizes import Size, parse_size
from inferno_memory.stats import MemoryStats

__all__ = ["MemoryAlertListener", "MemoryTracker"]

_log = logging.getLogger(__name__)

MemoryAlertListener = Callable[[MemoryStats], None]
"""Called with a snapshot (``limit_bytes`` set to the budget) when a threshold is crossed."""


class MemoryTracker:
    """Watches ``source`` against ``thresholds`` (fractions of ``budget``).

    The tracker's level is how many thresholds current usage has reached; whenever a check
    finds a different level (up or down), every listener is called once with the snapshot.
    A level only falls once usage drops ``hysteresis`` (a fraction of the budget) below a
    threshold, so usage hovering on a threshold does not flood listeners.

    Checks run on `check`, and automatically after every allocate/deallocate when the
    source offers ``subscribe`` (a pool, a `StatisticsAdaptor`). A listener that raises is
    logged and skipped: it never fails the allocation that triggered the check. ``budget``
    defaults to the source's ``limit_bytes``.
    """

    def __init__(
        self,
        source: StatisticsSource,
        *,
        budget: Size | None = None,
        thresholds: Sequence[float] = (0.8, 0.95),
        hysteresis: float = 0.0,
        on_alert: MemoryAlertListener | None = None,
    ) -> None:
        if budget is None:
            budget = source.stats().limit_bytes
            if budget is None:
                raise MemoryConfigError(
                    "the source reports no limit; pass a budget such as '8GiB'", field="budget"
                )
        self._budget = parse_size(budget, field="budget")
        if self._budget <= 0:
            raise MemoryConfigError("must be positive", field="budget")
        if not thresholds or any(not 0.0 < t <= 1.0 for t in thresholds):
            raise MemoryConfigError(
                f"need one or more fractions in (0, 1], got {list(thresholds)}", field="thresholds"
            )
        if not 0.0 <= hysteresis < min(thresholds):
            raise MemoryConfigError(
                f"must be in [0, {min(thresholds)}), got {hysteresis}", field="hysteresis"
            )
        self._thresholds = tuple(sorted(set(thresholds)))
        self._up = [t * self._budget for t in self._thresholds]
        self._down = [(t - hysteresis) * self._budget for t in self._thresholds]
        self._source = source
        # Re-entrant: a listener may allocate through the watched resource, which checks again.
        self._lock = threading.RLock()
        self._listeners: list[MemoryAlertListener] = [] if on_alert is None else [on_alert]
        self._level = 0
        subscribe = getattr(source, "subscribe", None)
        self._unsubscribe: Callable[[], None] | None = (
            subscribe(self._on_change) if callable(subscribe) else None
        )
        self.check()

    @property
    def budget(self) -> int:
        """The budget thresholds are fractions of, in bytes."""
        return self._budget

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The thresholds, ascending."""
        return self._thresholds

    @property
    def level(self) -> int:
        """How many thresholds usage has reached (0: below all of them)."""
        return self._level

    def add_listener(self, listener: MemoryAlertListener) -> Callable[[], None]:
        """Call ``listener`` on every crossing; returns a function that removes it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def check(self) -> MemoryStats:
        """Read the source now, notify listeners if the level changed; returns the snapshot."""
        stats = dataclasses.replace(self._source.stats(), limit_bytes=self._budget)
        current = stats.current_bytes
        with self._lock:
            level = self._level
            while level < len(self._up) and current >= self._up[level]:
                level += 1
            while level > 0 and current < self._down[level - 1]:
                level -= 1
            if level == self._level:
                return stats
            previous, self._level = self._level, level
            listeners = list(self._listeners)
            _log.info(
                "memory usage crossed %s: level %d -> %d (%d of %d bytes)",
                "up" if level > previous else "down",
                previous,
                level,
                current,
                self._budget,
            )
            for listener in listeners:
                try:
                    listener(stats)
                except Exception:
                    _log.exception("memory alert listener %r failed", listener)
        return stats

    def close(self) -> None:
        """Stop following the source's changes (explicit `check` still works)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def __enter__(self) -> MemoryTracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _on_change(self) -> None:
        self.check()
