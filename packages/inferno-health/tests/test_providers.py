"""Memory-pressure and GPU (fake NVML) providers."""

from __future__ import annotations

import json
import sys

import pytest
from inferno_health import (
    GpuHealthProvider,
    HealthChecker,
    HealthProvider,
    HealthStatus,
    MemoryPressureProvider,
    MemoryUsage,
    Probe,
)
from inferno_health.testing import FakeGpu, FakeNvml

H, D, U = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY
GiB = 2**30


# -- memory pressure ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("used", "status"),
    [(0, H), (90, H), (91, D), (98, D), (99, U), (100, U)],
)
async def test_memory_pressure_thresholds(used: int, status: HealthStatus) -> None:
    provider = MemoryPressureProvider(lambda: MemoryUsage(used, 100))
    report = await provider.check()
    assert report.status is status
    assert report.data["used_bytes"] == used
    assert report.data["used_fraction"] == used / 100
    if status is not H:
        assert f"{used}.0% used ({used} of 100 bytes)" in (report.reason or "")


async def test_memory_pressure_without_limit_is_healthy() -> None:
    report = await MemoryPressureProvider(lambda: (5 * GiB, None)).check()
    assert report.status is H
    assert report.reason == "no memory limit"
    assert report.data == {"used_bytes": 5 * GiB, "limit_bytes": None}


async def test_memory_pressure_affects_readiness_only_by_default() -> None:
    provider = MemoryPressureProvider(lambda: (100, 100))
    assert isinstance(provider, HealthProvider)
    snap = await HealthChecker([provider]).check()
    assert snap.live
    assert not snap.ready
    assert "above critical 98%" in (snap.probe("readiness").failures[0].reason or "")


def test_memory_pressure_validates_fractions() -> None:
    with pytest.raises(ValueError, match="warn_fraction"):
        MemoryPressureProvider(lambda: (0, 1), warn_fraction=0)
    with pytest.raises(ValueError, match="critical_fraction"):
        MemoryPressureProvider(lambda: (0, 1), warn_fraction=0.9, critical_fraction=0.5)


async def test_memory_pressure_rejects_negative_usage_through_checker() -> None:
    snap = await HealthChecker([MemoryPressureProvider(lambda: (-1, 10))]).check()
    assert snap.providers["memory"].status is U
    assert "non-negative" in (snap.providers["memory"].reason or "")


# -- GPU through a fake NVML -------------------------------------------------------------------


async def test_gpu_healthy_reports_measurements() -> None:
    nvml = FakeNvml(gpus=[FakeGpu(temperature_c=55, memory_used_bytes=10 * GiB)])
    provider = GpuHealthProvider(nvml)
    assert isinstance(provider, HealthProvider)
    report = await provider.check()
    assert report.status is H
    assert report.reason is None
    assert report.data["gpu_count"] == 1
    gpu = report.data["gpus"][0]
    assert gpu["name"] == "Fake GPU 80GB"
    assert gpu["temperature_c"] == 55
    assert gpu["memory_used_bytes"] == 10 * GiB
    assert gpu["memory_total_bytes"] == 80 * GiB
    assert gpu["ecc_uncorrected_errors"] == 0
    assert gpu["throttle_reasons"] == []
    json.dumps(report.data)  # machine-readable as it is


@pytest.mark.parametrize(
    ("gpu", "status", "reason"),
    [
        (FakeGpu(temperature_c=86), D, "temperature 86 C >= warning 85 C"),
        (FakeGpu(temperature_c=97), U, "temperature 97 C >= critical 95 C"),
        (FakeGpu(ecc_uncorrected_errors=2), U, "2 uncorrected ECC errors"),
        (FakeGpu(throttle_reasons=0x40 | 0x1), D, "throttled: hw_thermal_slowdown"),
        (FakeGpu(throttle_reasons=0x4), H, None),  # power cap is policy, not a fault
        (FakeGpu(lost=True), U, "NVML query failed (GPU is lost)"),
    ],
)
async def test_gpu_conditions(gpu: FakeGpu, status: HealthStatus, reason: str | None) -> None:
    report = await GpuHealthProvider(FakeNvml(gpus=[gpu])).check()
    assert report.status is status
    assert report.reason == (None if reason is None else f"gpu0: {reason}")


