"""Skips tests marked ``gpu`` unless CuPy imports and a CUDA device is present; provides the
``core`` fixture that runs a pool test once per bookkeeping core."""

from __future__ import annotations

import functools
import os

import pytest
from inferno_memory._native import load_native_core


@functools.cache
def _cuda_available() -> bool:
    try:
        import cupy
    except ImportError:
        return False
    try:
        return bool(cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not _cuda_available():
            item.add_marker(skip)


def native_core_or_skip() -> None:
    """Skip without the native core; under ``CI=true`` (where CI installs a compiler) fail."""
    native = load_native_core()
    if native.module is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the native pool core did not build under CI: {native.reason}")
        pytest.skip(f"native pool core unavailable: {native.reason}")


# Session scope: hypothesis tests take it too, and it holds no state between examples.
@pytest.fixture(scope="session", params=["python", "native"])
def core(request: pytest.FixtureRequest) -> str:
    """The pool core a test runs on: never a silent fallback to Python for "native"."""
    if request.param == "native":
        native_core_or_skip()
    return str(request.param)


@pytest.fixture(scope="session")
def native() -> None:
    """For tests of the native core alone (skip or, under CI, fail without it)."""
    native_core_or_skip()
