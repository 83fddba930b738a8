"""The Triton kernels behind `inferno_inference.triton_ops` (imported only when Triton is
installed and the kernels are first wanted; see that module for what they compute).

``attend``: one program per (sequence, KV head, context slice) runs an online softmax over the
slice, reading K/V rows straight from their cache slots; the query heads sharing the KV head are
the rows of its dot products. ``merge``: one program per (sequence, head) combines the slices'
outputs, weighted by their log-sum-exp. ``rope_kv_write``, ``add_rms_norm`` and ``silu_mul``
fuse the elementwise work around the matmuls. Plain functions here; the caller wraps them in
``triton.jit``, so ``TRITON_INTERPRET=1`` runs them on the CPU.
"""

# Triton's dialect: constexpr-branch ifs, CAPITAL constexpr parameters, `l` for the softmax sum.
# ruff: noqa: N803, E741, SIM108
# mypy: ignore-errors

import triton.language as tl

__all__ = ["add_rms_norm", "attend", "merge", "rope_kv_write", "silu_mul"]


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


def rope_kv_write(
    qkv_ptr,
    pos_ptr,
    cos_ptr,
    sin_ptr,
    slot_ptr,
    qk_ptr,
    k_cache_ptr,
    v_cache_ptr,
    stride_qkv,
    stride_cos,
    stride_qk,
    stride_kc,
    stride_vc,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    ROWS_PAD: tl.constexpr,
    HD: tl.constexpr,
    HD_PAD: tl.constexpr,
):
    # One program per token: its fused q|k|v row as a [heads, head_dim] tile. Query and key
    # heads are rotated (pairing d with d + HD/2, signed-sin tables) into qk; keys and values
    # go to the token's cache slot.
    t = tl.program_id(0)
    r = tl.arange(0, ROWS_PAD)
    d = tl.arange(0, HD_PAD)
    rows = HEADS + 2 * KV_HEADS
    mask = (r < rows)[:, None] & (d < HD)[None, :]
    base = qkv_ptr + t * stride_qkv + r[:, None] * HD
    x = tl.load(base + d[None, :], mask=mask, other=0.0).to(tl.float32)
    partner = tl.load(base + ((d + HD // 2) % HD)[None, :], mask=mask, other=0.0).to(tl.float32)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    cos = tl.load(cos_ptr + pos * stride_cos + d, mask=d < HD, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + pos * stride_cos + d, mask=d < HD, other=0.0).to(tl.float32)
    rotated = x * cos[None, :] + partner * sin[None, :]
    is_qk = (r < HEADS + KV_HEADS)[:, None]
    out = tl.where(is_qk, rotated, x).to(qk_ptr.dtype.element_ty)
    tl.store(qk_ptr + t * stride_qk + r[:, None] * HD + d[None, :], out, mask=mask & is_qk)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    k_rows = (r >= HEADS) & (r < HEADS + KV_HEADS)
    tl.store(
        k_cache_ptr + slot * stride_kc + (r - HEADS)[:, None] * HD + d[None, :],
        out,
        mask=mask & k_rows[:, None],
    )
    v_rows = r >= HEADS + KV_HEADS
    tl.store(
        v_cache_ptr + slot * stride_vc + (r - HEADS - KV_HEADS)[:, None] * HD + d[None, :],
        out,
        mask=mask & v_rows[:, None],
    )


def add_rms_norm(
    x_ptr,
    delta_ptr,
    w_ptr,
    out_ptr,
    stride_x,
    stride_delta,
    stride_out,
    n,
    eps,
    HAS_DELTA: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per row: x += delta (rounded to x's dtype, as a separate add would be), then
    # out = x / rms(x) * w, normalized in fp32.
    row = tl.program_id(0)
    c = tl.arange(0, BLOCK)
    mask = c < n
    x = tl.load(x_ptr + row * stride_x + c, mask=mask, other=0.0)
    if HAS_DELTA:
        delta = tl.load(delta_ptr + row * stride_delta + c, mask=mask, other=0.0)
        x = (x.to(tl.float32) + delta.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + row * stride_x + c, x, mask=mask)
    xf = x.to(tl.float32)
    rms = tl.sqrt(tl.sum(xf * xf, axis=0) / n + eps)
    w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + c, (xf / rms * w).to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul(
    gate_up_ptr,
    out_ptr,
    stride_in,
    stride_out,
    inter,
    BLOCK: tl.constexpr,
):
    # out = silu(gate) * up, with gate and up the two halves of the fused projection's row.
    row = tl.program_id(0)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = c < inter
    gate = tl.load(gate_up_ptr + row * stride_in + c, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * stride_in + inter + c, mask=mask, other=0.0).to(tl.float32)
    act = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * stride_out + c, act.to(out_ptr.dtype.element_ty), mask=mask)
