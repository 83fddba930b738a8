"""`ResourceLock`: the mutex of a resource's bookkeeping, safe against finalizers.

A tensor or CuPy buffer made through the bridges frees its allocation from a finalizer. The
garbage collector runs finalizers on whichever thread is executing when a collection falls
due, and that can be a thread in the middle of a resource's own critical section (the pool
builds an `Allocation`, or asks its upstream for a slab, while holding its lock). With a plain
`threading.Lock` the finalizer's ``deallocate`` then waits for a lock its own thread holds:
the process hangs. A re-entrant lock would be worse: the free would run against bookkeeping
that is half updated.

So a ``deallocate`` called during a collection, on the collecting thread, that finds the lock
taken does not wait: it queues itself (`defer_if_busy`). Whoever holds the lock runs the
queue as soon as it releases it, the interrupted section included, so the free is late by one
critical section and nothing else. Knowing that a collection is running costs one
``gc.callbacks`` hook; the hot paths pay nothing but a look at the queue after releasing.

Outside a collection nothing is deferred: a thread that finds the lock taken waits as usual.
Only a collection can run a finalizer inside these sections, because their code never drops
the last reference to anything a caller made.

A finalizer that allocates (or reads statistics) cannot be queued: it needs the answer now.
If the lock is taken while its thread runs a collection, the holder may be another thread,
which will release it within microseconds, or this one, which never will. Entering the lock
then waits a bounded time (`REENTRY_WAIT_S`) and raises `ResourceBusyError` instead of
hanging; the exception surfaces in the finalizer (Python reports it as ignored there) and
the interrupted section goes on.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from inferno_memory.allocation import Allocation
from inferno_memory.errors import ResourceBusyError

__all__ = ["REENTRY_WAIT_S", "ResourceLock"]

_log = logging.getLogger(__name__)
_get_ident = threading.get_ident

#: How long entering a lock taken during a collection on this thread waits before deciding
#: that this thread holds it itself. Other holders' sections last microseconds (a slab from
#: cudaMalloc: milliseconds).
REENTRY_WAIT_S = 2.0

# The identifier of the thread running a garbage collection, 0 when none runs. Collections
# never overlap (CPython runs one at a time), so one value is enough.
_collecting = 0


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global _collecting
    _collecting = _get_ident() if phase == "start" else 0


gc.callbacks.append(_on_gc)


class _Deallocates(Protocol):
    def deallocate(self, allocation: Allocation) -> None: ...


class ResourceLock:
    """A mutex (not re-entrant) whose frees can wait in a queue while it is held.

    Use it as a context manager; a hot path may take `raw` and inline the same steps.
    """

    __slots__ = ("_acquire", "_draining", "_locked", "_release", "pending")

    def __init__(self) -> None:
        lock = threading.Lock()
        self._acquire = lock.acquire
        self._release = lock.release
        self._locked = lock.locked
        # (resource, allocation) rather than a bound method: storing ``resource.deallocate``
        # on the resource would make a reference cycle and keep a dropped pool's memory
        # until the next collection.
        self.pending: deque[tuple[_Deallocates, Allocation]] = deque()
        self._draining = False

    def defer_if_busy(self, resource: _Deallocates, allocation: Allocation) -> bool:
        """Queue ``resource.deallocate(allocation)`` and return True when this thread is
        running a garbage collection and the lock is taken (perhaps by this very thread,
        in the section the collection interrupted). False: go ahead and take the lock."""
        if not _collecting or _collecting != _get_ident() or not self._locked():
            return False
        self.pending.append((resource, allocation))
        # The holder may have released the lock between the look and the append, and so
        # missed the entry: run the queue here if the lock is free now.
        if self._acquire(False):
            self._release()
            self.run_pending()
        return True

    def raw(self) -> tuple[Callable[..., bool], Callable[[], None]]:
        """The underlying lock's ``acquire`` and ``release``, for a hot path that inlines
        the context manager: after releasing it must call `run_pending` when ``pending``
        is not empty."""
        return self._acquire, self._release

    def run_pending(self) -> None:
        """Run the frees queued while the lock was held; call after releasing it."""
        # Each queued free releases the lock again, and would start a nested run from
        # there: with hundreds queued (one collection can finalize that many tensors) the
        # recursion nears Python's limit, and a RecursionError in the middle of a pool's
        # bookkeeping would corrupt it. So one run at a time drains the queue in a loop.
        if self._draining:
            return
        self._draining = True
        try:
            while True:
                try:
                    resource, allocation = self.pending.popleft()
                except IndexError:
                    break
                # The original caller (a finalizer) has returned: nobody is left to raise to.
                try:
                    resource.deallocate(allocation)
                except Exception:
                    _log.exception("postponed deallocate of %r failed", allocation)
        finally:
            self._draining = False
        # Another thread may have queued a free and skipped its run just before the flag
        # dropped.
        if self.pending:
            self.run_pending()

    def wait(self) -> None:
        """Take the lock after a failed non-blocking ``acquire``: blocking, except during a
        collection on this thread, where it waits `REENTRY_WAIT_S` at most and then raises
        `ResourceBusyError` (the holder is presumably the section the collection
        interrupted)."""
        if _collecting and _collecting == _get_ident():
            if not self._acquire(True, REENTRY_WAIT_S):
                raise ResourceBusyError(
                    "a finalizer used this memory resource during a garbage collection that "
                    "interrupted the resource's own critical section on the same thread; "
                    "only frees may run there (they are queued)"
                )
            return
        self._acquire()

    def __enter__(self) -> ResourceLock:
        if not self._acquire(False):
            self.wait()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()
        if self.pending:
            self.run_pending()
