"""The C core of `PoolMemoryResource`, compiled from source on first use (see `build`)."""

from inferno_memory._native.build import NativeCore, cache_dir, load_native_core

__all__ = ["NativeCore", "cache_dir", "load_native_core"]
