from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from inferno_models import LlamaLoader, ModelConfig, ModelFormatError
from inferno_models.testing import write_tiny_hf_dir
from safetensors.torch import save_file


@pytest.mark.parametrize("shards", [1, 3])
def test_round_trip(
    tmp_path: Path, config: ModelConfig, weights: dict[str, torch.Tensor], shards: int
) -> None:
    directory = write_tiny_hf_dir(tmp_path / "m", config, weights, shards=shards)
    model = LlamaLoader().load(directory)
    assert model.config == config
    for name, tensor in weights.items():
        assert torch.equal(model.weights[name], tensor)
    assert model.tokenizer.encode("the") == [260]
    assert model.chat_template is not None


def test_cast_to_dtype(hf_dir: Path) -> None:
    model = LlamaLoader().load(hf_dir, dtype=torch.float16)
    assert {t.dtype for t in model.weights.values()} == {torch.float16}


def test_shape_mismatch_names_tensor(
    tmp_path: Path, config: ModelConfig, weights: dict[str, torch.Tensor]
) -> None:
    bad = dict(weights)
    bad["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    directory = write_tiny_hf_dir(tmp_path / "bad", config, bad)
    with pytest.raises(ModelFormatError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        LlamaLoader().load(directory)


def test_missing_tensor(
    tmp_path: Path, config: ModelConfig, weights: dict[str, torch.Tensor]
) -> None:
    directory = write_tiny_hf_dir(tmp_path / "m", config, weights)
    partial = {k: v for k, v in weights.items() if k != "model.norm.weight"}
    save_file(partial, str(directory / "model.safetensors"))
    with pytest.raises(ModelFormatError, match=r"missing tensor model\.norm\.weight"):
        LlamaLoader().load(directory)


def test_index_naming_a_missing_shard(hf_dir: Path) -> None:
    index = {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFormatError, match="missing shard"):
        LlamaLoader().load(hf_dir)


def test_a_config_written_by_transformers_5_keeps_its_rope_scaling(
    tmp_path: Path, config: ModelConfig
) -> None:
    from transformers import LlamaConfig

    # transformers 5 writes rope_scaling (and rope_theta) as rope_parameters.
    LlamaConfig(**config.to_hf_dict()).save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert "rope_scaling" not in written
    assert written["rope_parameters"]["rope_type"] == "llama3"
    again = ModelConfig.from_hf_file(tmp_path / "config.json")
    assert again.rope_scaling == config.rope_scaling
    assert again == config
