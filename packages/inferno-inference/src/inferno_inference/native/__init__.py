"""Native CPU kernels, compiled from C on first use: see `build` and `decoder`."""

from inferno_inference.native.build import NativeLibrary, cache_dir, load_native
from inferno_inference.native.decoder import (
    NATIVE_DTYPES,
    NativeDecoder,
    NativeMatmul,
    native_unsupported,
    pack_weight,
)

__all__ = [
    "NATIVE_DTYPES",
    "NativeDecoder",
    "NativeLibrary",
    "NativeMatmul",
    "cache_dir",
    "load_native",
    "native_unsupported",
    "pack_weight",
]
