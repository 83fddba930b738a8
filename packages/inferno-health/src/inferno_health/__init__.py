"""Liveness, readiness and startup health with machine-readable reasons; NVML GPU health."""

__all__: list[str] = []
