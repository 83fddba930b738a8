"""The orchestrator: the daemon's lifecycle, request admission and load reporting.

start: load the model -> build its engine -> warm up -> readiness open -> register in discovery.
stop (SIGTERM): readiness closed -> registration revoked -> no new requests -> drain in-flight
requests (bounded by ``drain_timeout_s``) -> engines shut down -> memory statistics checked to
have come back to what they were before each model was loaded.

Loading and unloading a model (engine, warm-up, memory check) lives in `inferno_backend.serving`
and the discovery registration in `inferno_backend.registration`; the orchestrator decides when.
Every collaborator comes in through the constructor; `inferno_backend.composition` builds the
defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from inferno_health import CallableProvider, HealthChecker, HealthReport, Probe
from inferno_inference import EngineStats

from inferno_backend.config import ServeConfig
from inferno_backend.events import EngineFailed, EventBus, ServiceDeregistered
from inferno_backend.metrics import ModelSnapshot
from inferno_backend.protocols import EngineFactory, ModelSource, StatisticsResource
from inferno_backend.registration import RegistrationHandle
from inferno_backend.serving import ModelNotServedError, ServedModel, ServedModels, wait_idle

__all__ = [
    "DaemonState",
    "ModelNotServedError",
    "NotAdmittingError",
    "Orchestrator",
    "OverloadedError",
    "RegistrationHandle",
    "ServedModel",
    "ShutdownReport",
]

log = structlog.get_logger(__name__)


class DaemonState(enum.StrEnum):
    """Where the daemon is in its lifecycle."""

    CREATED = "created"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class NotAdmittingError(RuntimeError):
    """The daemon (or this model) is not taking new requests right now (the API answers 503)."""


class OverloadedError(NotAdmittingError):
    """The model already holds as many generation requests as it may (``max_num_seqs`` running
    and ``max_queued_requests`` waiting); the API answers 503 ``server_overloaded``."""


@dataclass(frozen=True, slots=True)
class ShutdownReport:
    """What `Orchestrator.stop` found: whether everything drained and memory came back."""

    drained: bool
    aborted_requests: int
    leaked_bytes: int
    seconds: float

    @property
    def memory_returned(self) -> bool:
        """Every byte the models took from the memory resource was given back."""
        return self.leaked_bytes == 0


class Orchestrator:
    """Serves models through engines and runs the daemon's lifecycle.

    Args:
        config: the daemon configuration.
        models: names and loader of models (the model repository).
        engine_factory: builds an engine for a loaded model from the memory resource.
        memory: where engines take their KV cache; its statistics prove memory came back.
        health: the health checker whose readiness gate the orchestrator opens and closes.
        bus: the event bus lifecycle events are published on.
        registration: the discovery registration to start when ready (None: no discovery).
        tracker: the memory-pressure tracker; started and stopped with the daemon if it has
            ``start``/``stop``.
    """

    def __init__(
        self,
        config: ServeConfig,
        *,
        models: ModelSource,
        engine_factory: EngineFactory,
        memory: StatisticsResource,
        health: HealthChecker,
        bus: EventBus,
        registration: RegistrationHandle | None = None,
        tracker: Any = None,
    ) -> None:
        self.config = config
        self.models = models
        self.engine_factory = engine_factory
        self.memory = memory
        self.health = health
        self.bus = bus
        self.registration = registration
        self.tracker = tracker
        self.state = DaemonState.CREATED
        self._models = ServedModels(
            config, models=models, engine_factory=engine_factory, memory=memory, bus=bus
        )
        # The same dict as the model manager's, read by the queries and probes below.
        self._served = self._models.by_name
        self._idle = asyncio.Event()
        self._idle.set()
        self._inflight = 0
        # The daemon's own health: started or not, engines answering, something to serve.
        health.add_provider(CallableProvider("daemon", self._check_started, probes={Probe.STARTUP}))
        health.add_provider(
            CallableProvider("engines", self._check_engines, probes={Probe.LIVENESS})
        )
        health.add_provider(
            CallableProvider("models", self._check_models, probes={Probe.READINESS})
        )

    # -- queries -------------------------------------------------------------------------------

    @property
    def served(self) -> dict[str, ServedModel]:
        """Models currently served, by public name."""
        return dict(self._served)

    @property
    def inflight(self) -> int:
        """Requests admitted and not yet finished."""
        return self._inflight

    @property
    def available_models(self) -> tuple[str, ...]:
        """Names of the served models that take requests (not being unloaded), sorted: what
        the discovery registration advertises."""
        return tuple(sorted(n for n, s in self._served.items() if not s.unloading))

    def get(self, name: str) -> ServedModel:
        """The served model called ``name``.

        Raises:
            ModelNotServedError: no such model is loaded.
        """
        return self._models.get(name)

    def snapshots(self) -> list[ModelSnapshot]:
        """Per-model load and memory snapshots for metrics (no prompts)."""
        mem = self.memory.stats()
        return [
            ModelSnapshot(
                model=s.name,
                engine=s.engine.stats(),
                memory_current_bytes=mem.current_bytes,
                memory_peak_bytes=mem.peak_bytes,
                memory_reserved_bytes=mem.reserved_bytes,
            )
            for s in self._served.values()
        ]

    def status(self) -> dict[str, Any]:
        """Load of the daemon, safe to expose: queue, running, KV usage, free slots."""
        models = {}
        limit = self.config.max_num_seqs + self.config.max_queued_requests
        for s in self._served.values():
            st: EngineStats = s.engine.stats()
            models[s.name] = {
                # Generation requests admitted, and how many may be before one more gets 503.
                "admitted_requests": s.generating,
                "admitted_limit": limit,
                "running": st.running,
                "waiting": st.waiting,
                "kv_cache_usage": round(st.kv_usage, 6),
                "kv_blocks_total": st.kv_blocks_total,
                "kv_blocks_free": st.kv_blocks_total - st.kv_blocks_used,
                "free_slots": st.free_slots,
                "prefix_cache_hit_rate": round(st.prefix_hit_rate, 6),
                "spec_decode_acceptance_rate": round(st.draft_acceptance_rate, 6),
                "tokens_per_second": round(st.tokens_per_second, 3),
            }
        mem = self.memory.stats()
        return {
            "state": self.state.value,
            "accepting": self.state is DaemonState.READY,
            "inflight_requests": self._inflight,
            "running": sum(m["running"] for m in models.values()),
            "waiting": sum(m["waiting"] for m in models.values()),
            "models": models,
            "memory": {"current_bytes": mem.current_bytes, "peak_bytes": mem.peak_bytes},
        }

    # -- health providers ----------------------------------------------------------------------

    def _check_started(self) -> HealthReport:
        if self.state in (DaemonState.CREATED, DaemonState.STARTING):
            return HealthReport.unhealthy(f"the daemon is {self.state.value}")
        return HealthReport.healthy(data={"state": self.state.value})

    def _check_engines(self) -> HealthReport:
        for served in list(self._served.values()):
            try:
                served.engine.stats()
            except Exception as exc:
                return HealthReport.unhealthy(f"engine of {served.name!r} failed: {exc}")
        return HealthReport.healthy(data={"engines": len(self._served)})

    def _check_models(self) -> HealthReport:
        if not self._served:
            return HealthReport.unhealthy("no model is loaded")
        return HealthReport.healthy(data={"models": sorted(self._served)})

    # -- admission -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def admit(self, name: str, *, generates: bool = True) -> AsyncIterator[ServedModel]:
        """Hold a slot for one request on model ``name`` for the duration of the block.

        ``generates=False`` (tokenizing) is admitted whatever the load: such a request
        never waits for the engine.

        Raises:
            OverloadedError: the model holds ``max_num_seqs + max_queued_requests`` generation
                requests already.
            NotAdmittingError: the daemon is not ready (starting or draining) or the model is
                being unloaded.
            ModelNotServedError: no such model.
        """
        if self.state is not DaemonState.READY:
            raise NotAdmittingError(f"the server is {self.state.value} and not taking requests")
        served = self.get(name)
        if served.unloading:
            raise NotAdmittingError(f"the model {name!r} is being unloaded")
        limit = self.config.max_num_seqs + self.config.max_queued_requests
        if generates and served.generating >= limit:
            raise OverloadedError(
                f"the model {name!r} is overloaded: {served.generating} requests are running "
                f"or queued (at most {limit}); retry shortly"
            )
        self._inflight += 1
        served.inflight += 1
        served.generating += generates
        self._idle.clear()
        served.idle.clear()
        try:
            yield served
        finally:
            self._inflight -= 1
            served.inflight -= 1
            served.generating -= generates
            if served.inflight == 0:
                served.idle.set()
            if self._inflight == 0:
                self._idle.set()

    def report_engine_failure(self, model: str, error: str, request_id: str | None) -> None:
        """Publish `EngineFailed` for a request whose generation ended in an error."""
        log.error("engine failed a request", model=model, error=error, engine_request=request_id)
        self.bus.publish(EngineFailed(model=model, error=error, request_id=request_id))

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the configured model, warm up, open readiness, then register in discovery."""
        self.bus.bind_loop(asyncio.get_running_loop())
        self.state = DaemonState.STARTING
        self.health.set_ready(False, "starting")
        if self.tracker is not None and hasattr(self.tracker, "start"):
            self.tracker.start()
        await self.load_model(
            self.config.model, served_name=self.config.public_model_name, lora=self.config.lora
        )
        self.state = DaemonState.READY
        await self.health.check()
        self.health.set_ready(True)
        log.info("ready", models=sorted(self._served))
        if self.registration is not None:
            await self.registration.start()

    async def stop(self) -> ShutdownReport:
        """Close readiness, revoke the registration, drain, unload, and check memory."""
        started = time.perf_counter()
        if self.state is DaemonState.STOPPED:
            return ShutdownReport(True, 0, 0, 0.0)
        self.state = DaemonState.DRAINING
        self.health.set_ready(False, "draining")
        if self.registration is not None:
            try:
                await self.registration.stop()
            except Exception:
                log.exception("revoking the discovery registration failed")
            else:
                service_id = self.registration.service_id
                self.bus.publish(ServiceDeregistered(service_id=service_id))
        drained = await wait_idle(self._idle, self.config.drain_timeout_s)
        aborted = self._inflight
        if not drained:
            log.warning("drain timed out; aborting requests", inflight=aborted)
        leaked = 0
        for name in list(self._served):
            leaked += await self._models.unload(name, wait=False)
        if self.tracker is not None and hasattr(self.tracker, "stop"):
            with contextlib.suppress(Exception):
                result = self.tracker.stop()
                if asyncio.iscoroutine(result):
                    await result
        await self.bus.drain()
        self.state = DaemonState.STOPPED
        report = ShutdownReport(drained, aborted, leaked, time.perf_counter() - started)
        log.info(
            "stopped",
            drained=drained,
            aborted_requests=aborted,
            leaked_bytes=leaked,
            seconds=round(report.seconds, 3),
        )
        return report

    # -- models --------------------------------------------------------------------------------

    async def load_model(
        self, name: str, *, served_name: str | None = None, lora: str | None = None
    ) -> ServedModel:
        """Load ``name`` (with the LoRA adapter at ``lora`` merged), build its engine, warm it
        up and start serving it as ``served_name``; once ready, the discovery registration is
        published again with the new model.

        Raises:
            ValueError: a model is already served under that name.
            inferno_models.ModelNotFoundError: unknown model.
        """
        served = await self._models.load(name, served_name=served_name, lora=lora)
        await self._publish_models()
        return served

    async def unload_model(self, name: str) -> int:
        """Stop serving ``name`` after its in-flight requests finish; returns leaked bytes.

        The model leaves the discovery registration as soon as it stops taking requests, before
        the drain, so routers stop sending it work.

        Raises:
            ModelNotServedError: no such model, or it is already being unloaded.
        """
        served = self.get(name)
        if served.unloading:
            raise ModelNotServedError(f"the model {name!r} is already being unloaded")
        served.unloading = True
        await self._publish_models()
        return await self._models.unload(name, wait=True)

    async def _publish_models(self) -> None:
        """Refresh the registration after the served models changed (only while serving:
        start-up registers afterwards, and shutdown has revoked it already)."""
        if self.registration is None or self.state is not DaemonState.READY:
            return
        try:
            await self.registration.refresh()
        except Exception:
            log.exception("refreshing the discovery registration failed")
