"""`EtcdDiscovery`: registrations as leased keys in etcd v3, through its HTTP/JSON gateway.

Layout: ``<prefix><service>/<id>`` holds the registration as JSON, attached to a lease of the
registration's TTL. A keep-alive task per registration refreshes the lease every ``ttl / 3``;
when etcd is unreachable it logs once and retries, and when the lease is gone (expired during an
outage, or revoked by an operator) it grants a new one and publishes the registration again.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pydantic
import structlog

from inferno_discovery.errors import (
    DiscoveryClosedError,
    DiscoveryError,
    DiscoveryUnavailableError,
    EtcdError,
    WatchIdleError,
    entry_for_update,
)
from inferno_discovery.etcd_client import GRPC_NOT_FOUND, EtcdClient, KeyValue, WatchEvent
from inferno_discovery.types import (
    DiscoveryEvent,
    DiscoveryEventKind,
    ServiceInfo,
    ServiceRegistration,
)

__all__ = ["DEFAULT_PREFIX", "EtcdDiscovery"]

log = structlog.get_logger(__name__)

DEFAULT_PREFIX = "/inferno/services/"

_Known = dict[str, tuple[ServiceInfo, int]]  # id -> (value, mod_revision)


@dataclass(slots=True)
class _Lease:
    registration: ServiceRegistration
    ttl: int
    lease_id: int | None
    # Versions rather than a dirty flag: a put that lands after a newer update() must not mark
    # the newer value as published.
    version: int = 0  # bumped by every update()
    published: int = 0  # the version etcd holds
    writing: bool = False  # a coroutine is putting; it also puts whatever arrives meanwhile
    keeper: asyncio.Task[None] | None = None

    @property
    def dirty(self) -> bool:
        """Whether etcd lacks the latest registration."""
        return self.published < self.version


class EtcdDiscovery:
    """A `DiscoveryProvider` backed by etcd v3 (3.4+) over its HTTP gateway; no gRPC needed.

    ``endpoint`` is the client URL (``http://host:2379``); ``prefix`` namespaces the keys.
    Pass ``client`` to share an `EtcdClient` (and its HTTP session). ``retry_interval`` bounds
    how often an unreachable etcd is retried. A watch stream that brings nothing for
    ``watch_idle_timeout`` seconds is opened again from where it was (None: never), so a
    connection that a network partition left open but dead is replaced once the network heals;
    on a quiet registry that costs one reconnection per period. TTLs are whole seconds (etcd
    may raise very short ones to its minimum, about 2 s with default settings).
    """

    def __init__(
        self,
        endpoint: str = "http://127.0.0.1:2379",
        *,
        prefix: str = DEFAULT_PREFIX,
        client: EtcdClient | None = None,
        retry_interval: float = 1.0,
        watch_idle_timeout: float | None = 60.0,
    ) -> None:
        if not prefix.endswith("/"):
            raise ValueError(f"prefix must end with '/', got {prefix!r}")
        self.client = client if client is not None else EtcdClient(endpoint)
        self.prefix = prefix
        self.retry_interval = retry_interval
        self.watch_idle_timeout = watch_idle_timeout
        self._leases: dict[str, _Lease] = {}
        self._watches: dict[asyncio.Task[None], asyncio.Queue[DiscoveryEvent | None]] = {}
        self._closed = False

    def key(self, service: str, registration_id: str) -> str:
        """The etcd key of one instance."""
        return f"{self.prefix}{service}/{registration_id}"

    # -- worker side ---------------------------------------------------------------------------

    async def register(self, registration: ServiceRegistration, ttl: float) -> None:
        """Grant a lease, put the registration under it, and keep the lease alive."""
        self._check_open()
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        if registration.id in self._leases:
            raise ValueError(f"{registration.id!r} is already registered here; call update()")
        state = _Lease(registration, max(1, math.ceil(ttl)), None)
        state.lease_id = await self._publish(state)
        self._leases[registration.id] = state
        state.keeper = asyncio.get_running_loop().create_task(
            self._keep_alive(state), name=f"etcd-keepalive-{registration.id}"
        )
        log.info("registered", service=registration.service, id=registration.id, ttl=state.ttl)

    async def update(self, registration: ServiceRegistration) -> None:
        """Put the new value under the existing lease, or leave it to the put in flight.

        Never raises for an unreachable etcd: the keep-alive task publishes the latest value once
        etcd answers again.
        """
        self._check_open()
        state = entry_for_update(self._leases, registration)
        state.registration = registration
        state.version += 1
        try:
            await self._flush(state)
        except DiscoveryError as exc:
            # Never raised into the serving path: the keep-alive task retries.
            log.warning("update_deferred", id=registration.id, error=str(exc))

    async def deregister(self, registration_id: str) -> None:
        """Stop keeping the lease alive and revoke it (which deletes the key)."""
        state = self._leases.pop(registration_id, None)
        if state is None:
            return
        await _cancel(state.keeper)
        if state.lease_id is not None:
            try:
                await self.client.revoke(state.lease_id)
            except DiscoveryError as exc:
                log.warning(
                    "revoke_failed", id=registration_id, error=str(exc), expires_in_s=state.ttl
                )
        log.info("deregistered", service=state.registration.service, id=registration_id)

    async def _publish(self, state: _Lease) -> int:
        """Grant a fresh lease and put the latest registration under it; returns the lease."""
        lease_id, _ = await self.client.grant(state.ttl)
        version, registration = state.version, state.registration
        try:
            await self.client.put(
                self.key(registration.service, registration.id),
                _encode(registration),
                lease=lease_id,
            )
        except BaseException:
            with contextlib.suppress(DiscoveryError):
                await self.client.revoke(lease_id)
            raise
        state.published = version
        return lease_id

    async def _flush(self, state: _Lease) -> None:
        """Put the latest registration under the current lease until etcd holds it.

        One writer at a time per registration: a caller that finds a put in flight returns at
        once, and that put's writer puts the newer value next, so etcd never ends up holding an
        older value than the last one published.
        """
        if state.writing:
            return
        state.writing = True
        try:
            while state.dirty and state.lease_id is not None:
                version, registration = state.version, state.registration
                await self.client.put(
                    self.key(registration.service, registration.id),
                    _encode(registration),
                    lease=state.lease_id,
                )
                state.published = version
        finally:
            state.writing = False

    async def _keep_alive(self, state: _Lease) -> None:
        interval = state.ttl / 3
        outage = False
        while True:
            delay = interval
            try:
                if state.lease_id is None:
                    state.lease_id = await self._publish(state)
                    log.info("registration_restored", id=state.registration.id)
                elif await self.client.keepalive(state.lease_id) <= 0:
                    log.warning("lease_lost", id=state.registration.id, lease=state.lease_id)
                    state.lease_id, delay = None, 0
                else:
                    await self._flush(state)
                if outage:
                    log.info("etcd_reachable", endpoint=self.client.endpoint)
                    outage = False
            except DiscoveryUnavailableError as exc:
                if not outage:  # once per outage, not every retry
                    log.warning("etcd_unreachable", id=state.registration.id, error=str(exc))
                    outage = True
                delay = min(interval, self.retry_interval)
            except EtcdError as exc:
                if exc.code == GRPC_NOT_FOUND:  # the lease vanished under a put
                    state.lease_id, delay = None, 0
                else:
                    log.error("keepalive_failed", id=state.registration.id, error=str(exc))
                    delay = min(interval, self.retry_interval)
            await asyncio.sleep(delay)

    # -- router side ---------------------------------------------------------------------------

    async def list(self, service: str) -> builtins.list[ServiceInfo]:
        """Read every live instance of ``service`` from etcd, sorted by id."""
        self._check_open()
        kvs, _ = await self.client.range_prefix(self._service_prefix(service))
        found = [info for kv in kvs if (info := _decode(kv)) is not None]
        return sorted(found, key=lambda r: r.id)

    async def watch(self, service: str) -> AsyncIterator[DiscoveryEvent]:
        """Live instances as ``added`` events, then each change exactly once, across outages."""
        self._check_open()
        queue: asyncio.Queue[DiscoveryEvent | None] = asyncio.Queue()
        # A separate task reads etcd so that close() can end a watch whose consumer is waiting.
        pump = asyncio.get_running_loop().create_task(
            self._pump(service, queue), name=f"etcd-watch-{service}"
        )
        self._watches[pump] = queue
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._watches.pop(pump, None)
            await _cancel(pump)

    async def _pump(self, service: str, queue: asyncio.Queue[DiscoveryEvent | None]) -> None:
        prefix = self._service_prefix(service)
        known: _Known = {}
        revision: int | None = None  # last revision fully delivered; None: read a snapshot
        outage = False
        while True:
            heard = False  # whether this stream brought anything before going quiet
            try:
                if revision is None:
                    kvs, revision = await self.client.range_prefix(prefix)
                    current: _Known = {
                        info.id: (info, kv.mod_revision)
                        for kv in kvs
                        if (info := _decode(kv)) is not None
                    }
                    for event in _diff(service, known, current):
                        queue.put_nowait(event)
                    known = current
                stream = self.client.watch(
                    prefix, revision + 1, idle_timeout=self.watch_idle_timeout
                )
                async for response in stream:
                    heard = True
                    if outage:
                        log.info("watch_resumed", service=service, revision=revision)
                        outage = False
                    if response.compact_revision or response.canceled:
                        # History we need was compacted away: resynchronise from a snapshot.
                        log.warning("watch_compacted", service=service, revision=revision)
                        revision = None
                        break
                    for raw in response.events:
                        change = self._apply(service, known, raw)
                        if change is not None:
                            queue.put_nowait(change)
                        revision = max(revision, raw.kv.mod_revision)
                delay = 0.05  # stream ended cleanly (etcd shutting down): reconnect soon
            except DiscoveryError as exc:
                if isinstance(exc, WatchIdleError) and heard:
                    # Quiet after etcd answered (it confirms every new watch at once): reopen
                    # it at once, without calling that an outage.
                    log.debug("watch_idle_reopened", service=service, revision=revision)
                    delay = 0.0
                else:
                    if not outage:
                        log.warning("watch_interrupted", service=service, error=str(exc))
                        outage = True
                    delay = self.retry_interval
            await asyncio.sleep(delay)

    def _apply(self, service: str, known: _Known, raw: WatchEvent) -> DiscoveryEvent | None:
        registration_id = raw.kv.key[len(self._service_prefix(service)) :]
        previous = known.get(registration_id)
        if raw.type == "DELETE":
            known.pop(registration_id, None)
            if previous is None:
                return None  # never seen (or already reported removed)
            return DiscoveryEvent(DiscoveryEventKind.REMOVED, service, registration_id, previous[0])
        if previous is not None and raw.kv.mod_revision <= previous[1]:
            return None  # replayed after a resume
        info = _decode(raw.kv)
        if info is None:
            return None
        known[registration_id] = (info, raw.kv.mod_revision)
        if previous is None:
            return DiscoveryEvent(DiscoveryEventKind.ADDED, service, registration_id, info)
        if previous[0] == info:
            return None  # re-published unchanged (e.g. after an outage)
        return DiscoveryEvent(DiscoveryEventKind.UPDATED, service, registration_id, info)

    def _service_prefix(self, service: str) -> str:
        return f"{self.prefix}{service}/"

    # -- lifecycle -----------------------------------------------------------------------------

    async def close(self, *, revoke: bool = True) -> None:
        """End watches and keep-alives and close the client.

        With ``revoke`` (the default) every registration is revoked now; ``revoke=False`` leaves
        the leases to expire after their TTL, as if the process had died.
        """
        if self._closed:
            return
        self._closed = True
        for registration_id in builtins.list(self._leases):
            if revoke:
                await self.deregister(registration_id)
            else:
                await _cancel(self._leases.pop(registration_id).keeper)
        for pump, queue in builtins.list(self._watches.items()):
            await _cancel(pump)
            queue.put_nowait(None)
        await self.client.close()

    def _check_open(self) -> None:
        if self._closed:
            raise DiscoveryClosedError("this EtcdDiscovery is closed")


def _diff(service: str, known: _Known, current: _Known) -> builtins.list[DiscoveryEvent]:
    events = [
        DiscoveryEvent(DiscoveryEventKind.REMOVED, service, rid, info)
        for rid, (info, _) in known.items()
        if rid not in current
    ]
    for rid, (info, _) in sorted(current.items()):
        if rid not in known:
            events.append(DiscoveryEvent(DiscoveryEventKind.ADDED, service, rid, info))
        elif known[rid][0] != info:
            events.append(DiscoveryEvent(DiscoveryEventKind.UPDATED, service, rid, info))
    return events


def _encode(registration: ServiceRegistration) -> bytes:
    return registration.model_dump_json().encode()


def _decode(kv: KeyValue) -> ServiceInfo | None:
    try:
        return ServiceRegistration.model_validate_json(kv.value)
    except pydantic.ValidationError as exc:
        # Someone else wrote under our prefix; skip it rather than break every router.
        log.warning("invalid_registration", key=kv.key, error=str(exc).splitlines()[0])
        return None


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        # Swallow the cancellation we caused, but not one aimed at the caller itself.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
