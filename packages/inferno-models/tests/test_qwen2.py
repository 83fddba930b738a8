"""Qwen2 (Llama with biases on Q, K and V): config.json, GGUF and conversion, against
transformers' own Qwen2 loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from inferno_models import (
    LlamaLoader,
    ModelConfig,
    ModelFormatError,
    UnsupportedModelError,
    convert_gguf_to_hf,
)
from inferno_models.names import expected_shapes
from inferno_models.testing import random_weights, tiny_config, write_tiny_gguf

TEXTS = ["hello there", "numbers 12345 and 678", "the théâtre\n\n  spaces", "Ångström ﬁ"]


@pytest.fixture
def qwen2() -> ModelConfig:
    return tiny_config(architecture="qwen2", llama3_rope=False, tie_word_embeddings=True)


def _hf_qwen2(config: ModelConfig, weights: dict[str, torch.Tensor]) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hf: Any = Qwen2ForCausalLM(Qwen2Config(**config.to_hf_dict()))
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"}
    return hf.eval()


def test_the_config_round_trips_through_transformers(qwen2: ModelConfig, tmp_path: Path) -> None:
    from transformers import Qwen2Config

    hf = Qwen2Config(**qwen2.to_hf_dict())
    hf.save_pretrained(tmp_path)
    again = ModelConfig.from_hf_file(tmp_path / "config.json")
    assert again == qwen2
    assert (again.architecture, again.qkv_bias, again.o_bias) == ("qwen2", True, False)
    shapes = expected_shapes(again)
    assert shapes["model.layers.1.self_attn.k_proj.bias"] == (qwen2.num_key_value_heads * 16,)
    assert "model.layers.0.self_attn.o_proj.bias" not in shapes


def test_parameter_count_includes_the_biases(qwen2: ModelConfig) -> None:
    weights = random_weights(qwen2)
    assert qwen2.num_parameters() == sum(t.numel() for t in weights.values())
    assert sum(t.numel() for t in _hf_qwen2(qwen2, weights).parameters()) == sum(
        t.numel() for t in weights.values()
    )


def test_mlp_biases_are_refused(qwen2: ModelConfig) -> None:
    with pytest.raises(UnsupportedModelError, match="mlp_bias"):
        ModelConfig.from_hf_dict({**qwen2.to_hf_dict(), "mlp_bias": True})


def test_sliding_windows_as_transformers_applies_them(qwen2: ModelConfig) -> None:
    hf = qwen2.to_hf_dict()
    assert hf["max_position_embeddings"] == 512
    every = {**hf, "use_sliding_window": True, "sliding_window": 64, "max_window_layers": 0}
    assert ModelConfig.from_hf_dict(every).sliding_window == 64
    assert ModelConfig.from_hf_dict(every).max_position_embeddings == 512
    # From layer max_window_layers on (28 by default): with 2 layers, none slides.
    none = ModelConfig.from_hf_dict({**every, "max_window_layers": 28})
    assert (none.sliding_window, none.max_position_embeddings) == (None, 512)
    # Some layers slide and some do not: the window becomes the context instead.
    mixed = ModelConfig.from_hf_dict({**every, "max_window_layers": 1})
    assert (mixed.sliding_window, mixed.max_position_embeddings) == (None, 64)
    listed = {**every, "layer_types": ["full_attention", "sliding_attention"]}
    assert ModelConfig.from_hf_dict(listed).max_position_embeddings == 64
    # Qwen2 configs name a window they do not use: only use_sliding_window turns it on.
    unused = {**every, "use_sliding_window": False}
    assert ModelConfig.from_hf_dict(unused).max_position_embeddings == 512
    assert ModelConfig.from_hf_dict(unused).sliding_window is None
    from transformers import Qwen2Config

    written = ModelConfig.from_hf_dict(every).to_hf_dict()
    assert Qwen2Config(**written).layer_types == ["sliding_attention"] * 2
    assert ModelConfig.from_hf_dict(written) == ModelConfig.from_hf_dict(every)
    # Mistral slides in every layer whenever its config names a window.
    mistral = {**tiny_config().to_hf_dict(), "model_type": "mistral", "sliding_window": 128}
    assert ModelConfig.from_hf_dict(mistral).sliding_window == 128
    assert ModelConfig.from_hf_dict({**mistral, "sliding_window": None}).sliding_window is None
    # A Llama's config.json has no window: transformers' Llama ignores one.
    llama = {**tiny_config().to_hf_dict(), "sliding_window": 128}
    assert ModelConfig.from_hf_dict(llama).sliding_window is None
    written = ModelConfig.from_hf_dict(mistral).to_hf_dict()
    assert (written["model_type"], written["sliding_window"]) == ("mistral", 128)


def test_invalid_bias_combinations_are_rejected(qwen2: ModelConfig) -> None:
    with pytest.raises(ValueError, match="qwen2 has biases"):
        ModelConfig.model_validate({**qwen2.model_dump(), "qkv_bias": False})
    with pytest.raises(ValueError, match="attention_bias covers"):
        ModelConfig.model_validate({**tiny_config().model_dump(), "qkv_bias": True})


def test_a_transformers_checkpoint_loads_with_its_biases(
    qwen2: ModelConfig, tmp_path: Path
) -> None:
    weights = random_weights(qwen2, seed=4)
    hf = _hf_qwen2(qwen2, weights)
    hf.save_pretrained(tmp_path / "ckpt")
    # A tokenizer is part of a loadable directory; the tiny one stands in for Qwen2's.
    from inferno_models.testing import tiny_tokenizer

    tiny_tokenizer().save(tmp_path / "ckpt")
    ours = LlamaLoader().load(tmp_path / "ckpt")
    assert ours.config.architecture == "qwen2"
    for name, tensor in weights.items():
        assert torch.equal(ours.weights[name], tensor), name


def test_a_gguf_loads_here_and_in_transformers_alike(qwen2: ModelConfig, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = random_weights(qwen2, seed=6)
    path = write_tiny_gguf(tmp_path / "q.gguf", qwen2, weights)
    ours = LlamaLoader().load(path)
    assert ours.config.architecture == "qwen2"
    assert ours.config.qkv_bias
    # Qwen2 files keep the Hugging Face row order: nothing is un-permuted on the way in.
    for name, tensor in weights.items():
        assert torch.equal(ours.weights[name], tensor), name
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf", dtype=torch.float32)
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    state = hf.state_dict()
    for name, tensor in ours.weights.items():
        assert torch.equal(state[name], tensor), name
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file="q.gguf")
    for text in TEXTS:
        assert (
            ours.tokenizer.encode(text, add_special_tokens=False)
            == tok(text, add_special_tokens=False).input_ids
        ), text


def test_qwen2_splits_digits_one_at_a_time(qwen2: ModelConfig, tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "q.gguf", qwen2, random_weights(qwen2))
    tokenizer = LlamaLoader().load(path).tokenizer
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode("x 2024", add_special_tokens=False)]
    assert pieces[-4:] == ["2", "0", "2", "4"]


def test_conversion_writes_a_qwen2_directory(qwen2: ModelConfig, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    weights = random_weights(qwen2, seed=8)
    src = write_tiny_gguf(tmp_path / "q.gguf", qwen2, weights, quantization="Q8_0")
    out = convert_gguf_to_hf(src, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    ours = LlamaLoader().load(src)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    ids = torch.tensor([[5, 9, 40, 77, 3]])
    want = _hf_qwen2(ours.config, ours.weights)(ids).logits
    torch.testing.assert_close(hf(ids).logits, want)


def test_a_qwen2_gguf_missing_a_bias_names_it(qwen2: ModelConfig, tmp_path: Path) -> None:
    weights = random_weights(qwen2)
    del weights["model.layers.1.self_attn.v_proj.bias"]
    path = write_tiny_gguf(tmp_path / "q.gguf", qwen2, weights)
    with pytest.raises(
        ModelFormatError, match=r"q\.gguf: missing tensor for .*1\.self_attn\.v_proj\.bias"
    ):
        LlamaLoader().load(path)
