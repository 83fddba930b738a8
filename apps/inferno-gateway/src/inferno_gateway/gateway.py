"""`Gateway`: the table, its registry watch, the forwarder and health, started and stopped
together; `build_gateway` is the composition root that builds the defaults from a config."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

import aiohttp
import structlog
from inferno_discovery import DiscoveryProvider, discovery_from_url
from inferno_health import CallableProvider, HealthChecker, HealthReport, Probe

from inferno_gateway.config import GatewayConfig
from inferno_gateway.metrics import GatewayMetrics
from inferno_gateway.policies import RoutingPolicy, build_policy
from inferno_gateway.proxy import Forwarder
from inferno_gateway.table import WorkerTable, follow_registry

__all__ = ["Gateway", "build_gateway"]

log = structlog.get_logger(__name__)


class Gateway:
    """Routes OpenAI requests to the workers that ``discovery`` lists under ``config.service``.

    Collaborators come in ready-made (tests pass an `InMemoryDiscovery` shared with fake
    workers, or their own policy); `build_gateway` builds the defaults. `start` begins watching
    the registry and opens the client session; `stop` ends both and closes ``discovery`` when
    ``owns_discovery``. ``forwarder`` exists only between `start` and `stop`.
    """

    def __init__(
        self,
        config: GatewayConfig,
        discovery: DiscoveryProvider,
        policy: RoutingPolicy,
        *,
        metrics: GatewayMetrics | None = None,
        table: WorkerTable | None = None,
        owns_discovery: bool = False,
    ) -> None:
        self.config = config
        self.discovery = discovery
        self.policy = policy
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self.table = table if table is not None else WorkerTable()
        self.table.add_listener(self.metrics.observe_table)
        self.owns_discovery = owns_discovery
        self.health = HealthChecker(
            [
                CallableProvider("workers", self._workers_health, probes=[Probe.READINESS]),
                CallableProvider("registry_watch", self._watch_health, probes=[Probe.LIVENESS]),
            ],
            interval=5.0,
            timeout=1.0,
        )
        self._forwarder: Forwarder | None = None
        self._session: aiohttp.ClientSession | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def forwarder(self) -> Forwarder:
        """The forwarder; raises if the gateway is not started."""
        if self._forwarder is None:
            raise RuntimeError("the gateway is not started; call start() first")
        return self._forwarder

    async def start(self) -> None:
        """Open the client session and start following the registry (idempotent)."""
        if self._watch is not None:
            return
        # No pool cap: the gateway must never queue requests the workers could take, and
        # keeping connections alive is what makes its per-request cost small.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        cfg = self.config
        self._forwarder = Forwarder(
            self.table,
            self.policy,
            self.metrics,
            self._session,
            max_attempts=cfg.max_attempts,
            cooldown_s=cfg.unreachable_cooldown_s,
            affinity_chars=cfg.prefix_chars,
            connect_timeout_s=cfg.connect_timeout_s,
            read_timeout_s=cfg.read_timeout_s,
        )
        self._watch = asyncio.get_running_loop().create_task(
            follow_registry(self.discovery, cfg.service, self.table),
            name=f"gateway-watch-{cfg.service}",
        )
        self.health.start()
        log.info("gateway_started", service=cfg.service, policy=self.policy.name)

    async def stop(self) -> None:
        """Stop watching, close the session (and the discovery provider when owned)."""
        if self._watch is None:
            return
        await self.health.stop()
        self._watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch
        self._watch = None
        if self._session is not None:
            await self._session.close()
        self._session = self._forwarder = None
        if self.owns_discovery:
            await self.discovery.close()
        log.info("gateway_stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _workers_health(self) -> HealthReport:
        ready = len(self.table.ready_workers)
        data = {"known": len(self.table), "ready": ready}
        if ready == 0:
            return HealthReport.unhealthy("no ready worker is registered", data)
        return HealthReport.healthy(data=data)

    def _watch_health(self) -> HealthReport:
        if self._watch is not None and self._watch.done():
            return HealthReport.unhealthy("the registry watch stopped")
        return HealthReport.healthy()


def build_gateway(config: GatewayConfig) -> Gateway:
    """The default gateway for ``config``: discovery from its URL, its policy, fresh metrics."""
    discovery = discovery_from_url(config.discovery)
    policy = build_policy(config.policy, epsilon=config.load_epsilon, slack=config.load_slack)
    return Gateway(config, discovery, policy, owns_discovery=True)
