"""The Triton kernels behind `inferno_inference.triton_attention` (imported only when Triton is
installed and the kernels are first wanted; see that module for what they compute).

``attend``: one program per (sequence, KV head, context slice) runs an online softmax over the
slice, reading K/V rows straight from their cache slots; the query heads sharing the KV head are
the rows of its dot products. ``merge``: one program per (sequence, head) combines the slices'
outputs, weighted by their log-sum-exp. Plain functions here; the caller wraps them in
``triton.jit``, so ``TRITON_INTERPRET=1`` runs them on the CPU.
"""

# Triton's dialect: constexpr-branch ifs, CAPITAL constexpr parameters, `l` for the softmax sum.
# ruff: noqa: N803, E741, SIM108
# mypy: ignore-errors

import triton.language as tl

__all__ = ["attend", "merge"]


def attend(
    q_ptr,
    k_ptr,
    v_ptr,
    slots_ptr,
    lens_ptr,
    out_ptr,
    lse_ptr,
    stride_qt,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_st,
    stride_ot,
    stride_oh,
    stride_os,
    span,
    chunk,
    scale,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HD: tl.constexpr,
    HD_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_LENS: tl.constexpr,
):
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    if HAS_LENS:
        length = tl.load(lens_ptr + seq)
    else:
        length = span
    start = split * chunk
    end = tl.minimum(start + chunk, length)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HD_PAD)
    gmask = g < GROUP
    dmask = d < HD
    heads = kvh * GROUP + g
    q = tl.load(
        q_ptr + seq * stride_qt + heads[:, None] * stride_qh + d[None, :],
        mask=gmask[:, None] & dmask[None, :],
        other=0.0,
    ).to(tl.float32)
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HD_PAD], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < end
        slot = tl.load(slots_ptr + seq * stride_st + n, mask=nmask, other=0).to(tl.int64)
        kv_mask = nmask[:, None] & dmask[None, :]
        k = tl.load(
            k_ptr + slot[:, None] * stride_ks + kvh * stride_kh + d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee") * scale
        s = tl.where(nmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_ptr + slot[:, None] * stride_vs + kvh * stride_vh + d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        m = m_new
    # An empty slice (past the sequence's end) leaves l == 0: output 0, weight exp(-inf).
    safe = tl.where(l > 0, l, 1.0)
    out = acc / safe[:, None]
    o_ptrs = out_ptr + seq * stride_ot + heads[:, None] * stride_oh + split * stride_os
    tl.store(
        o_ptrs + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=gmask[:, None] & dmask[None, :],
    )
    lse = tl.where(l > 0, m + tl.log(safe), float("-inf"))
    lse_ptrs = lse_ptr + (seq * tl.num_programs(1) * GROUP + heads) * tl.num_programs(2) + split
    tl.store(lse_ptrs, lse, mask=gmask)


def merge(
    part_ptr,
    lse_ptr,
    out_ptr,
    stride_pt,
    stride_ph,
    stride_ps,
    stride_ot,
    stride_oh,
    splits,
    HD: tl.constexpr,
    HD_PAD: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, HD_PAD)
    smask = s < splits
    lse = tl.load(
        lse_ptr + (seq * tl.num_programs(1) + head) * splits + s,
        mask=smask,
        other=float("-inf"),
    )
    weight = tl.exp(lse - tl.max(lse, axis=0))
    part = tl.load(
        part_ptr + seq * stride_pt + head * stride_ph + s[:, None] * stride_ps + d[None, :],
        mask=smask[:, None] & (d < HD)[None, :],
        other=0.0,
    ).to(tl.float32)
    out = tl.sum(part * weight[:, None], axis=0) / tl.sum(weight, axis=0)
    tl.store(
        out_ptr + seq * stride_ot + head * stride_oh + d,
        out.to(out_ptr.dtype.element_ty),
        mask=d < HD,
    )
