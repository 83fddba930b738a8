"""Triton kernels for the CUDA forward pass (on the CPU through Triton's interpreter,
``TRITON_INTERPRET=1``, which the tests use), each next to the PyTorch code it replaces.

* `paged_decode_attention`: the PyTorch path gathers each sequence's cached K/V into a padded
  ``[n, span, kv_heads, head_dim]`` copy for SDPA, so the cache is read once and the copy
  written and read again. The kernel reads each K/V row once, from its cache slot, with an
  online softmax: one pass over the context. One program takes one sequence, one KV head and
  one slice of the context, with the query heads that share the KV head as its rows (GQA).
  Long contexts with few sequences are split across programs (split-K), and a second kernel
  merges the slices by their log-sum-exp.
* `rope_kv_write`: RoPE on the query and key heads of the fused QKV output and the K/V cache
  writes, in one kernel instead of about seven.
* `add_rms_norm`: the residual add and the RMSNorm after it.
* `silu_mul`: SwiGLU's ``silu(gate) * up``.

A decode step of a small model on a GPU is bound by how many kernels it launches as much as by
bandwidth, so these cut a Llama layer from about twenty kernels to nine. `TritonOps` bundles them
for `LlamaModel`; `self_check` compares each with its reference on the device before the engine
uses them. Triton is optional: without it (or when the check fails) the engine keeps PyTorch.
"""

from __future__ import annotations

import functools
import math
import os
import types

import torch

__all__ = [
    "TritonOps",
    "choose_splits",
    "compile_for_gpu",
    "paged_decode_attention",
    "reference_add_rms_norm",
    "reference_decode_attention",
    "reference_rope_kv_write",
    "reference_silu_mul",
    "self_check",
    "triton_unavailable",
]

_BLOCK_N = 64  # context tokens per loop iteration of the attention kernel
_MIN_ITERS_PER_SPLIT = 4
_SILU_BLOCK = 1024


@functools.cache
def _jitted() -> types.SimpleNamespace | None:
    """The kernels wrapped by ``triton.jit`` (compiled, or run by Triton's interpreter under
    ``TRITON_INTERPRET=1``), or ``None`` without Triton. Triton ships with torch's CUDA wheels
    on Linux; it is imported only here, on first use."""
    try:
        import triton
    except ImportError:
        return None
    from inferno_inference import triton_kernels as k

    names = ("attend", "merge", "rope_kv_write", "add_rms_norm", "silu_mul")
    return types.SimpleNamespace(**{name: triton.jit(getattr(k, name)) for name in names})


def _kernels() -> types.SimpleNamespace:
    kernels = _jitted()
    if kernels is None:
        raise RuntimeError("the Triton kernels need triton installed")
    return kernels


def triton_unavailable(device: torch.device) -> str | None:
    """``None`` when the kernels can run on ``device`` (CUDA, or the CPU through Triton's
    interpreter), else the reason they cannot."""
    if _jitted() is None:
        return "triton is not installed"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return "Triton runs on the CPU only through its interpreter (TRITON_INTERPRET=1)"
    if device.type not in ("cuda", "cpu"):
        return f"no Triton kernels for {device.type} devices"
    return None


def _pow2(n: int, least: int = 1) -> int:
    return max(least, 1 << (n - 1).bit_length())


