"""The composition root: the one place the daemon's default collaborators are built.

memory (host or CUDA resource -> pool -> statistics) + tracker, model repository + loader,
engine factory, health checker, discovery registrar (lease of ``discovery_ttl``), event bus
-> `Orchestrator` -> app.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
import torch
from aiohttp import web
from inferno_discovery import LoadSignals, Registrar, ServiceRegistration, discovery_from_url
from inferno_health import GpuHealthProvider, HealthChecker, HealthProvider, MemoryPressureProvider
from inferno_inference.config import EngineConfig
from inferno_inference.factory import build_async_engine
from inferno_inference.protocols import InferenceEngine
from inferno_memory import (
    HostMemoryResource,
    MemoryResource,
    MemoryTracker,
    PoolMemoryResource,
    StatisticsAdaptor,
)
from inferno_models import LlamaLoader, LoadedModel, apply_lora, load_lora
from inferno_models.repository import ModelRepository

from inferno_backend.adapters import (
    health_change_listener,
    memory_alert_listener,
    registered_listener,
)
from inferno_backend.api import build_app
from inferno_backend.config import ServeConfig
from inferno_backend.events import EventBus
from inferno_backend.orchestrator import Orchestrator
from inferno_backend.protocols import ServableModel, StatisticsResource
from inferno_backend.registration import RegistrationHandle

__all__ = [
    "Daemon",
    "RepositoryModelSource",
    "build_daemon",
    "describe_registration",
    "engine_config_for",
]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RepositoryModelSource:
    """Models from an ``inferno_models.ModelRepository``, read by ``LlamaLoader``."""

    def __init__(
        self, repository: ModelRepository, loader: LlamaLoader, *, dtype: str, device: str
    ) -> None:
        self.repository = repository
        self.loader = loader
        self.dtype = _DTYPES[dtype]
        self.device = device

    def available(self) -> Sequence[str]:
        """Every name and alias in the repository."""
        names: list[str] = []
        for entry in self.repository.list():
            names += [entry.name, *entry.aliases]
        return names

    def load(self, name: str, *, lora: str | None = None) -> ServableModel:
        """Resolve ``name`` (or a path) and load it, merging the adapter at ``lora`` if any."""
        entry = self.repository.resolve(name)
        adapter = load_lora(lora) if lora is not None else None  # a bad adapter fails first
        model = self.loader.load(entry.path, dtype=self.dtype, device=self.device, name=entry.name)
        # The model was read for this load alone: merging into its own weights saves a copy.
        return model if adapter is None else apply_lora(model, adapter, in_place=True)


@dataclass(slots=True)
class Daemon:
    """Everything `inferno serve` runs: the orchestrator and its HTTP app.

    ``advertised_url`` is set by the server once the socket is bound (the port may be 0 in the
    config); ``registrar`` publishes that address in discovery once the orchestrator is ready.
    """

    orchestrator: Orchestrator
    app: web.Application
    registrar: Registrar | None = None
    advertised_url: str | None = None
    service_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


def engine_config_for(config: ServeConfig) -> EngineConfig:
    """The engine's knobs as ``config`` sets them."""
    return EngineConfig(
        kv_cache_bytes=config.kv_cache_bytes,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=max(512, config.max_num_seqs),
        max_model_len=config.max_model_len,
        dtype=config.dtype,
        device=config.device,
        weight_quantization=config.weight_quantization,
        cpu_native_decode=config.native_decode,
        kernel_backend=config.kernel_backend,
        speculative_tokens=config.speculative_tokens,
    )


def _cuda_index(device: str) -> int:
    """The device index of a torch device string: ``cuda`` is 0, ``cuda:1`` is 1."""
    return int(device.partition(":")[2] or 0)


def _memory(config: ServeConfig) -> StatisticsAdaptor:
    upstream: MemoryResource
    if config.device.startswith("cuda"):
        from inferno_memory import BackendUnavailableError, CudaMemoryResource

        index = _cuda_index(config.device)
        try:
            upstream = CudaMemoryResource(index)
        except BackendUnavailableError as exc:
            # No CuPy: torch's caching allocator serves the pool instead, same seam.
            from inferno_inference.torch_memory import TorchCudaMemoryResource

            structlog.get_logger(__name__).info("cuda memory through torch", reason=str(exc))
            upstream = TorchCudaMemoryResource(index)
    else:
        upstream = HostMemoryResource()
    # The pool keeps freed KV blocks for the next model; statistics see what engines hold.
    return StatisticsAdaptor(PoolMemoryResource(upstream), limit=config.memory_limit_bytes)