async def test_gpu_without_ecc_support_is_fine() -> None:
    report = await GpuHealthProvider(FakeNvml(gpus=[FakeGpu(ecc_uncorrected_errors=None)])).check()
    assert report.status is H
    assert report.data["gpus"][0]["ecc_uncorrected_errors"] is None


async def test_gpu_without_utilization_reports_is_fine() -> None:
    # A MIG instance: NVML answers "not supported" for utilization, which is not a fault.
    report = await GpuHealthProvider(FakeNvml(gpus=[FakeGpu(utilization_gpu_percent=None)])).check()
    assert report.status is HealthStatus.HEALTHY
    gpu = report.data["gpus"][0]
    assert gpu["utilization_gpu_percent"] is None
    assert gpu["utilization_memory_percent"] is None
    assert gpu["temperature_c"] == 40


async def test_gpu_worst_device_wins_and_all_are_named() -> None:
    nvml = FakeNvml(gpus=[FakeGpu(), FakeGpu(temperature_c=90), FakeGpu(ecc_uncorrected_errors=1)])
    report = await GpuHealthProvider(nvml).check()
    assert report.status is U
    assert report.reason == "gpu1: temperature 90 C >= warning 85 C; gpu2: 1 uncorrected ECC errors"
    assert [g["status"] for g in report.data["gpus"]] == ["healthy", "degraded", "unhealthy"]


async def test_gpu_selected_devices_only() -> None:
    nvml = FakeNvml(gpus=[FakeGpu(ecc_uncorrected_errors=1), FakeGpu()])
    report = await GpuHealthProvider(nvml, devices=[1]).check()
    assert report.status is H
    assert [g["index"] for g in report.data["gpus"]] == [1]
    missing = await GpuHealthProvider(nvml, devices=[7]).check()
    assert missing.status is U
    assert missing.reason == "gpu7: no such device (NVML reports 2)"


@pytest.mark.parametrize("require_gpu", [False, True])
async def test_no_driver_is_a_clear_no_gpu_report(require_gpu: bool) -> None:
    provider = GpuHealthProvider(FakeNvml(driver_loaded=False), require_gpu=require_gpu)
    report = await provider.check()
    assert report.status is (U if require_gpu else H)
    assert report.reason == "no GPU: NVML could not initialise (Driver Not Loaded)"
    assert report.data == {"gpu_count": 0}


async def test_zero_devices_is_no_gpu() -> None:
    report = await GpuHealthProvider(FakeNvml(gpus=[])).check()
    assert report.reason == "no GPU: NVML reports no devices"


async def test_missing_pynvml_is_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes "import pynvml" raise ImportError.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    report = await GpuHealthProvider(require_gpu=True).check()
    assert report.status is U
    assert report.reason is not None
    assert report.reason.startswith("no GPU: nvidia-ml-py is not installed")


async def test_gpu_initialises_once_and_close_shuts_down() -> None:
    nvml = FakeNvml()
    provider = GpuHealthProvider(nvml)
    await provider.check()
    await provider.check()
    assert nvml.calls.count("nvmlInit") == 1
    provider.close()
    assert nvml.calls[-1] == "nvmlShutdown"
    assert not nvml.initialised
    await provider.check()
    assert nvml.calls.count("nvmlInit") == 2


async def test_gpu_in_checker_affects_liveness() -> None:
    nvml = FakeNvml(gpus=[FakeGpu(ecc_uncorrected_errors=3)])
    snap = await HealthChecker([GpuHealthProvider(nvml)]).check()
    assert not snap.live
    failure = snap.probe(Probe.LIVENESS).failures[0]
    assert (failure.source, failure.reason) == ("gpu", "gpu0: 3 uncorrected ECC errors")


def test_gpu_validates_temperatures() -> None:
    with pytest.raises(ValueError, match="temperature_warn_c"):
        GpuHealthProvider(FakeNvml(), temperature_warn_c=100, temperature_critical_c=90)
