"""The models the daemon serves: load one (engine, warm-up), drain and unload one, and check
through the memory statistics that an unloaded model gave back everything it took.

`ServedModels` holds no lifecycle of its own; the orchestrator decides when to load and unload
(start-up, admin routes, shutdown) and when requests are admitted.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from dataclasses import dataclass, field

import structlog
from inferno_inference import GenerationRequest, InferenceEngine, SamplingParams
from inferno_models.generation import GenerationDefaults

from inferno_backend.config import ServeConfig
from inferno_backend.events import EngineFailed, EventBus, ModelLoaded, ModelUnloaded
from inferno_backend.protocols import EngineFactory, ModelSource, ServableModel, StatisticsResource

__all__ = ["ModelNotServedError", "ServedModel", "ServedModels", "wait_idle"]

log = structlog.get_logger("inferno_backend.orchestrator")


class ModelNotServedError(LookupError):
    """The requested model is not loaded (the API answers 404)."""


@dataclass(slots=True)
class ServedModel:
    """A model with its running engine, as the API sees it."""

    name: str
    model: ServableModel
    engine: InferenceEngine
    max_model_len: int
    created: int
    memory_baseline: int | None = None
    #: What fills the sampling fields a request leaves out (the model's and the daemon's).
    sampling_defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    #: The LoRA adapter merged into the model (its path), if any.
    lora: str | None = None
    inflight: int = 0
    #: Admitted requests that generate (or embed): the ones ``max_queued_requests`` bounds.
    generating: int = 0
    unloading: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)


async def wait_idle(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; whether it was set in time."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


class ServedModels:
    """The served models by public name, with how to load and unload them.

    Args:
        config: ``warmup``, ``max_model_len`` and ``drain_timeout_s`` are read from it.
        models: names and loader of models.
        engine_factory: builds an engine for a loaded model from ``memory``.
        memory: where engines take their KV cache; its statistics prove memory came back.
        bus: where `ModelLoaded`, `ModelUnloaded` and `EngineFailed` are published.
    """

    def __init__(
        self,
        config: ServeConfig,
        *,
        models: ModelSource,
        engine_factory: EngineFactory,
        memory: StatisticsResource,
        bus: EventBus,
    ) -> None:
        self.config = config
        self.models = models
        self.engine_factory = engine_factory
        self.memory = memory
        self.bus = bus
        self.by_name: dict[str, ServedModel] = {}
        self._load_lock = asyncio.Lock()

    def get(self, name: str) -> ServedModel:
        """The served model called ``name``.

        Raises:
            ModelNotServedError: no such model is loaded.
        """
        served = self.by_name.get(name)
        if served is None:
            known = ", ".join(sorted(self.by_name)) or "none"
            raise ModelNotServedError(f"the model {name!r} does not exist (served: {known})")
        return served

    async def load(
        self, name: str, *, served_name: str | None = None, lora: str | None = None
    ) -> ServedModel:
        """Load ``name`` (with the LoRA adapter at ``lora`` merged), build its engine, warm it
        up and start serving it as ``served_name``.

        Raises:
            ValueError: a model is already served under that name.
            inferno_models.ModelNotFoundError: unknown model.
        """
        public = served_name or name
        async with self._load_lock:
            if public in self.by_name:
                raise ValueError(f"a model named {public!r} is already loaded")
            started = time.perf_counter()
            model = await asyncio.to_thread(functools.partial(self.models.load, name, lora=lora))
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
            defaults = model.generation if self.config.model_sampling_defaults else None
            sampling = (defaults or GenerationDefaults()).merged(
                self.config.daemon_sampling_defaults
            )
            served = ServedModel(
                public, model, engine, max_len, int(time.time()), baseline, sampling, lora=lora
            )
            served.idle.set()
            if self.config.warmup:
                await self._warm_up(served)
            self.by_name[public] = served
        seconds = time.perf_counter() - started
        log.info(
            "model loaded",
            model=public,
            seconds=round(seconds, 3),
            nbytes=model.nbytes(),
            sampling_defaults=served.sampling_defaults.to_dict(),
        )
        self.bus.publish(
            ModelLoaded(
                name=public, source=name, nbytes=model.nbytes(), load_seconds=seconds, lora=lora
            )
        )
        return served

    async def unload(self, name: str, *, wait: bool) -> int:
        """Stop serving ``name``: refuse new requests, let in-flight ones finish when ``wait``
        (bounded by ``drain_timeout_s``), shut its engine down; returns the bytes it leaked."""
        served = self.by_name[name]
        served.unloading = True
        if wait and not await wait_idle(served.idle, self.config.drain_timeout_s):
            log.warning("unload: drain timed out; aborting", model=name, inflight=served.inflight)
        await served.engine.shutdown()
        del self.by_name[name]
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
