"""`GpuHealthProvider` against the real NVML of a real GPU (skipped without one)."""

from __future__ import annotations

import pytest
from inferno_health import GpuHealthProvider, HealthStatus

pynvml = pytest.importorskip("pynvml", reason="needs nvidia-ml-py (inferno-health[gpu])")


def _gpu_count() -> int:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_gpu_count() == 0, reason="needs an NVIDIA GPU and driver"),
]


def test_every_gpu_is_sampled_with_its_measurements() -> None:
    provider = GpuHealthProvider(require_gpu=True)
    try:
        report = provider.sample()
    finally:
        provider.close()
    data = report.data
    assert data["gpu_count"] == len(data["gpus"]) >= 1
    for gpu in data["gpus"]:
        assert gpu["name"]
        assert 0 < gpu["temperature_c"] < 120
        assert 0 < gpu["memory_used_bytes"] <= gpu["memory_total_bytes"]
        util = gpu["utilization_gpu_percent"]
        assert util is None or 0 <= util <= 100  # None on MIG instances
        assert isinstance(gpu["throttle_reasons"], list)
        # A GPU in a healthy machine: no uncorrected ECC errors (None where ECC is off).
        assert gpu["ecc_uncorrected_errors"] in (0, None)
    assert report.status in (HealthStatus.HEALTHY, HealthStatus.DEGRADED)


def test_a_device_index_past_the_last_is_unhealthy() -> None:
    provider = GpuHealthProvider(devices=[0, 999])
    try:
        report = provider.sample()
    finally:
        provider.close()
    assert report.status is HealthStatus.UNHEALTHY
    assert report.reason is not None
    assert "gpu999: no such device" in report.reason
