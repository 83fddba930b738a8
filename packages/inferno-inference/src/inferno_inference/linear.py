"""`Projection`: one weight matrix, stored in the layouts its matmuls run fastest with.

On the CPU the GEMM behind ``F.linear`` repacks the weight into its blocked panel format on
every call; with a handful of rows (a decode batch) that repacking costs as much as the
multiply. A weight prepacked once by oneDNN skips it (1.5-2x faster for 2-64 rows, measured in
``benchmarks/engine_bench.py``). A single row is a GEMV, which needs no packing: in fp32 it
streams fastest from a transposed (``[in, out]``) copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["Projection"]


def _prepack(weight: torch.Tensor) -> torch.Tensor | None:
    """A oneDNN-prepacked copy of ``weight`` ([out, in]), or None where oneDNN cannot."""
    ops = torch.ops.mkldnn
    available = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    if not (available and hasattr(ops, "_reorder_linear_weight")):
        return None
    try:
        packed: torch.Tensor = ops._reorder_linear_weight(weight, 16)
        probe = torch.ones(2, weight.shape[1], dtype=weight.dtype)
        got = ops._linear_pointwise(probe, packed, None, "none", [], "")
        want = F.linear(probe, weight)
    except RuntimeError:  # dtype or ISA not supported by this oneDNN build
        return None
    if not torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-2):
        return None
    return packed


class Projection:
    """``x @ weight.T`` for a weight of ``[out, in]``; call it with ``x`` of ``[rows, in]``."""

    __slots__ = ("gemv", "nbytes", "out_features", "packed", "transposed")

    def __init__(self, weight: torch.Tensor, *, prepack: bool = True) -> None:
        cpu = weight.device.type == "cpu"
        self.out_features = weight.shape[0]
        self.nbytes = weight.numel() * weight.element_size()
        self.packed = _prepack(weight) if cpu and prepack else None
        # fp32 single rows stream ~40% faster from [in, out]; other dtypes gain nothing, so
        # they keep no second copy when a packed one exists.
        self.transposed = cpu and weight.dtype == torch.float32
        self.gemv: torch.Tensor | None
        if self.transposed:
            self.gemv = weight.t().contiguous()
        elif self.packed is None:
            self.gemv = weight.contiguous()
        else:
            self.gemv = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if rows == 0:
            return x.new_empty(0, self.out_features)
        if self.packed is not None and (rows > 1 or self.gemv is None):
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
                x, self.packed, None, "none", [], ""
            )
            return out
        gemv = self.gemv
        if gemv is None:  # unreachable: a projection always has gemv or packed
            raise RuntimeError("projection has no weight layout")
        return torch.mm(x, gemv) if self.transposed else F.linear(x, gemv)
