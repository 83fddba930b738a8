"""`Observers`: callbacks a resource runs after each allocate/deallocate (the tracker's hook)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Observers"]

_log = logging.getLogger(__name__)


class Observers:
    """A thread-safe list of no-argument callbacks.

    `notify` runs them outside the resource's lock; an observer that raises is logged and
    skipped, never failing the allocation that triggered it.
    """

    __slots__ = ("_lock", "callbacks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.callbacks: tuple[Callable[[], None], ...] = ()
        """The subscribed callbacks; read-only for callers. Replaced, never mutated, so
        `notify` iterates without the lock, and a hot path tests it directly (an empty tuple
        is false) instead of paying for a ``__bool__`` call."""

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` after every change; returns a function that unsubscribes it."""
        with self._lock:
            self.callbacks = (*self.callbacks, callback)

        def unsubscribe() -> None:
            with self._lock:
                self.callbacks = tuple(c for c in self.callbacks if c is not callback)

        return unsubscribe

    def notify(self) -> None:
        """Call every observer, isolating their failures."""
        for callback in self.callbacks:
            try:
                callback()
            except Exception:
                _log.exception("memory observer %r failed", callback)

    def __bool__(self) -> bool:
        return bool(self.callbacks)
