"""SmolLM3 (Llama whose every fourth layer skips the rotary embedding, "NoPE"): config.json,
GGUF and conversion, against transformers' own SmolLM3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from inferno_models import LlamaLoader, ModelConfig, ModelFormatError, convert_gguf_to_hf
from inferno_models.testing import (
    random_weights,
    tiny_config,
    tiny_tokenizer,
    transformers_model,
    write_tiny_gguf,
)


@pytest.fixture
def smollm3() -> ModelConfig:
    return tiny_config(architecture="smollm3", num_hidden_layers=8, llama3_rope=False)


def test_every_fourth_layer_skips_the_rotation(smollm3: ModelConfig) -> None:
    assert smollm3.nope_layers == (3, 7)
    hf = transformers_model(smollm3)
    assert [layer.self_attn.use_rope for layer in hf.model.layers] == [1, 1, 1, 0, 1, 1, 1, 0]


def test_the_config_round_trips_through_transformers(smollm3: ModelConfig, tmp_path: Path) -> None:
    from transformers import SmolLM3Config

    SmolLM3Config(**smollm3.to_hf_dict()).save_pretrained(tmp_path)
    assert ModelConfig.from_hf_file(tmp_path / "config.json") == smollm3
    # Without the list, transformers' own default: a NoPE layer every no_rope_layer_interval.
    fields = {**smollm3.to_hf_dict(), "no_rope_layer_interval": 2}
    del fields["no_rope_layers"]
    assert ModelConfig.from_hf_dict(fields).nope_layers == (1, 3, 5, 7)
    assert SmolLM3Config(**fields).no_rope_layers == [1, 0, 1, 0, 1, 0, 1, 0]


def test_nope_layers_are_validated(smollm3: ModelConfig) -> None:
    with pytest.raises(ValueError, match="SmolLM3's"):
        ModelConfig.model_validate({**tiny_config().model_dump(), "nope_layers": (1,)})
    with pytest.raises(ValueError, match="not there"):
        ModelConfig.model_validate({**smollm3.model_dump(), "nope_layers": (8,)})
    with pytest.raises(ModelFormatError, match="no_rope_layers has 3 entries for 8 layers"):
        ModelConfig.from_hf_dict({**smollm3.to_hf_dict(), "no_rope_layers": [1, 1, 0]})


def test_a_transformers_checkpoint_loads(smollm3: ModelConfig, tmp_path: Path) -> None:
    weights = random_weights(smollm3, seed=4)
    transformers_model(smollm3, weights).save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save(tmp_path / "ckpt")
    ours = LlamaLoader().load(tmp_path / "ckpt")
    assert ours.config == smollm3
    for name, tensor in weights.items():
        assert torch.equal(ours.weights[name], tensor), name


def test_a_gguf_round_trips_with_llamas_permuted_rows(smollm3: ModelConfig, tmp_path: Path) -> None:
    weights = random_weights(smollm3, seed=6)
    path = write_tiny_gguf(tmp_path / "s.gguf", smollm3, weights)
    ours = LlamaLoader().load(path)
    # llama.cpp has no key for the NoPE layers: the loader knows SmolLM3's every fourth.
    assert ours.config.architecture == "smollm3"
    assert ours.config.nope_layers == (3, 7)
    for name, tensor in weights.items():
        assert torch.equal(ours.weights[name], tensor), name


def test_conversion_writes_a_smollm3_directory(smollm3: ModelConfig, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    weights = random_weights(smollm3, seed=8)
    src = write_tiny_gguf(tmp_path / "s.gguf", smollm3, weights, quantization="Q8_0")
    out = convert_gguf_to_hf(src, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["model_type"] == "smollm3"
    ours = LlamaLoader().load(src)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(hf).__name__ == "SmolLM3ForCausalLM"
    ids = torch.tensor([[5, 9, 40, 77, 3, 12, 90]])
    want = transformers_model(ours.config, ours.weights)(ids).logits
    torch.testing.assert_close(hf(ids).logits, want)