def describe_registration(daemon: Daemon, config: ServeConfig) -> ServiceRegistration:
    """The daemon's registration as of now: where it listens, what it serves, how busy it is."""
    status = daemon.orchestrator.status()
    models_status = status["models"].values()
    load = LoadSignals(
        queue_depth=status["waiting"],
        running_requests=status["running"],
        kv_usage=min(1.0, max((m["kv_cache_usage"] for m in models_status), default=0.0)),
        free_slots=sum(m["free_slots"] for m in models_status),
    )
    host = config.advertise_host or (
        socket.gethostname() if config.host in ("0.0.0.0", "::") else config.host
    )
    return ServiceRegistration(
        id=daemon.service_id,
        service=config.service_name,
        address=daemon.advertised_url or f"http://{host}:{config.port}",
        models=daemon.orchestrator.available_models,
        version="0.1.0",
        load=load,
    )


def health_providers(config: ServeConfig, memory: StatisticsAdaptor) -> list[HealthProvider]:
    """Memory pressure of the pool always; on CUDA also the GPU's NVML health (temperature,
    ECC errors, throttling, a lost GPU) for the device the model runs on. Without
    nvidia-ml-py the GPU provider reports no telemetry and stays healthy: torch already
    reached the device."""
    providers: list[HealthProvider] = [
        MemoryPressureProvider(lambda: (memory.stats().current_bytes, memory.limit_bytes))
    ]
    if config.device.startswith("cuda"):
        index = nvml_index(_cuda_index(config.device), os.environ.get("CUDA_VISIBLE_DEVICES"))
        providers.append(GpuHealthProvider(devices=None if index is None else [index]))
    return providers


def nvml_index(cuda_index: int, visible_devices: str | None) -> int | None:
    """The NVML index of CUDA device ``cuda_index``: NVML numbers every GPU in the machine,
    CUDA only those ``CUDA_VISIBLE_DEVICES`` lists, renumbered from 0. ``None`` when the list
    names devices by UUID or MIG instance (then the provider watches every GPU)."""
    if not visible_devices:
        return cuda_index
    entries = [e.strip() for e in visible_devices.split(",") if e.strip()]
    if cuda_index < len(entries) and entries[cuda_index].isdigit():
        return int(entries[cuda_index])
    return None


def build_daemon(config: ServeConfig) -> Daemon:
    """Build every default collaborator for ``config`` and wire them into a `Daemon`."""
    bus = EventBus()
    memory = _memory(config)
    tracker = MemoryTracker(
        memory, thresholds=(0.8, 0.95), hysteresis=0.05, on_alert=memory_alert_listener(bus)
    )
    health = HealthChecker(
        health_providers(config, memory),
        interval=5.0,
        timeout=2.0,
        on_change=[health_change_listener(bus)],
    )
    engine_config = engine_config_for(config)

    def engine_factory(model: ServableModel, resource: StatisticsResource) -> InferenceEngine:
        if not isinstance(model, LoadedModel):
            raise TypeError(f"the engine needs an inferno_models.LoadedModel, got {model!r}")
        return build_async_engine(model, engine_config, resource)

    models = RepositoryModelSource(
        ModelRepository(), LlamaLoader(), dtype=config.dtype, device=config.device
    )
    holder: list[Daemon] = []
    registrar = Registrar(
        discovery_from_url(config.discovery),
        describe=lambda: describe_registration(holder[0], config),
        ttl=config.discovery_ttl,
        on_registered=[registered_listener(bus)],
    )

    async def revoke() -> None:
        await registrar.stop()
        await registrar.provider.close()

    orchestrator = Orchestrator(
        config,
        models=models,
        engine_factory=engine_factory,
        memory=memory,
        health=health,
        bus=bus,
        registration=RegistrationHandle(
            registrar.start, revoke, service_id="pending", refresh=registrar.refresh
        ),
        tracker=tracker,
    )
    daemon = Daemon(orchestrator, build_app(orchestrator, manage_lifecycle=False), registrar)
    if orchestrator.registration is not None:
        orchestrator.registration.service_id = daemon.service_id
    holder.append(daemon)
    return daemon
