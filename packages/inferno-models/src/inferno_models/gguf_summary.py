"""A fast scan of a GGUF header: scalar metadata and tensor descriptors, skipping arrays.

Listing a models directory must not parse 100k-entry vocabularies; this reads only what a
listing shows (architecture, parameter count, quantization) in milliseconds.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from inferno_models.errors import ModelFormatError

__all__ = ["GGUFSummary", "TensorExtent", "scan_gguf"]

# GGUF value types: id -> struct format of a scalar (None for string/array).
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
# ggml type id -> name, for the types a listing may meet.
_GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 30: "BF16",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TensorExtent:
    """Where a tensor's data lies in the file."""

    name: str
    kind: str
    start: int  # absolute file offset
    nbytes: int  # -1 when the type's block size is unknown


@dataclass(frozen=True, slots=True)
class GGUFSummary:
    """What a listing shows about a GGUF file."""

    version: int
    metadata: dict[str, Any]
    tensor_count: int
    parameter_count: int
    quantization: str
    tensors: tuple[TensorExtent, ...] = ()

    def check_complete(self, path: Path, file_size: int) -> None:
        """Raise `ModelFormatError` naming the first tensor whose data the file does not hold."""
        for t in self.tensors:
            if t.nbytes >= 0 and t.start + t.nbytes > file_size:
                raise ModelFormatError(
                    path,
                    f"tensor {t.name} is truncated (expected {t.nbytes} bytes, "
                    f"file ends after {max(0, file_size - t.start)})",
                )


class _Reader:
    def __init__(self, fh: BinaryIO, path: Path) -> None:
        self.fh, self.path = fh, path

    def read(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        data = self.fh.read(size)
        if len(data) != size:
            raise ModelFormatError(self.path, "file is truncated inside its header")
        return struct.unpack("<" + fmt, data)[0]

    def string(self) -> str:
        length = self.read("Q")
        if length > 1 << 24:
            raise ModelFormatError(self.path, f"implausible string length {length} in header")
        data = self.fh.read(length)
        if len(data) != length:
            raise ModelFormatError(self.path, "file is truncated inside its header")
        return data.decode("utf-8", errors="replace")

    def value(self, vtype: int, *, keep_arrays: bool) -> Any:
        if vtype in _SCALARS:
            return self.read(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.read("I"), self.read("Q")
            if itype in _SCALARS and not keep_arrays:
                self.fh.seek(count * struct.calcsize("<" + _SCALARS[itype]), 1)
                return count
            items = [self.value(itype, keep_arrays=keep_arrays) for _ in range(count)]
            return items if keep_arrays else count
        raise ModelFormatError(self.path, f"unknown metadata value type {vtype}")


def scan_gguf(path: str | Path) -> GGUFSummary:
    """Read the header of ``path``; arrays are reported by their length only.

    Raises:
        ModelFormatError: not a GGUF file, or a malformed/truncated header.
    """
    path = Path(path)
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ModelFormatError(path, f"cannot open: {exc.strerror or exc}") from None
    with fh:
        magic = fh.read(4)
        if magic != b"GGUF":
            raise ModelFormatError(path, f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
        r = _Reader(fh, path)
        version = r.read("I")
        if version not in (2, 3):
            raise ModelFormatError(path, f"unsupported GGUF version {version}")
        tensor_count, kv_count = r.read("Q"), r.read("Q")
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = r.string()
            metadata[key] = r.value(r.read("I"), keep_arrays=False)
        params = 0
        kinds: Counter[str] = Counter()
        raw_extents: list[tuple[str, str, int, int]] = []
        for _ in range(tensor_count):
            name = r.string()
            dims = [r.read("Q") for _ in range(r.read("I"))]
            kind = _GGML_TYPES.get(r.read("I"), "other")
            offset = r.read("Q")
            count = 1
            for d in dims:
                count *= d
            params += count
            if len(dims) == 2:
                kinds[kind] += count
            raw_extents.append((name, kind, offset, _nbytes(kind, count)))
        alignment = int(metadata.get("general.alignment", 32)) or 32
        data_start = -(-fh.tell() // alignment) * alignment
    quant = kinds.most_common(1)[0][0] if kinds else "unknown"
    extents = tuple(TensorExtent(n, k, data_start + off, nb) for n, k, off, nb in raw_extents)
    return GGUFSummary(version, metadata, tensor_count, params, quant, extents)


def _nbytes(kind: str, count: int) -> int:
    from inferno_models.dequant import BLOCK_SIZES

    if kind in BLOCK_SIZES:
        elems, nbytes = BLOCK_SIZES[kind]
        return count // elems * nbytes
    plain = {"F32": 4, "F16": 2, "BF16": 2}
    return count * plain[kind] if kind in plain else -1
