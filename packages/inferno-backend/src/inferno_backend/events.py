"""The daemon's in-process, typed event bus.

Libraries never see the bus: the backend adapts their plain listener callbacks (a memory
tracker's ``on_alert``, a health checker's ``on_change``, a registrar's ``on_registered``) into
the events below. Subscribers may be plain functions or coroutine functions; a subscriber that
raises is logged and never affects the publisher or the other subscribers.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from inferno_discovery import ServiceInfo
from inferno_health import HealthStatus
from inferno_memory import MemoryStats

__all__ = [
    "EngineFailed",
    "EventBus",
    "HealthStatusChanged",
    "InfernoEvent",
    "MemoryAlert",
    "ModelLoaded",
    "ModelUnloaded",
    "RequestFinished",
    "ServiceDeregistered",
    "ServiceRegistered",
    "Subscriber",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class InfernoEvent:
    """Base of every event; subscribing to it receives all of them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryAlert(InfernoEvent):
    """A memory tracker crossed a threshold (either way); ``stats`` is the snapshot then."""

    stats: MemoryStats
    threshold: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthStatusChanged(InfernoEvent):
    """A health probe (or the overall status, ``probe="overall"``) changed status."""

    status: HealthStatus
    previous: HealthStatus | None = None
    probe: str = "readiness"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceRegistered(InfernoEvent):
    """This daemon is registered in discovery, as ``info``."""

    info: ServiceInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceDeregistered(InfernoEvent):
    """This daemon's registration was revoked."""

    service_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelLoaded(InfernoEvent):
    """A model is loaded and its engine accepts requests."""

    name: str
    source: str
    nbytes: int
    load_seconds: float
    #: The LoRA adapter merged into it (its path), if any.
    lora: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelUnloaded(InfernoEvent):
    """A model's engine is shut down; ``leaked_bytes`` did not come back to the memory pool."""

    name: str
    leaked_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFinished(InfernoEvent):
    """A generation or embedding request ended (whatever the outcome). Carries no prompt text.

    An embedding request (id ``embd-...``) has no completion tokens; its finish reason is
    ``stop`` when it was answered, ``error`` when the engine failed it, ``abort`` otherwise.
    """

    request_id: str
    model: str
    finish_reasons: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineFailed(InfernoEvent):
    """An engine failed a request or could not be built."""

    model: str
    error: str
    request_id: str | None = None


E = TypeVar("E", bound=InfernoEvent)
Subscriber = Callable[[E], None] | Callable[[E], Awaitable[None]]


@dataclass(slots=True)
class _Entry:
    kind: type[InfernoEvent]
    handler: Callable[[Any], Any]
    is_async: bool = field(default=False)


class EventBus:
    """Typed publish/subscribe within one process.

    `publish` may be called from any thread. Sync subscribers run inline on the publishing
    thread, except when an event loop is bound and the publisher is on another thread: then
    everything is handed to the loop. Async subscribers always run as tasks on the bound (or
    running) loop; `drain` waits for them.
    """

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Every event published, most recent last (bounded), for diagnostics and tests.
        self.history: list[InfernoEvent] = []
        self.history_limit = 1000

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Deliver events published from other threads on ``loop`` (the daemon's loop)."""
        self._loop = loop

    def subscribe(self, kind: type[E], handler: Subscriber[E]) -> Callable[[], None]:
        """Call ``handler`` for every event that is an instance of ``kind``.

        Returns a function that removes the subscription.
        """
        entry = _Entry(kind, handler, inspect.iscoroutinefunction(handler))
        with self._lock:
            self._entries.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._entries:
                    self._entries.remove(entry)

        return unsubscribe

    def publish(self, event: InfernoEvent) -> None:
        """Deliver ``event`` to every matching subscriber; never raises."""
        loop = self._loop
        if loop is not None and not loop.is_closed() and not _on_loop(loop):
            loop.call_soon_threadsafe(self._dispatch, event)
            return
        self._dispatch(event)

    async def drain(self) -> None:
        """Wait until every async subscriber started so far has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _dispatch(self, event: InfernoEvent) -> None:
        with self._lock:
            entries = [e for e in self._entries if isinstance(event, e.kind)]
            self.history.append(event)
            del self.history[: -self.history_limit]
        for entry in entries:
            if entry.is_async:
                self._start(entry, event)
                continue
            try:
                entry.handler(event)
            except Exception:
                log.exception("event subscriber failed", event_type=type(event).__name__)

    def _start(self, entry: _Entry, event: InfernoEvent) -> None:
        async def run() -> None:
            try:
                await entry.handler(event)
            except Exception:
                log.exception("event subscriber failed", event_type=type(event).__name__)

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # Published outside any loop (a script, a test): run the coroutine to completion.
            asyncio.run(run())
            return
        task = loop.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
