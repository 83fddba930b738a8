"""Dequantization of GGML block formats to float32, vectorized with numpy.

Each function takes the raw bytes of a tensor as a ``uint8`` array whose last axis is a whole
number of blocks, and returns float32 values with the last axis expanded to elements.
The layouts are those of ggml: a 32-element block with one float16 scale (Q4_0, Q5_0, Q8_0,
IQ4_NL) or a scale and an offset (Q4_1, Q5_1), or a 256-element super-block of sub-blocks whose
scales are packed in 4 bits (Q2_K), 6 bits (Q3_K, Q4_K, Q5_K, IQ4_XS) or stored as int8 (Q6_K).
The IQ4 types index a fixed table of 16 non-uniform levels instead of using the 4-bit code as
the value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = ["BLOCK_SIZES", "DEQUANTIZERS", "dequantize"]

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

#: (elements per block, bytes per block) of each supported quantized type, by ggml type name.
BLOCK_SIZES: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "IQ4_NL": (32, 18),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
    "IQ4_XS": (256, 136),
}

#: The 16 levels an IQ4_NL/IQ4_XS code selects (ggml's table, scaled by the block's scale).
_IQ4_LEVELS = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32
)


def _blocks(raw: U8, kind: str) -> U8:
    elems, nbytes = BLOCK_SIZES[kind]
    del elems
    return raw.reshape(-1, nbytes)


def _f16(b: U8) -> F32:
    """Little-endian float16 fields (``[..., 2]`` bytes) as float32 ``[..., 1]``."""
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _low_high_nibbles(qs: U8) -> U8:
    """Elements stored as ``[low nibbles of all bytes, then high nibbles]``."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _q4_0(raw: U8) -> F32:
    b = _blocks(raw, "Q4_0")
    d = _f16(b[:, 0:2])
    q = _low_high_nibbles(b[:, 2:]).astype(np.int8) - np.int8(8)
    return d * q.astype(np.float32)


def _q4_1(raw: U8) -> F32:
    b = _blocks(raw, "Q4_1")
    d, m = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    return d * _low_high_nibbles(b[:, 4:]).astype(np.float32) + m


def _fifth_bits(qh: U8) -> U8:
    """The 32 fifth bits of a Q5_0/Q5_1 block (a little-endian uint32), as ``0`` or ``16``."""
    bits = np.unpackbits(np.ascontiguousarray(qh), axis=-1, bitorder="little")
    return bits << np.uint8(4)


def _q5_0(raw: U8) -> F32:
    b = _blocks(raw, "Q5_0")
    d = _f16(b[:, 0:2])
    q = (_low_high_nibbles(b[:, 6:]) | _fifth_bits(b[:, 2:6])).astype(np.int8) - np.int8(16)
    return d * q.astype(np.float32)


def _q5_1(raw: U8) -> F32:
    b = _blocks(raw, "Q5_1")
    d, m = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    q = _low_high_nibbles(b[:, 8:]) | _fifth_bits(b[:, 4:8])
    return d * q.astype(np.float32) + m


def _iq4_nl(raw: U8) -> F32:
    b = _blocks(raw, "IQ4_NL")
    d = _f16(b[:, 0:2])
    return d * _IQ4_LEVELS[_low_high_nibbles(b[:, 2:])]


def _q8_0(raw: U8) -> F32:
    b = _blocks(raw, "Q8_0")
    d = _f16(b[:, 0:2])
    return d * np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(np.float32)


def _k_scales_mins(packed: U8) -> tuple[F32, F32]:
    """Unpack the eight 6-bit scales and eight 6-bit mins of a Q4_K/Q5_K super-block.

    Bytes 0-3 hold scales 0-3 (low 6 bits), bytes 4-7 mins 0-3 (low 6 bits); bytes 8-11 hold the
    low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high nibble), whose top 2 bits are the
    spare top bits of bytes 0-3 and 4-7 respectively.
    """
    lo, mid, hi = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 6) << 4)], axis=-1)
    mins = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return scales.astype(np.float32), mins.astype(np.float32)


def _q4_k_like(d: F32, dmin: F32, scales: F32, mins: F32, q: F32) -> F32:
    """``q`` is ``[n, 8, 32]`` (sub-block values); returns ``[n, 256]``."""
    out = (d * scales)[:, :, None] * q - (dmin * mins)[:, :, None]
    return out.reshape(q.shape[0], 256)


def _nibble_subblocks(qs: U8) -> U8:
    """128 bytes -> ``[n, 8, 32]``: each 32-byte chunk gives a low-nibble then a high-nibble
    sub-block."""
    chunks = qs.reshape(-1, 4, 32)
    return np.stack([chunks & 0x0F, chunks >> 4], axis=2).reshape(-1, 8, 32)


def _crumb_subblocks(qs: U8) -> U8:
    """64 bytes of 2-bit codes -> ``[n, 16, 16]``: each half of 32 bytes holds four bit planes
    (shift 0, 2, 4, 6), and each plane two sub-blocks of 16 (bytes 0-15, then 16-31)."""
    halves = qs.reshape(-1, 2, 1, 2, 16)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None, None]
    return ((halves >> shifts) & np.uint8(3)).reshape(-1, 16, 16)