def _warps(elements: int) -> int:
    """Warps for a one-program-per-row kernel holding ``elements`` values: about 32 a thread,
    so wide rows (a 70B model's 8192 hidden) do not spill registers."""
    return max(4, min(16, _pow2(elements // (32 * 32))))


@functools.cache
def _multiprocessors(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def choose_splits(num_seqs: int, kv_heads: int, span: int, multiprocessors: int) -> int:
    """How many slices each sequence's context is cut into: enough programs to fill the GPU
    when there are few sequences and long contexts, never slices of fewer than a few loop
    iterations (each split costs a merge)."""
    iters = -(-span // _BLOCK_N)
    programs = num_seqs * kv_heads
    if programs >= multiprocessors or iters < 2 * _MIN_ITERS_PER_SPLIT:
        return 1
    return max(1, min(-(-2 * multiprocessors // programs), iters // _MIN_ITERS_PER_SPLIT))


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    lens: torch.Tensor | None,
    *,
    splits: int | None = None,
) -> torch.Tensor:
    """Attention of one query token per sequence over its cached context.

    ``q`` is ``[n, heads, head_dim]`` (the last dimension contiguous), the caches are
    ``[num_slots, kv_heads, head_dim]``, ``slots`` ``[n, span]`` lists each sequence's cache
    slots in order and ``lens`` ``[n]`` how many of them count (``None``: all ``span``).
    Returns ``[n, heads, head_dim]`` in ``q``'s dtype; equal, within rounding, to
    `reference_decode_attention`. ``splits`` overrides the split-K choice (tests).
    """
    k = _kernels()
    n, heads, hd = q.shape
    kv_heads = k_cache.shape[1]
    span = slots.shape[1]
    if q.stride(2) != 1 or k_cache.stride(2) != 1 or v_cache.stride(2) != 1:
        raise ValueError("the head dimension of q and the caches must be contiguous")
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads do not group over {kv_heads} KV heads")
    group = heads // kv_heads
    if splits is None:
        sms = _multiprocessors(q.device.index or 0) if q.device.type == "cuda" else 1
        splits = choose_splits(n, kv_heads, span, sms)
    per_split = -(-span // splits)
    chunk = -(-per_split // _BLOCK_N) * _BLOCK_N  # whole loop iterations
    splits = max(1, -(-span // chunk))
    out = torch.empty(n, heads, hd, dtype=q.dtype, device=q.device)
    part = (
        out
        if splits == 1
        else torch.empty(n, heads, splits, hd, dtype=torch.float32, device=q.device)
    )
    lse = torch.empty(n, heads, splits, dtype=torch.float32, device=q.device)
    slots = slots if slots.stride(1) == 1 else slots.contiguous()
    hd_pad = max(16, 1 << (hd - 1).bit_length())
    part_strides = (out.stride(0), out.stride(1), 0) if splits == 1 else part.stride()[:3]
    k.attend[(n, kv_heads, splits)](
        q,
        k_cache,
        v_cache,
        slots,
        lens.contiguous() if lens is not None else slots,  # unread without lens
        part,
        lse,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        slots.stride(0),
        *part_strides,
        span,
        chunk,
        1.0 / math.sqrt(hd),
        GROUP=group,
        GROUP_PAD=max(16, 1 << (group - 1).bit_length()),
        HD=hd,
        HD_PAD=hd_pad,
        BLOCK_N=_BLOCK_N,
        HAS_LENS=lens is not None,
    )
    if splits > 1:
        k.merge[(n, heads)](
            part,
            lse,
            out,
            part.stride(0),
            part.stride(1),
            part.stride(2),
            out.stride(0),
            out.stride(1),
            splits,
            HD=hd,
            HD_PAD=hd_pad,
            SPLITS_PAD=max(2, 1 << (splits - 1).bit_length()),
        )
    return out


def reference_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    lens: torch.Tensor | None,
) -> torch.Tensor:
    """What `paged_decode_attention` computes, in plain PyTorch (fp32): the check it is
    tested and self-checked against."""
    heads, hd = q.shape[1:]
    kv_heads = k_cache.shape[1]
    k = k_cache[slots].float().repeat_interleave(heads // kv_heads, dim=2)  # [n, span, h, hd]
    v = v_cache[slots].float().repeat_interleave(heads // kv_heads, dim=2)
    scores = torch.einsum("nhd,nshd->nhs", q.float(), k) / math.sqrt(hd)
    if lens is not None:
        span = torch.arange(slots.shape[1], device=slots.device)
        scores = scores.masked_fill(~(span[None, None, :] < lens[:, None, None]), float("-inf"))
    return torch.einsum("nhs,nshd->nhd", scores.softmax(dim=-1), v).to(q.dtype)


def rope_kv_write(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    heads: int,
    kv_heads: int,
) -> torch.Tensor:
    """Rotate the query and key heads of ``qkv`` (``[n, (heads + 2 kv_heads) * head_dim]``,
    fused Q|K|V) by the `rope_tables` rows at ``positions``; returns them as ``[n, heads +
    kv_heads, head_dim]``, and writes the keys and values to the caches at ``slot_mapping``."""
    n = qkv.shape[0]
    hd = k_cache.shape[-1]
    if qkv.stride(1) != 1 or k_cache.stride(1) != hd or v_cache.stride(1) != hd:
        raise ValueError("qkv rows and the caches' [kv_heads, head_dim] slots must be contiguous")
    if cos.stride() != sin.stride() or cos.stride(1) != 1:
        raise ValueError("cos and sin must be row-major tables of one layout")
    qk = torch.empty(n, heads + kv_heads, hd, dtype=qkv.dtype, device=qkv.device)
    if n:
        _kernels().rope_kv_write[(n,)](
            qkv,
            positions.contiguous(),  # the kernel indexes them by token
            cos,
            sin,
            slot_mapping.contiguous(),
            qk,
            k_cache,
            v_cache,
            qkv.stride(0),
            cos.stride(0),
            qk.stride(0),
            k_cache.stride(0),
            v_cache.stride(0),
            HEADS=heads,
            KV_HEADS=kv_heads,
            ROWS_PAD=_pow2(heads + 2 * kv_heads),
            HD=hd,
            HD_PAD=_pow2(hd),
            num_warps=_warps(_pow2(heads + 2 * kv_heads) * _pow2(hd)),
        )
    return qk


def reference_rope_kv_write(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    heads: int,
    kv_heads: int,
) -> torch.Tensor:
    """What `rope_kv_write` does, in PyTorch (rotation in fp32)."""
    n, hd = qkv.shape[0], k_cache.shape[-1]
    x = qkv.view(n, heads + 2 * kv_heads, hd)
    qk = x[:, : heads + kv_heads].float()
    rolled = torch.roll(qk, shifts=hd // 2, dims=-1)
    qk = (qk * cos[positions].float()[:, None] + rolled * sin[positions].float()[:, None]).to(
        qkv.dtype
    )
    k_cache.index_copy_(0, slot_mapping, qk[:, heads:])
    v_cache.index_copy_(0, slot_mapping, x[:, heads + kv_heads :])
    return qk


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """``x += delta`` in place (when given), then the RMSNorm of ``x`` times ``weight``."""
    n, hidden = x.shape
    if x.stride(1) != 1 or (delta is not None and delta.stride(1) != 1):
        raise ValueError("add_rms_norm needs rows with contiguous elements")
    out = torch.empty_like(x)
    if n:
        _kernels().add_rms_norm[(n,)](
            x,
            x if delta is None else delta,  # unread without a delta
            weight,
            out,
            x.stride(0),
            x.stride(0) if delta is None else delta.stride(0),
            out.stride(0),
            hidden,
            eps,
            HAS_DELTA=delta is not None,
            BLOCK=_pow2(hidden),
            num_warps=_warps(_pow2(hidden)),
        )
    return out


def reference_add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """What `add_rms_norm` does, in PyTorch."""
    if delta is not None:
        x.add_(delta)
    return torch.nn.functional.rms_norm(x.float(), weight.shape, weight.float(), eps).to(x.dtype)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up`` = ``[n, 2 * inter]`` (gate first)."""
    n, width = gate_up.shape
    inter = width // 2
    if gate_up.stride(1) != 1:
        raise ValueError("silu_mul needs rows with contiguous elements")
    out = torch.empty(n, inter, dtype=gate_up.dtype, device=gate_up.device)
    if n:
        _kernels().silu_mul[(n, -(-inter // _SILU_BLOCK))](
            gate_up, out, gate_up.stride(0), out.stride(0), inter, BLOCK=_SILU_BLOCK
        )
    return out


def reference_silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """What `silu_mul` does, in PyTorch (fp32 inside)."""
    inter = gate_up.shape[1] // 2
    g = gate_up.float()
    return (torch.nn.functional.silu(g[:, :inter]) * g[:, inter:]).to(gate_up.dtype)


class TritonOps:
    """The kernels `LlamaModel` uses in place of groups of PyTorch ops (``model.ops``; see
    `inferno_inference.model.FusedOps`)."""

    add_rms_norm = staticmethod(add_rms_norm)
    rope_kv_write = staticmethod(rope_kv_write)
    silu_mul = staticmethod(silu_mul)
    decode_attention = staticmethod(paged_decode_attention)


def _error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max())


def self_check(
    heads: int,
    kv_heads: int,
    head_dim: int,
    hidden: int,
    intermediate: int,
    dtype: torch.dtype,
    device: torch.device,
) -> str | None:
    """Run every kernel once on random data of this model's shapes against its reference;
    ``None`` when all agree, else what went wrong (the engine then keeps PyTorch). Attention
    runs split and unsplit."""
    reason = triton_unavailable(device)
    if reason is not None:
        return reason
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    n, num_slots, span = 3, 1024, 700
    q, k, v = (
        rand(n, heads, head_dim),
        rand(num_slots, kv_heads, head_dim),
        rand(num_slots, kv_heads, head_dim),
    )
    slots = torch.stack([torch.randperm(num_slots, generator=gen)[:span] for _ in range(n)])
    slots = slots.to(device)
    lens = torch.tensor([span, 1, 333], device=device)
    checks: list[tuple[str, float]] = []
    try:
        want = reference_decode_attention(q, k, v, slots, lens)
        for splits in (1, 4):
            got = paged_decode_attention(q, k, v, slots, lens, splits=splits)
            checks.append((f"decode attention, {splits} split(s)", _error(got, want)))
        qkv = rand(n, (heads + 2 * kv_heads) * head_dim)
        positions = torch.tensor([0, 5, 700], device=device)
        cos, sin = rand(1024, head_dim), rand(1024, head_dim)
        mapping = torch.tensor([3, 9, 1000], device=device)
        caches = [
            torch.zeros(num_slots, kv_heads, head_dim, dtype=dtype, device=device) for _ in range(4)
        ]
        got = rope_kv_write(
            qkv, positions, cos, sin, mapping, caches[0], caches[1], heads, kv_heads
        )
        want = reference_rope_kv_write(
            qkv, positions, cos, sin, mapping, caches[2], caches[3], heads, kv_heads
        )
        cache_error = max(_error(caches[0], caches[2]), _error(caches[1], caches[3]))
        checks.append(("rope + KV write", max(_error(got, want), cache_error)))
        x, delta, weight = rand(n, hidden), rand(n, hidden), rand(hidden)
        x2 = x.clone()
        got = add_rms_norm(x, delta, weight, 1e-5)
        want = reference_add_rms_norm(x2, delta, weight, 1e-5)
        checks.append(("add + RMSNorm", max(_error(got, want), _error(x, x2))))
        gate_up = rand(n, 2 * intermediate)
        checks.append(("SiLU * up", _error(silu_mul(gate_up), reference_silu_mul(gate_up))))
    except Exception as exc:  # a compiler or driver failure: report it, keep serving
        return f"self-check failed: {type(exc).__name__}: {exc}"
    for name, error in checks:
        if not error <= tolerance:  # also catches NaN
            return f"self-check: {name} is off by {error:.3g} (> {tolerance})"
    return None


def compile_for_gpu(dtype: torch.dtype, *, arch: int = 90) -> dict[str, int]:
    """Compile every kernel for an NVIDIA GPU of compute capability ``arch`` (90: Hopper),
    without needing one: the kernels' shapes of a Llama-3.2-1B-like model, ``dtype`` tensors.
    Returns each kernel's cubin size; raises Triton's error where one does not build. Not
    under ``TRITON_INTERPRET=1``, whose builtins replace the compiler's."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_for_gpu cannot run under TRITON_INTERPRET=1")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile
    from triton.runtime.jit import JITFunction

    from inferno_inference import triton_kernels as k

    p = "*" + {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    i64 = "*i64"
    cases: dict[str, tuple[object, dict[str, str], dict[str, object]]] = {
        "attend": (
            k.attend,
            {"q_ptr": p, "k_ptr": p, "v_ptr": p, "slots_ptr": i64, "lens_ptr": i64,
             "out_ptr": p, "lse_ptr": "*fp32", "scale": "fp32"},
            {"GROUP": 4, "GROUP_PAD": 16, "HD": 64, "HD_PAD": 64, "BLOCK_N": _BLOCK_N,
             "HAS_LENS": True},
        ),
        "merge": (
            k.merge,
            {"part_ptr": "*fp32", "lse_ptr": "*fp32", "out_ptr": p},
            {"HD": 64, "HD_PAD": 64, "SPLITS_PAD": 32},
        ),
        "rope_kv_write": (
            k.rope_kv_write,
            {"qkv_ptr": p, "pos_ptr": i64, "cos_ptr": p, "sin_ptr": p, "slot_ptr": i64,
             "qk_ptr": p, "k_cache_ptr": p, "v_cache_ptr": p},
            {"HEADS": 32, "KV_HEADS": 8, "ROWS_PAD": 64, "HD": 64, "HD_PAD": 64},
        ),
        "add_rms_norm": (
            k.add_rms_norm,
            {"x_ptr": p, "delta_ptr": p, "w_ptr": p, "out_ptr": p, "eps": "fp32"},
            {"HAS_DELTA": True, "BLOCK": 2048},
        ),
        "silu_mul": (k.silu_mul, {"gate_up_ptr": p, "out_ptr": p}, {"BLOCK": _SILU_BLOCK}),
    }  # fmt: skip
    sizes: dict[str, int] = {}
    for name, (fn, arg_types, constexprs) in cases.items():
        # Parameters not named above are 32-bit integers (strides and sizes).
        code = fn.__code__  # type: ignore[attr-defined]
        params = code.co_varnames[: code.co_argcount]
        signature = {n: "constexpr" if n in constexprs else arg_types.get(n, "i32") for n in params}
        source = ASTSource(fn=JITFunction(fn), signature=signature, constexprs=constexprs)
        compiled = compile(source, target=GPUTarget("cuda", arch, 32))
        sizes[name] = len(compiled.asm["cubin"])
    return sizes
