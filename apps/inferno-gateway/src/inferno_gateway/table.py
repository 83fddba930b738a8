"""The live table of workers, fed by a discovery watch.

Each `Worker` pairs what the registry says (address, models, pushed load signals, readiness)
with what only the gateway knows right now (requests it has in flight there, whether the last
connection attempt was refused). Routing reads the table; it never waits on the registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from inferno_discovery import (
    DiscoveryEvent,
    DiscoveryEventKind,
    DiscoveryProvider,
    LoadSignals,
    ServiceInfo,
)

__all__ = ["Worker", "WorkerTable", "follow_registry", "registration_ready"]

log = structlog.get_logger(__name__)

# Metadata a daemon may set to say it is registered but not taking traffic (e.g. draining).
_NOT_READY_FLAGS = frozenset({"false", "0", "no", "off"})
_READY_STATES = frozenset({"ready", "serving", "ok", "healthy"})


def registration_ready(info: ServiceInfo) -> bool:
    """Whether a registration advertises readiness.

    The daemon registers only once it is ready and deregisters when it drains, so a plain
    registration is ready; metadata ``ready=false`` or a ``status``/``state`` other than
    ready/serving marks one that is registered but must not get traffic.
    """
    meta = {k.lower(): v.strip().lower() for k, v in info.metadata.items()}
    if meta.get("ready") in _NOT_READY_FLAGS:
        return False
    states = [meta[key] for key in ("status", "state") if key in meta]
    return all(state in _READY_STATES for state in states)


@dataclass(slots=True, eq=False)
class Worker:
    """One daemon as the gateway sees it. Mutable: the table updates it in place."""

    id: str
    address: str
    models: frozenset[str]
    load: LoadSignals
    ready: bool
    version: str = ""
    in_flight: int = 0
    """Requests this gateway has sent there and not yet finished (fresh, unlike ``load``)."""
    routed: int = 0
    """Requests this gateway has sent there in total."""
    unreachable_until: float = 0.0
    """Monotonic time before which new traffic avoids it (a connection was refused)."""
    first_seen: float = field(default_factory=time.time)

    @property
    def load_score(self) -> int:
        """Requests on the worker: the larger of our fresh count and its pushed count.

        The pushed signals include other clients' traffic but lag by a keep-alive interval; our
        in-flight count is exact for our own traffic. Taking the larger sees both.
        """
        pushed = self.load.running_requests + self.load.queue_depth
        return max(self.in_flight, pushed)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view for ``/gateway/workers``."""
        return {
            "id": self.id,
            "address": self.address,
            "models": sorted(self.models),
            "ready": self.ready,
            "version": self.version,
            "in_flight": self.in_flight,
            "routed": self.routed,
            "reachable": self.unreachable_until <= time.monotonic(),
            "load": self.load.model_dump(),
        }


TableListener = Callable[["WorkerTable"], object]
"""Called after every change of the table (added, updated, removed worker)."""


class WorkerTable:
    """Workers by id, with the questions routing asks: who serves model X and may take traffic.

    ``clock`` is the monotonic clock used for cool-downs (injectable for tests).
    """

    def __init__(
        self,
        *,
        on_change: Iterable[TableListener] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._workers: dict[str, Worker] = {}
        self._listeners = list(on_change)
        self._clock = clock

    def add_listener(self, listener: TableListener) -> None:
        """Call ``listener`` after every future change."""
        self._listeners.append(listener)

    def __len__(self) -> int:
        return len(self._workers)

    def get(self, worker_id: str) -> Worker | None:
        """The worker with this id, if known."""
        return self._workers.get(worker_id)

    @property
    def workers(self) -> list[Worker]:
        """Every known worker, ready or not, sorted by id."""
        return [self._workers[k] for k in sorted(self._workers)]

    @property
    def ready_workers(self) -> list[Worker]:
        """Workers that may get traffic, sorted by id."""
        return [w for w in self.workers if w.ready]

    def apply(self, event: DiscoveryEvent) -> None:
        """Fold one discovery event into the table."""
        if event.kind is DiscoveryEventKind.REMOVED:
            gone = self._workers.pop(event.id, None)
            if gone is not None:
                log.info("worker_removed", worker=event.id, address=gone.address)
                self._changed()
            return
        info = event.info
        if info is None:
            return
        self.upsert(info)

    def upsert(self, info: ServiceInfo) -> Worker:
        """Add a worker or refresh its registration, keeping the gateway's own counters."""
        ready = registration_ready(info)
        worker = self._workers.get(info.id)
        if worker is None:
            worker = Worker(
                id=info.id,
                address=info.address.rstrip("/"),
                models=frozenset(info.models),
                load=info.load,
                ready=ready,
                version=info.version,
            )
            self._workers[info.id] = worker
            log.info("worker_added", worker=info.id, address=worker.address, ready=ready)
        else:
            if worker.ready != ready:
                log.info("worker_readiness", worker=info.id, ready=ready)
            worker.address = info.address.rstrip("/")
            worker.models = frozenset(info.models)
            worker.load = info.load
            worker.ready = ready
            worker.version = info.version
        self._changed()
        return worker

    def remove(self, worker_id: str) -> None:
        """Forget a worker now (its registration went away)."""
        if self._workers.pop(worker_id, None) is not None:
            self._changed()

    def models(self) -> dict[str, float]:
        """Model names served by ready workers, each with the time it was first seen."""
        found: dict[str, float] = {}
        for worker in self.ready_workers:
            for name in worker.models:
                found[name] = min(found.get(name, worker.first_seen), worker.first_seen)
        return dict(sorted(found.items()))

    def serves(self, model: str) -> bool:
        """Whether any known worker (ready or not) registered ``model``."""
        return any(model in w.models for w in self._workers.values())

    def candidates(self, model: str, exclude: Iterable[str] = ()) -> list[Worker]:
        """Ready workers serving ``model``, minus ``exclude``, preferring reachable ones.

        Workers in their unreachable cool-down are left out unless nothing else is left: a
        refused connection may have been a blip, and trying is better than failing outright.
        """
        skip = set(exclude)
        eligible = [w for w in self.ready_workers if model in w.models and w.id not in skip]
        now = self._clock()
        reachable = [w for w in eligible if w.unreachable_until <= now]
        return reachable or eligible

    def mark_unreachable(self, worker_id: str, cooldown_s: float) -> None:
        """Keep new traffic away from a worker for ``cooldown_s`` (its connection failed).

        Its registration stays: only the registry decides that a worker is gone (its lease
        expires within the TTL if the process died).
        """
        worker = self._workers.get(worker_id)
        if worker is not None:
            worker.unreachable_until = self._clock() + cooldown_s
            self._changed()

    def _changed(self) -> None:
        for listener in self._listeners:
            try:
                listener(self)
            except Exception:
                log.exception("table_listener_failed")


async def follow_registry(
    discovery: DiscoveryProvider,
    service: str,
    table: WorkerTable,
    *,
    retry_interval: float = 1.0,
) -> None:
    """Apply every watch event of ``service`` to ``table`` until cancelled.

    Providers resume their watch across registry outages themselves; this loop only restarts a
    watch that ended or raised (logged), after ``retry_interval`` seconds. Before each (re)start
    it lists the service and drops workers the registry no longer has, since a fresh watch
    reports only live instances and would never say ``removed`` for those.
    """
    while True:
        try:
            live = {info.id for info in await discovery.list(service)}
            for worker in table.workers:
                if worker.id not in live:
                    table.remove(worker.id)
            async for event in discovery.watch(service):
                table.apply(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("watch_failed", service=service, error=str(exc))
        await asyncio.sleep(retry_interval)
