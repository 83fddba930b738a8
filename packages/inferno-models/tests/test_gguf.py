from __future__ import annotations

from pathlib import Path

import pytest
import torch
from inferno_models import GGUFFile, LlamaLoader, ModelConfig
from inferno_models.gguf_loader import permute_rope, unpermute_rope
from inferno_models.gguf_summary import scan_gguf
from inferno_models.testing import random_weights, tiny_config, write_tiny_gguf

TOLERANCE = {
    "F32": 0.0,
    "F16": 1e-3,
    "BF16": 1e-2,
    "Q8_0": 1e-2,
    "Q5_0": 0.05,
    "Q5_1": 0.05,
    "Q4_0": 0.1,
    "Q4_1": 0.1,
}


def test_permutation_round_trip() -> None:
    w = torch.arange(8 * 4 * 3, dtype=torch.float32).reshape(8 * 4, 3)
    assert torch.equal(unpermute_rope(permute_rope(w, 4), 4), w)
    assert not torch.equal(permute_rope(w, 4), w)


@pytest.mark.parametrize("quantization", sorted(TOLERANCE))
def test_round_trip(
    tmp_path: Path,
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    quantization: str,
) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", config, weights, quantization=quantization)
    model = LlamaLoader().load(path)
    assert model.config.model_dump(exclude={"rms_norm_eps"}) == config.model_dump(
        exclude={"rms_norm_eps"}
    )
    assert model.config.rms_norm_eps == pytest.approx(config.rms_norm_eps)
    assert model.config.rope_scaling is not None
    assert model.config.rope_scaling.type == "llama3"
    assert set(model.weights) == set(weights)
    for name, tensor in weights.items():
        err = (model.weights[name] - tensor).abs().max().item()
        assert err <= TOLERANCE[quantization], (name, err)


def test_tied_embeddings_and_dtype(tmp_path: Path) -> None:
    config = tiny_config(tie_word_embeddings=True, llama3_rope=False)
    weights = random_weights(config)
    path = write_tiny_gguf(tmp_path / "tied.gguf", config, weights)
    model = LlamaLoader().load(path, dtype=torch.bfloat16)
    assert model.config.tie_word_embeddings
    assert model.config.rope_scaling is None
    assert "lm_head.weight" not in model.weights
    assert all(t.dtype == torch.bfloat16 for t in model.weights.values())


def test_metadata_tokenizer_and_template(gguf_path: Path) -> None:
    model = LlamaLoader().load(gguf_path)
    assert model.tokenizer.decode(model.tokenizer.encode("the answer")) == "the answer"
    assert model.chat_template is not None
    text = model.chat_template.render([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert model.name == "tiny"
    assert model.nbytes() == sum(t.numel() * 4 for t in model.weights.values())


def test_summary_matches_full_parse(gguf_path: Path, config: ModelConfig) -> None:
    summary = scan_gguf(gguf_path)
    full = GGUFFile(gguf_path)
    assert summary.metadata["general.architecture"] == full.architecture == "llama"
    assert summary.parameter_count == config.num_parameters()
    assert summary.quantization == full.quantization() == "F32"
    assert summary.metadata["tokenizer.ggml.tokens"] == len(full.get("tokenizer.ggml.tokens"))
