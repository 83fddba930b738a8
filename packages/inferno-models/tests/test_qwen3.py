"""Qwen3 (Llama with an RMSNorm on every query and key head, heads wider than
``hidden / heads``): config.json, GGUF and conversion, against transformers' own Qwen3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from inferno_models import LlamaLoader, ModelConfig, ModelFormatError, convert_gguf_to_hf
from inferno_models.names import expected_shapes
from inferno_models.testing import (
    random_weights,
    tiny_config,
    transformers_model,
    write_tiny_gguf,
)


@pytest.fixture
def qwen3() -> ModelConfig:
    return tiny_config(
        architecture="qwen3", head_dim=32, llama3_rope=False, tie_word_embeddings=True
    )


def test_the_config_round_trips_through_transformers(qwen3: ModelConfig, tmp_path: Path) -> None:
    from transformers import Qwen3Config

    Qwen3Config(**qwen3.to_hf_dict()).save_pretrained(tmp_path)
    again = ModelConfig.from_hf_file(tmp_path / "config.json")
    assert again == qwen3
    assert (again.architecture, again.qk_norm, again.qkv_bias) == ("qwen3", True, False)
    shapes = expected_shapes(again)
    assert shapes["model.layers.1.self_attn.q_norm.weight"] == (32,)
    assert shapes["model.layers.1.self_attn.q_proj.weight"] == (4 * 32, 64)
    assert shapes["model.layers.1.self_attn.o_proj.weight"] == (64, 4 * 32)


def test_parameter_count_matches_transformers(qwen3: ModelConfig) -> None:
    weights = random_weights(qwen3)
    assert qwen3.num_parameters() == sum(t.numel() for t in weights.values())
    assert sum(t.numel() for t in transformers_model(qwen3, weights).parameters()) == sum(
        t.numel() for t in weights.values()
    )


def test_qk_norms_belong_to_qwen3_alone(qwen3: ModelConfig) -> None:
    with pytest.raises(ValueError, match="qk_norm"):
        ModelConfig.model_validate({**qwen3.model_dump(), "qk_norm": False})
    with pytest.raises(ValueError, match="qk_norm"):
        ModelConfig.model_validate({**tiny_config().model_dump(), "qk_norm": True})
    # Qwen3's attention_bias, like Llama's, covers Q, K, V and the output together.
    biased = ModelConfig.from_hf_dict({**qwen3.to_hf_dict(), "attention_bias": True})
    assert (biased.qkv_bias, biased.o_bias) == (True, True)


def test_a_transformers_checkpoint_loads_with_its_norms(qwen3: ModelConfig, tmp_path: Path) -> None:
    from inferno_models.testing import tiny_tokenizer

    weights = random_weights(qwen3, seed=4)
    transformers_model(qwen3, weights).save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save(tmp_path / "ckpt")
    ours = LlamaLoader().load(tmp_path / "ckpt")
    assert ours.config.architecture == "qwen3"
    for name, tensor in weights.items():
        assert torch.equal(ours.weights[name], tensor), name


def test_a_gguf_loads_here_and_in_transformers_alike(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    # transformers' GGUF reader leaves a Qwen3 file's head width at Qwen3Config's default
    # (128, that of every released Qwen3), so this file uses it.
    qwen3 = tiny_config(
        architecture="qwen3", head_dim=128, llama3_rope=False, tie_word_embeddings=True
    )
    weights = random_weights(qwen3, seed=6)
    path = write_tiny_gguf(tmp_path / "q.gguf", qwen3, weights)
    ours = LlamaLoader().load(path)
    # The file stores the epsilon as float32.
    assert ours.config == qwen3.model_copy(update={"rms_norm_eps": ours.config.rms_norm_eps})
    # Qwen3 files keep the Hugging Face row order, as Qwen2's do.
    for name, tensor in weights.items():
        assert torch.equal(ours.weights[name], tensor), name
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf", dtype=torch.float32)
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    state = hf.state_dict()
    for name, tensor in ours.weights.items():
        assert torch.equal(state[name], tensor), name


def test_conversion_writes_a_qwen3_directory(qwen3: ModelConfig, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    weights = random_weights(qwen3, seed=8)
    src = write_tiny_gguf(tmp_path / "q.gguf", qwen3, weights, quantization="Q8_0")
    out = convert_gguf_to_hf(src, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen3"
    ours = LlamaLoader().load(src)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    ids = torch.tensor([[5, 9, 40, 77, 3]])
    want = transformers_model(ours.config, ours.weights)(ids).logits
    torch.testing.assert_close(hf(ids).logits, want)


def test_a_qwen3_gguf_missing_a_norm_names_it(qwen3: ModelConfig, tmp_path: Path) -> None:
    weights = random_weights(qwen3)
    del weights["model.layers.1.self_attn.k_norm.weight"]
    path = write_tiny_gguf(tmp_path / "q.gguf", qwen3, weights)
    with pytest.raises(
        ModelFormatError, match=r"q\.gguf: missing tensor for .*1\.self_attn\.k_norm\.weight"
    ):
        LlamaLoader().load(path)
