"""Config layering and the event bus."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from inferno_backend.adapters import health_change_listener, memory_alert_listener
from inferno_backend.config import ConfigError, load_config
from inferno_backend.events import (
    EventBus,
    HealthStatusChanged,
    InfernoEvent,
    MemoryAlert,
    ModelLoaded,
)
from inferno_memory import MemoryStats


def test_layers_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "inferno.toml"
    path.write_text('port = 9000\nhost = "0.0.0.0"\napi_keys = ["a"]\nmodel = "m1"\n')
    env = {"INFERNO_PORT": "9100", "INFERNO_API_KEYS": "b, c", "INFERNO_WARMUP": "false"}
    config = load_config(path, env=env, overrides={"port": 9200, "model": None})
    assert config.port == 9200
    assert config.host == "0.0.0.0"
    assert config.api_keys == ("b", "c")
    assert config.model == "m1"
    assert config.warmup is False


def test_weight_quantization_reaches_the_engine_config() -> None:
    from inferno_backend.cli import build_parser
    from inferno_backend.commands.serve import _FLAG_FIELDS

    args = build_parser().parse_args(["serve", "--weight-quantization", "int8"])
    overrides = {name: getattr(args, name, None) for name in _FLAG_FIELDS}
    assert load_config(env={}, overrides=overrides).weight_quantization == "int8"
    assert load_config(env={}).weight_quantization == "none"


def test_no_native_decode_reaches_the_engine_config() -> None:
    from inferno_backend.cli import build_parser
    from inferno_backend.commands.serve import _FLAG_FIELDS
    from inferno_backend.composition import engine_config_for

    args = build_parser().parse_args(["serve", "--no-native-decode"])
    overrides = {name: getattr(args, name, None) for name in _FLAG_FIELDS}
    config = load_config(env={}, overrides=overrides)
    assert config.native_decode is False
    assert load_config(env={}).native_decode is True
    assert load_config(env={"INFERNO_NATIVE_DECODE": "false"}).native_decode is False
    assert engine_config_for(config).cpu_native_decode is False


def test_kernel_backend_reaches_the_engine_config() -> None:
    from inferno_backend.cli import build_parser
    from inferno_backend.commands.serve import _FLAG_FIELDS
    from inferno_backend.composition import engine_config_for

    args = build_parser().parse_args(["serve", "--kernel-backend", "torch"])
    overrides = {name: getattr(args, name, None) for name in _FLAG_FIELDS}
    assert engine_config_for(load_config(env={}, overrides=overrides)).kernel_backend == "torch"
    assert engine_config_for(load_config(env={})).kernel_backend == "auto"
    env = {"INFERNO_KERNEL_BACKEND": "triton"}
    assert load_config(env=env).kernel_backend == "triton"
    with pytest.raises(ConfigError, match="kernel_backend"):
        load_config(env={"INFERNO_KERNEL_BACKEND": "cuda"})


def test_serve_table_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "inferno.toml"
    path.write_text("[serve]\nport = 1234\n")
    assert load_config(path, env={}).port == 1234


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"INFERNO_PORT": "70000"}, "port (from INFERNO_PORT)"),
        ({"INFERNO_DTYPE": "int3"}, "dtype (from INFERNO_DTYPE)"),
        (
            {"INFERNO_WEIGHT_QUANTIZATION": "int4"},
            "weight_quantization (from INFERNO_WEIGHT_QUANTIZATION)",
        ),
        ({"INFERNO_DISCOVERY": "zk://x"}, "discovery (from INFERNO_DISCOVERY)"),
    ],
)
def test_errors_name_field_and_source(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_config(env=env)


def test_unknown_file_key_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match=r"prot \(from .*bad.toml\)"):
        load_config(path, env={})


async def test_bus_typed_sync_async_and_isolated() -> None:
    bus = EventBus()
    got: list[str] = []

    def boom(event: InfernoEvent) -> None:
        raise RuntimeError("subscriber bug")

    async def on_async(event: ModelLoaded) -> None:
        await asyncio.sleep(0)
        got.append("async:" + event.name)

    bus.subscribe(InfernoEvent, boom)
    bus.subscribe(ModelLoaded, lambda e: got.append("sync:" + e.name))
    bus.subscribe(ModelLoaded, on_async)
    unsubscribe = bus.subscribe(MemoryAlert, lambda e: got.append("memory"))
    unsubscribe()
    bus.publish(ModelLoaded(name="m", source="m", nbytes=0, load_seconds=0.0))
    bus.publish(MemoryAlert(stats=MemoryStats()))
    await bus.drain()
    assert got == ["sync:m", "async:m"]


async def test_bus_delivers_from_other_threads_on_the_loop() -> None:
    bus = EventBus()
    bus.bind_loop(asyncio.get_running_loop())
    done = asyncio.Event()
    threads: list[bool] = []

    def on_alert(event: MemoryAlert) -> None:
        threads.append(asyncio.get_running_loop() is not None)
        done.set()

    bus.subscribe(MemoryAlert, on_alert)
    await asyncio.to_thread(memory_alert_listener(bus), "stats")
    await asyncio.wait_for(done.wait(), 2)
    assert threads == [True]


async def test_health_adapter_publishes_changes() -> None:
    from inferno_health import HealthChecker

    bus = EventBus()
    seen: list[HealthStatusChanged] = []
    bus.subscribe(HealthStatusChanged, seen.append)
    checker = HealthChecker(on_change=[health_change_listener(bus)])
    await checker.check()
    checker.set_ready(False, "draining")
    assert any(e.probe == "readiness" and e.status == "unhealthy" for e in seen)


def test_cuda_memory_falls_back_to_torch_without_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    import inferno_inference.torch_memory as torch_memory
    from inferno_backend.composition import _memory
    from inferno_backend.config import ServeConfig
    from inferno_memory import BackendUnavailableError, HostMemoryResource

    made: list[int] = []

    class FakeTorchCuda(HostMemoryResource):
        def __init__(self, device: int = 0) -> None:
            super().__init__()
            made.append(device)

    def no_cupy(device: int = 0) -> None:
        raise BackendUnavailableError("CUDA memory needs CuPy")

    monkeypatch.setattr("inferno_memory.CudaMemoryResource", no_cupy)
    monkeypatch.setattr(torch_memory, "TorchCudaMemoryResource", FakeTorchCuda)
    resource = _memory(ServeConfig(device="cuda:1", warmup=False))
    assert made == [1]
    allocation = resource.allocate(1024)  # the pool draws from the torch-backed upstream
    assert resource.stats().current_bytes == 1024
    resource.deallocate(allocation)


def test_a_cuda_daemon_watches_its_gpu_through_nvml() -> None:
    from inferno_backend.composition import health_providers, nvml_index
    from inferno_backend.config import ServeConfig
    from inferno_health import GpuHealthProvider, MemoryPressureProvider
    from inferno_memory import HostMemoryResource, StatisticsAdaptor

    memory = StatisticsAdaptor(HostMemoryResource(), limit=1 << 20)
    cpu = health_providers(ServeConfig(warmup=False), memory)
    assert [type(p) for p in cpu] == [MemoryPressureProvider]
    cuda = health_providers(ServeConfig(warmup=False, device="cuda:0"), memory)
    assert [type(p) for p in cuda] == [MemoryPressureProvider, GpuHealthProvider]
    # CUDA renumbers the devices CUDA_VISIBLE_DEVICES lists; NVML sees them all.
    assert nvml_index(1, None) == 1
    assert nvml_index(1, "") == 1
    assert nvml_index(0, "3,2") == 3
    assert nvml_index(1, " 3, 2 ") == 2
    assert nvml_index(0, "GPU-8f6a2c1e-0000") is None
    assert nvml_index(2, "0,1") is None


def test_speculative_tokens_reach_the_engine_config() -> None:
    from inferno_backend.cli import build_parser
    from inferno_backend.commands.serve import _FLAG_FIELDS
    from inferno_backend.composition import engine_config_for

    args = build_parser().parse_args(["serve", "--speculative-tokens", "4"])
    overrides = {name: getattr(args, name, None) for name in _FLAG_FIELDS}
    assert engine_config_for(load_config(env={}, overrides=overrides)).speculative_tokens == 4
    assert engine_config_for(load_config(env={})).speculative_tokens == 0
    env = {"INFERNO_SPECULATIVE_TOKENS": "6"}
    assert engine_config_for(load_config(env=env)).speculative_tokens == 6
    with pytest.raises(ConfigError, match="speculative_tokens"):
        load_config(env={"INFERNO_SPECULATIVE_TOKENS": "99"})
