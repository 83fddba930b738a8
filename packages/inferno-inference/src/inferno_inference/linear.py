"""`Projection`: one weight matrix, stored in the layouts its matmuls run fastest with.

On the CPU the GEMM behind ``F.linear`` repacks the weight into its blocked panel format on
every call; with a handful of rows (a decode batch) that repacking costs as much as the
multiply. A weight prepacked once by oneDNN skips it (1.5-2x faster for 2-64 rows, measured in
``benchmarks/engine_bench.py``). A single row is a GEMV, which needs no packing: in fp32 it
streams fastest from a transposed (``[in, out]``) copy.

Opt-in int8 weight-only quantization (``int8=True``) keeps an ``[out, in]`` int8 copy with one
symmetric scale per output channel (absmax / 127) for single rows: a decode GEMV is bound by
the bytes it streams, and int8 halves them against bf16 (``torch._weight_int8pack_mm``, ~30%
faster per token than the packed bf16 GEMV on 2 threads). That kernel wants bf16 activations,
so fp32 rows are cast to bf16 and the result cast back. It is ~9x slower than the packed bf16
GEMM at 16 rows, so multi-row matmuls keep the unquantized layout: int8 costs memory (a second,
int8, copy) and buys batch-1 speed.

With the engine's C kernels (``native_layout`` and ``native_matmul``, the CPU default) none of
the above is kept: every call runs in C on the one copy laid out for the decode path, at
oneDNN's speed for prefill-sized matmuls, with half the memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from inferno_inference.errors import EngineError

__all__ = ["NativeMatmulFn", "NativeWeight", "Projection", "quantize_int8"]

#: A weight laid out for the native decode path: the data, and per-row scales for int8 codes.
NativeWeight = tuple[torch.Tensor, torch.Tensor | None]
#: ``(weight, x, out_features) -> x @ weight.T`` over a `NativeWeight` (`native.NativeMatmul`).
NativeMatmulFn = Callable[[NativeWeight, torch.Tensor, int], torch.Tensor]


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


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8 form of ``weight`` ([out, in]): ``(q, scales)``.

    ``q`` is int8 ``[out, in]`` (contiguous), ``scales`` is fp32 ``[out]`` with
    ``weight ~= q * scales[:, None]``; an all-zero row gets scale 1 (its codes are all 0).
    """
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1)
    scales = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
    return q, scales


def _int8_kernel_works(q: torch.Tensor, scales: torch.Tensor) -> bool:
    """Whether this torch build runs ``_weight_int8pack_mm`` for these shapes, correctly."""
    op = getattr(torch, "_weight_int8pack_mm", None)
    if op is None:
        return False
    probe = torch.ones(1, q.shape[1], dtype=torch.bfloat16)
    try:
        got: torch.Tensor = op(probe, q, scales)
    except RuntimeError:  # the op exists but this build or device lacks the kernel
        return False
    want = probe.float() @ (q.float() * scales.float()[:, None]).t()
    return torch.allclose(got.float(), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))


