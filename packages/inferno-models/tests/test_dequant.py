from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as reference_dequantize
from inferno_models.dequant import BLOCK_SIZES, dequantize

# Byte offsets of each block's float16 fields (the rest of the types have one, at 0).
_SCALE_OFFSETS = {
    "Q4_1": [0, 2],
    "Q5_1": [0, 2],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q2_K": [80, 82],
    "Q3_K": [108],
    "Q6_K": [208],
}


def _random_blocks(kind: str, blocks: int, rng: np.random.Generator) -> np.ndarray:
    _, nbytes = BLOCK_SIZES[kind]
    raw = rng.integers(0, 256, size=(blocks, nbytes), dtype=np.uint8)
    # Scale fields must be finite float16 for the comparison to be meaningful.
    offsets = _SCALE_OFFSETS.get(kind, [0])
    for row in raw:
        for off in offsets:
            row[off : off + 2] = np.frombuffer(np.float16(rng.uniform(-2, 2)).tobytes(), np.uint8)
    return raw.reshape(-1)


@pytest.mark.parametrize("kind", sorted(BLOCK_SIZES))
def test_matches_reference_bit_for_bit(kind: str) -> None:
    rng = np.random.default_rng(len(kind))
    elems, _ = BLOCK_SIZES[kind]
    raw = _random_blocks(kind, 12, rng)
    ours = dequantize(raw, kind, (3, 4 * elems))
    ref = reference_dequantize(raw.reshape(3, -1), getattr(gguf.GGMLQuantizationType, kind))
    np.testing.assert_array_equal(ours, ref.reshape(3, 4 * elems))


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_quantize_then_dequantize_is_close(kind: str) -> None:
    from gguf.quants import quantize

    values = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    packed = quantize(values, getattr(gguf.GGMLQuantizationType, kind))
    restored = dequantize(packed.reshape(-1), kind, values.shape)
    tolerance = {"Q8_0": 0.02, "Q5_0": 0.18, "Q5_1": 0.18}.get(kind, 0.35)
    assert np.abs(restored - values).max() < tolerance


def test_wrong_byte_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected 36 bytes"):
        dequantize(np.zeros(35, np.uint8), "Q4_0", (64,))
