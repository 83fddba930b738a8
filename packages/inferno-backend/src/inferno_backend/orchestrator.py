"""The orchestrator: owns the served models and the daemon's lifecycle.

start: load the model -> build its engine -> warm up -> readiness open -> register in discovery.
stop (SIGTERM): readiness closed -> registration revoked -> no new requests -> drain in-flight
requests (bounded by ``drain_timeout_s``) -> engines shut down -> memory statistics checked to
have come back to what they were before each model was loaded.

Every collaborator comes in through the constructor; `inferno_backend.composition` builds the
defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from inferno_health import CallableProvider, HealthChecker, HealthReport, Probe
from inferno_inference import EngineStats, GenerationRequest, InferenceEngine, SamplingParams

from inferno_backend.config import ServeConfig
from inferno_backend.events import (
    EngineFailed,
    EventBus,
    ModelLoaded,
    ModelUnloaded,
    ServiceDeregistered,
)
from inferno_backend.metrics import ModelSnapshot
from inferno_backend.protocols import EngineFactory, ModelSource, ServableModel, StatisticsResource

__all__ = [
    "DaemonState",
    "ModelNotServedError",
    "NotAdmittingError",
    "Orchestrator",
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


class ModelNotServedError(LookupError):
    """The requested model is not loaded (the API answers 404)."""


class NotAdmittingError(RuntimeError):
    """The daemon (or this model) is not taking new requests right now (the API answers 503)."""


@dataclass(slots=True)
class ServedModel:
    """A model with its running engine, as the API sees it."""

    name: str
    model: ServableModel
    engine: InferenceEngine
    max_model_len: int
    created: int
    memory_baseline: int | None = None
    inflight: int = 0
    unloading: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)


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


class RegistrationHandle:
    """How the orchestrator starts and revokes its discovery registration.

    Built by the composition root around an ``inferno_discovery`` registrar; ``start`` is called
    once the daemon is ready and ``stop`` first thing on shutdown (revoking the lease).
    """

    def __init__(
        self,
        start: Callable[[], Any],
        stop: Callable[[], Any],
        service_id: str,
    ) -> None:
        self._start = start
        self._stop = stop
        self.service_id = service_id

    async def start(self) -> None:
        """Register (and keep the registration alive)."""
        result = self._start()
        if asyncio.iscoroutine(result):
            await result

    async def stop(self) -> None:
        """Revoke the registration."""
        result = self._stop()
        if asyncio.iscoroutine(result):
            await result


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
        self._served: dict[str, ServedModel] = {}
        self._load_lock = asyncio.Lock()
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

    def get(self, name: str) -> ServedModel:
        """The served model called ``name``.

        Raises:
            ModelNotServedError: no such model is loaded.
        """
        served = self._served.get(name)
        if served is None:
            known = ", ".join(sorted(self._served)) or "none"
            raise ModelNotServedError(f"the model {name!r} does not exist (served: {known})")
        return served

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
        for s in self._served.values():
            st: EngineStats = s.engine.stats()
            models[s.name] = {
                "running": st.running,
                "waiting": st.waiting,
                "kv_cache_usage": round(st.kv_usage, 6),
                "kv_blocks_total": st.kv_blocks_total,
                "kv_blocks_free": st.kv_blocks_total - st.kv_blocks_used,
                "free_slots": st.free_slots,
                "prefix_cache_hit_rate": round(st.prefix_hit_rate, 6),
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
    async def admit(self, name: str) -> AsyncIterator[ServedModel]:
        """Hold a slot for one request on model ``name`` for the duration of the block.

        Raises:
            NotAdmittingError: the daemon is not ready (starting or draining) or the model is
                being unloaded.
            ModelNotServedError: no such model.
        """
        if self.state is not DaemonState.READY:
            raise NotAdmittingError(f"the server is {self.state.value} and not taking requests")
        served = self.get(name)
        if served.unloading:
            raise NotAdmittingError(f"the model {name!r} is being unloaded")
        self._inflight += 1
        served.inflight += 1
        self._idle.clear()
        served.idle.clear()
        try:
            yield served
        finally:
            self._inflight -= 1
            served.inflight -= 1
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
        await self.load_model(self.config.model, served_name=self.config.public_model_name)
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
        drained = await self._wait_idle(self._idle, self.config.drain_timeout_s)
        aborted = self._inflight
        if not drained:
            log.warning("drain timed out; aborting requests", inflight=aborted)
        leaked = 0
        for name in list(self._served):
            leaked += await self._unload(name, wait=False)
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

    async def load_model(self, name: str, *, served_name: str | None = None) -> ServedModel:
        """Load ``name``, build its engine, warm it up and start serving it as ``served_name``.

        Raises:
            ValueError: a model is already served under that name.
            inferno_models.ModelNotFoundError: unknown model.
        """
        public = served_name or name
        async with self._load_lock:
            if public in self._served:
                raise ValueError(f"a model named {public!r} is already loaded")
            started = time.perf_counter()
            model = await asyncio.to_thread(self.models.load, name)
            baseline = self.memory.stats().current_bytes
            try:
                engine = await asyncio.to_thread(self.engine_factory, model, self.memory)
            except Exception as exc:
                self.bus.publish(EngineFailed(model=public, error=str(exc)))
                raise
            inner = getattr(engine, "engine", None)  # AsyncEngine wraps an LLMEngine
            max_len = int(
                getattr(engine, "max_model_len", None)
                or getattr(inner, "max_model_len", None)
                or self.config.max_model_len
                or model.config.max_position_embeddings
            )
            served = ServedModel(public, model, engine, max_len, int(time.time()), baseline)
            served.idle.set()
            if self.config.warmup:
                await self._warm_up(served)
            self._served[public] = served
        seconds = time.perf_counter() - started
        log.info("model loaded", model=public, seconds=round(seconds, 3), nbytes=model.nbytes())
        self.bus.publish(
            ModelLoaded(name=public, source=name, nbytes=model.nbytes(), load_seconds=seconds)
        )
        return served

    async def unload_model(self, name: str) -> int:
        """Stop serving ``name`` after its in-flight requests finish; returns leaked bytes.

        Raises:
            ModelNotServedError: no such model.
        """
        self.get(name)
        return await self._unload(name, wait=True)

    async def _unload(self, name: str, *, wait: bool) -> int:
        served = self._served[name]
        served.unloading = True
        if wait and not await self._wait_idle(served.idle, self.config.drain_timeout_s):
            log.warning("unload: drain timed out; aborting", model=name, inflight=served.inflight)
        await served.engine.shutdown()
        del self._served[name]
        leaked = 0
        if served.memory_baseline is not None:
            leaked = max(0, self.memory.stats().current_bytes - served.memory_baseline)
        if leaked:
            log.error(
                "memory did not come back after unload",
                model=name,
                leaked_bytes=leaked,
                stats=self.memory.stats().describe(),
            )
        else:
            log.info("model unloaded; its memory came back", model=name)
        self.bus.publish(ModelUnloaded(name=name, leaked_bytes=leaked))
        return leaked

    async def _warm_up(self, served: ServedModel) -> None:
        """One short generation so the first client does not pay for lazy initialisation."""
        ids = served.model.tokenizer.encode("Hello", add_special_tokens=True) or [0]
        request = GenerationRequest(
            request_id=f"warmup-{uuid.uuid4().hex[:8]}",
            prompt_token_ids=tuple(ids),
            sampling=SamplingParams(max_tokens=2, temperature=0.0),
        )
        started = time.perf_counter()
        async for _ in served.engine.generate(request):
            pass
        log.info("warm-up done", model=served.name, seconds=round(time.perf_counter() - started, 3))

    @staticmethod
    async def _wait_idle(event: asyncio.Event, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            return False
        return True
