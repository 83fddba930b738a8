"""Decode attention over the paged KV cache in a Triton kernel (CUDA; on the CPU through
Triton's interpreter, ``TRITON_INTERPRET=1``, which the tests use).

The PyTorch path gathers each sequence's cached K/V into a padded ``[n, span, kv_heads,
head_dim]`` copy and runs SDPA on it: the cache is read once, the copy written and read again.
This kernel reads each K/V row once, straight from its cache slot, with an online softmax, so a
decode step's attention costs one pass over the context. One program takes one sequence, one KV
head and one slice of the context; the query heads that share the KV head are its rows (GQA).
Long contexts with few sequences are split across programs (split-K, "flash decoding"), and a
second kernel merges the slices by their log-sum-exp.

Triton is optional: `paged_decode_attention_available` says whether it can run here, and the
engine keeps the PyTorch path otherwise.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import torch

__all__ = [
    "choose_splits",
    "paged_decode_attention",
    "paged_decode_attention_available",
    "reference_decode_attention",
]

_BLOCK_N = 64  # context tokens per loop iteration
_MIN_ITERS_PER_SPLIT = 4


@functools.cache
def _compiled() -> tuple[Any, Any] | None:
    """The two kernels wrapped by ``triton.jit`` (compiled, or run by Triton's interpreter
    under ``TRITON_INTERPRET=1``), or ``None`` without Triton. Triton ships with torch's CUDA
    wheels on Linux; it is imported only here, on first use."""
    try:
        import triton
    except ImportError:
        return None
    from inferno_inference import triton_kernels

    return triton.jit(triton_kernels.attend), triton.jit(triton_kernels.merge)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def paged_decode_attention_available(device: torch.device) -> str | None:
    """``None`` when the kernel can run on ``device`` (CUDA, or the CPU through Triton's
    interpreter), else the reason it cannot."""
    if _compiled() is None:
        return "triton is not installed"
    if device.type == "cpu" and not _interpreting():
        return "Triton runs on the CPU only through its interpreter (TRITON_INTERPRET=1)"
    if device.type not in ("cuda", "cpu"):
        return f"no Triton kernel for {device.type} devices"
    return None


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
    kernels = _compiled()
    if kernels is None:
        raise RuntimeError("paged_decode_attention needs triton")
    attend, merge = kernels
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
    attend[(n, kv_heads, splits)](
        q,
        k_cache,
        v_cache,
        slots,
        lens if lens is not None else slots,  # unread without lens
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
        merge[(n, heads)](
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


def self_check(
    heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device
) -> str | None:
    """Run the kernel once on random data of this model's head layout against
    `reference_decode_attention`; ``None`` when it agrees, else what went wrong (the engine
    then keeps the PyTorch path). Covers a split and an unsplit launch."""
    reason = paged_decode_attention_available(device)
    if reason is not None:
        return reason
    gen = torch.Generator().manual_seed(0)
    n, num_slots, span = 3, 1024, 700
    q = torch.randn(n, heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    k = torch.randn(num_slots, kv_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    v = torch.randn(num_slots, kv_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    slots = torch.stack([torch.randperm(num_slots, generator=gen)[:span] for _ in range(n)])
    slots = slots.to(device)
    lens = torch.tensor([span, 1, 333], device=device)
    want = reference_decode_attention(q, k, v, slots, lens).float()
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    try:
        for splits in (1, 4):
            got = paged_decode_attention(q, k, v, slots, lens, splits=splits).float()
            error = float((got - want).abs().max())
            if not error <= tolerance:  # also catches NaN
                return f"self-check: max error {error:.3g} > {tolerance} with {splits} split(s)"
    except Exception as exc:  # a compiler or driver failure: report it, keep serving
        return f"self-check failed: {type(exc).__name__}: {exc}"
    return None