class Projection:
    """``x @ weight.T`` for a weight of ``[out, in]``; call it with ``x`` of ``[rows, in]``."""

    __slots__ = (
        "bias",
        "gemv",
        "int8",
        "matmul",
        "native",
        "nbytes",
        "out_features",
        "packed",
        "transposed",
    )

    def __init__(
        self,
        weight: torch.Tensor,
        *,
        prepack: bool = True,
        int8: bool = False,
        native_layout: Callable[[torch.Tensor], NativeWeight] | None = None,
        native_matmul: NativeMatmulFn | None = None,
        bias: torch.Tensor | None = None,
    ) -> None:
        """Lay ``weight`` out for its matmuls; ``bias`` (``[out]``, in the weight's dtype) is
        added to every output row.

        ``nbytes`` counts the weight bytes one single-row call reads. With ``int8`` (CPU only;
        weight in bf16 or fp32) single rows run on an int8 copy; raises `EngineError` where
        this torch build has no int8 kernel. ``native_layout`` lays out a copy for code outside
        torch (the C decode path's `pack_weight`: the weight or int8 codes, and int8 scales),
        kept as ``native``; the native path then takes the single rows, so no transposed GEMV
        copy is kept for them, and ``nbytes`` counts the native copy. With ``native_matmul``
        as well, every call runs on the native copy and it is the only one kept (``int8`` and
        ``prepack`` are then moot: the native layout decides).
        """
        cpu = weight.device.type == "cpu"
        self.out_features = weight.shape[0]
        if bias is not None and bias.shape != (self.out_features,):
            raise EngineError(f"bias of shape {list(bias.shape)} for {self.out_features} outputs")
        self.bias = None if bias is None else bias.to(weight.dtype).contiguous()
        self.matmul = native_matmul
        if native_matmul is not None:
            if native_layout is None:
                raise EngineError("native_matmul needs native_layout")
            int8, prepack = False, False
        self.nbytes = weight.numel() * weight.element_size()
        self.packed = _prepack(weight) if cpu and prepack else None
        self.int8: tuple[torch.Tensor, torch.Tensor] | None = None
        if int8:
            self.int8 = self._quantize(weight)
            q, scales = self.int8
            self.nbytes = q.numel() + scales.numel() * scales.element_size()
        # fp32 single rows stream ~40% faster from [in, out]; other dtypes gain nothing, so
        # they keep no second copy when a packed one exists. With int8, single rows never
        # read the GEMV copy, so only an unpacked multi-row fallback keeps one.
        self.native = native_layout(weight) if native_layout is not None else None
        if self.native is not None:
            data, native_scales = self.native
            self.nbytes = data.numel() * data.element_size()
            if native_scales is not None:
                self.nbytes += native_scales.numel() * native_scales.element_size()
        self.transposed = (
            cpu and weight.dtype == torch.float32 and self.int8 is None and self.native is None
        )
        self.gemv: torch.Tensor | None
        if self.transposed:
            self.gemv = weight.t().contiguous()
        elif self.packed is None and self.matmul is None:
            self.gemv = weight.contiguous()
        else:
            self.gemv = None

    def native_weight(self) -> NativeWeight:
        """The copy laid out by ``native_layout``; raises `EngineError` when there is none."""
        if self.native is None:
            raise EngineError("this projection keeps no native-layout weight")
        return self.native

    @staticmethod
    def _quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if weight.device.type != "cpu" or weight.dtype not in (torch.bfloat16, torch.float32):
            raise EngineError(
                f"int8 weights need a CPU bfloat16/float32 weight, got {weight.dtype} on "
                f"{weight.device.type}"
            )
        q, scales = quantize_int8(weight)
        scales_bf16 = scales.to(torch.bfloat16)
        if not _int8_kernel_works(q, scales_bf16):
            raise EngineError(
                f"torch {torch.__version__} has no working CPU int8 weight-only matmul "
                "(torch._weight_int8pack_mm); use weight_quantization='none'"
            )
        return q, scales_bf16

    def bias_f32(self) -> torch.Tensor | None:
        """The bias in fp32 (what the native decode step adds), or None."""
        return None if self.bias is None else self.bias.float().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        bias = self.bias
        if rows == 0:
            return x.new_empty(0, self.out_features)
        if self.matmul is not None and self.native is not None:
            y = self.matmul(self.native, x, self.out_features)
            return y if bias is None else y.add_(bias)
        if rows == 1 and self.int8 is not None:
            q, scales = self.int8
            y = torch._weight_int8pack_mm(x.to(torch.bfloat16), q, scales).to(x.dtype)
            return y if bias is None else y.add_(bias)
        if self.packed is not None and (rows > 1 or self.gemv is None):
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
                x, self.packed, bias, "none", [], ""
            )
            return out
        gemv = self.gemv
        if gemv is None:  # unreachable: a projection always has gemv or packed
            raise RuntimeError("projection has no weight layout")
        if self.transposed:
            return torch.mm(x, gemv) if bias is None else torch.addmm(bias, x, gemv)
        return F.linear(x, gemv, bias)