def _q2_k(raw: U8) -> F32:
    b = _blocks(raw, "Q2_K")
    packed = b[:, 0:16]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    scales = (packed & 0x0F).astype(np.float32)
    mins = (packed >> 4).astype(np.float32)
    q = _crumb_subblocks(b[:, 16:80]).astype(np.float32)
    out = (d * scales)[:, :, None] * q - (dmin * mins)[:, :, None]
    return out.reshape(-1, 256)


def _q3_k(raw: U8) -> F32:
    b = _blocks(raw, "Q3_K")
    hmask, qs, packed = b[:, 0:32], b[:, 32:96], b[:, 96:108]
    d = _f16(b[:, 108:110])
    # Sixteen 6-bit scales: the low 4 bits are the nibbles of bytes 0-7 (low nibbles first),
    # the high 2 bits come from bytes 8-11, one 2-bit field per scale.
    i = np.arange(16)
    low = (packed[:, i % 8] >> (4 * (i // 8)).astype(np.uint8)) & 0x0F
    high = (packed[:, 8 + i % 4] >> (2 * (i // 4)).astype(np.uint8)) & 3
    scales = (low | (high << 4)).astype(np.float32) - 32
    # Bit k of each hmask byte is the third bit of the codes in bit plane k; a clear bit
    # means the code is 4 lower.
    planes = np.arange(8, dtype=np.uint8)[None, :, None]
    third = ((hmask[:, None, :] >> planes) & 1).reshape(-1, 16, 16)
    q = _crumb_subblocks(qs).astype(np.float32) - 4 * (1 - third.astype(np.float32))
    out = (d * scales)[:, :, None] * q
    return out.reshape(-1, 256)


def _iq4_xs(raw: U8) -> F32:
    b = _blocks(raw, "IQ4_XS")
    d = _f16(b[:, 0:2])
    high = b[:, 2:4].copy().view(np.uint16)  # the top 2 bits of each of the 8 scales
    low = b[:, 4:8]
    j = np.arange(8)
    scale_low = (low[:, j // 2] >> (4 * (j % 2)).astype(np.uint8)) & 0x0F
    scale_high = (high >> (2 * j).astype(np.uint16)) & 3
    scales = (scale_low.astype(np.int16) | (scale_high.astype(np.int16) << 4)) - 32
    codes = b[:, 8:136].reshape(-1, 8, 16)
    levels = _IQ4_LEVELS[np.concatenate([codes & 0x0F, codes >> 4], axis=-1)]  # [n, 8, 32]
    out: F32 = ((d * scales.astype(np.float32))[:, :, None] * levels).reshape(-1, 256)
    return out


def _q4_k(raw: U8) -> F32:
    b = _blocks(raw, "Q4_K")
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    scales, mins = _k_scales_mins(b[:, 4:16])
    q = _nibble_subblocks(b[:, 16:144]).astype(np.float32)
    return _q4_k_like(d, dmin, scales, mins, q)


def _q5_k(raw: U8) -> F32:
    b = _blocks(raw, "Q5_K")
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    scales, mins = _k_scales_mins(b[:, 4:16])
    qh = b[:, 16:48]
    low = _nibble_subblocks(b[:, 48:176])
    # Bit j of each qh byte is the fifth bit of sub-block j at that byte's position.
    shifts = np.arange(8, dtype=np.uint8)[None, :, None]
    high = ((qh[:, None, :] >> shifts) & 1) << 4
    q = (low | high).astype(np.float32)
    return _q4_k_like(d, dmin, scales, mins, q)


def _q6_k(raw: U8) -> F32:
    b = _blocks(raw, "Q6_K")
    ql, qh = b[:, 0:128], b[:, 128:192]
    scales = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)
    d = _f16(b[:, 208:210])
    n = b.shape[0]
    # Two halves of 128 elements; each half has 64 ql bytes and 32 qh bytes.
    ql = ql.reshape(n, 2, 2, 32)  # [half, first/second 32 bytes, 32]
    qh = qh.reshape(n, 2, 1, 32)
    low = np.stack([ql[:, :, 0] & 0x0F, ql[:, :, 1] & 0x0F, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], 2)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]
    high = ((qh >> shifts) & 3) << 4
    q = (low | high).astype(np.int16) - 32  # [n, half, quarter, 32]
    # Each 16 consecutive elements share one int8 scale.
    s = scales.reshape(n, 2, 4, 2, 1)
    vals = q.reshape(n, 2, 4, 2, 16).astype(np.float32) * s
    out: F32 = (d[:, :, None, None, None] * vals).reshape(n, 256)
    return out


DEQUANTIZERS: dict[str, Callable[[U8], F32]] = {
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q8_0": _q8_0,
    "IQ4_NL": _iq4_nl,
    "Q2_K": _q2_k,
    "Q3_K": _q3_k,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
    "IQ4_XS": _iq4_xs,
}


def dequantize(raw: U8, kind: str, shape: tuple[int, ...]) -> F32:
    """Dequantize the bytes of a ``kind`` tensor to float32 of ``shape`` (row-major).

    Raises:
        KeyError: ``kind`` is not a supported quantized type.
        ValueError: the byte count does not match ``shape``.
    """
    elems, nbytes = BLOCK_SIZES[kind]
    count = int(np.prod(shape))
    if count % elems or raw.size != count // elems * nbytes:
        raise ValueError(
            f"{kind} data of {raw.size} bytes does not hold {count} elements "
            f"(expected {count // elems * nbytes} bytes)"
        )
    values: F32 = DEQUANTIZERS[kind](np.ascontiguousarray(raw).reshape(-1))
    return values.reshape(shape)
