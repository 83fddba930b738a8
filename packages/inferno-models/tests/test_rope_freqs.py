"""Llama 3.1 rope scaling as llama.cpp's converter stores it: a ``rope_freqs.weight`` tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from inferno_models import LlamaLoader, ModelConfig, ModelFormatError, UnsupportedModelError
from inferno_models.config import RopeScaling
from inferno_models.gguf_loader import ROPE_FREQS, fit_rope_scaling, rope_divisors
from inferno_models.testing import random_weights, tiny_config, write_tiny_gguf

LLAMA_31 = RopeScaling(type="llama3", factor=8.0, original_max_position_embeddings=8192)
LLAMA_32 = RopeScaling(type="llama3", factor=32.0, original_max_position_embeddings=8192)


def _same_frequencies(a: RopeScaling | None, b: RopeScaling | None, head_dim: int) -> bool:
    return bool(
        np.allclose(rope_divisors(a, head_dim, 5e5), rope_divisors(b, head_dim, 5e5), rtol=1e-6)
    )


@pytest.mark.parametrize(
    ("scaling", "head_dim"), [(LLAMA_31, 128), (LLAMA_32, 64), (LLAMA_32, 128)]
)
def test_fit_recovers_llama3_parameters(scaling: RopeScaling, head_dim: int) -> None:
    divisors = rope_divisors(scaling, head_dim, 5e5).astype(np.float32)
    assert ((divisors > 1) & (divisors < scaling.factor)).sum() >= 2  # the band is fitted
    fitted = fit_rope_scaling(divisors, head_dim, 5e5, original_context=None)
    assert fitted is not None
    assert fitted.type == "llama3"
    assert fitted.factor == pytest.approx(scaling.factor)
    assert fitted.original_max_position_embeddings == scaling.original_max_position_embeddings
    assert fitted == scaling


def test_fit_of_other_bands_gives_the_same_frequencies() -> None:
    odd = RopeScaling(
        type="llama3",
        factor=16.0,
        low_freq_factor=2.0,
        high_freq_factor=8.0,
        original_max_position_embeddings=5000,
    )
    fitted = fit_rope_scaling(rope_divisors(odd, 128, 5e5), 128, 5e5, original_context=None)
    assert fitted is not None
    assert fitted.type == "llama3"
    assert fitted.original_max_position_embeddings != odd.original_max_position_embeddings
    assert _same_frequencies(fitted, odd, 128)


def test_fit_without_divisors_inside_the_band() -> None:
    # head_dim 8 at theta 5e5: wavelengths 6.3, 168, 4443, 1.2e5; a band of [500, 4000]
    # holds none of them, so the context comes from the metadata when it fits.
    band = RopeScaling(
        type="llama3", factor=4.0, high_freq_factor=8.0, original_max_position_embeddings=4000
    )
    divisors = rope_divisors(band, 8, 5e5)
    assert set(divisors.tolist()) == {1.0, 4.0}
    fitted = fit_rope_scaling(divisors, 8, 5e5, original_context=4000)
    assert fitted is not None
    assert _same_frequencies(fitted, band, 8)
    assert fitted.original_max_position_embeddings == 4000
    guessed = fit_rope_scaling(divisors, 8, 5e5, original_context=None)
    assert guessed is not None
    assert _same_frequencies(guessed, band, 8)


def test_fit_of_trivial_divisors() -> None:
    assert fit_rope_scaling(np.ones(32), 64, 5e5, original_context=None) is None
    linear = fit_rope_scaling(np.full(32, 2.0), 64, 5e5, original_context=None)
    assert linear == RopeScaling(type="linear", factor=2.0)
    with pytest.raises(ValueError, match="positive"):
        fit_rope_scaling(np.zeros(32), 64, 5e5, original_context=None)


def test_gguf_with_rope_freqs_loads_the_scaling(tmp_path: Path) -> None:
    config = tiny_config()
    weights = random_weights(config, seed=3)
    with_keys = LlamaLoader().load(write_tiny_gguf(tmp_path / "keys.gguf", config, weights))
    path = write_tiny_gguf(tmp_path / "freqs.gguf", config, weights, rope_freqs=True)
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    assert ROPE_FREQS in {t.name for t in reader.tensors}
    assert not [k for k in reader.fields if "rope.scaling" in k]
    loaded = LlamaLoader().load(path)
    assert loaded.config.rope_scaling == config.rope_scaling
    assert loaded.config == with_keys.config
    assert set(loaded.weights) == set(weights)
    assert all(torch.equal(loaded.weights[n], with_keys.weights[n]) for n in weights)


def test_rope_freqs_that_contradict_the_keys(tmp_path: Path, config: ModelConfig) -> None:
    other = RopeScaling(type="llama3", factor=2.0, original_max_position_embeddings=64)
    wrong = rope_divisors(other, config.head_dim, config.rope_theta).astype(np.float32)
    path = write_tiny_gguf(
        tmp_path / "both.gguf", config, random_weights(config), extra_tensors={ROPE_FREQS: wrong}
    )
    with pytest.raises(ModelFormatError, match=r"both\.gguf: rope_freqs\.weight disagrees"):
        LlamaLoader().load(path)


@pytest.mark.parametrize(
    ("divisors", "error", "message"),
    [
        (np.array([1, 3, 2, 5, 1, 7, 2, 8], np.float32), UnsupportedModelError, "not a rope"),
        (np.array([1, 1, 1, 1, 0, 1, 1, 1], np.float32), ModelFormatError, "non-positive"),
        (np.ones(5, np.float32), ModelFormatError, r"shape \[5\], expected \[8\]"),
    ],
)
def test_bad_rope_freqs(
    tmp_path: Path, divisors: np.ndarray, error: type[Exception], message: str
) -> None:
    config = tiny_config(llama3_rope=False)
    path = write_tiny_gguf(
        tmp_path / "bad.gguf", config, random_weights(config), extra_tensors={ROPE_FREQS: divisors}
    )
    with pytest.raises(error, match=message) as info:
        LlamaLoader().load(path)
    assert str(path) in str(info.value)
