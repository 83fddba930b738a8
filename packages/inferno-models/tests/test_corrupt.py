"""Every kind of bad model file gives a typed error that names the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from inferno_models import (
    LlamaLoader,
    ModelConfig,
    ModelFormatError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from inferno_models.gguf_summary import scan_gguf
from inferno_models.testing import write_tiny_gguf


def _load(path: Path) -> None:
    LlamaLoader().load(path)


def test_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ModelFormatError, match=r"model\.gguf: not a GGUF file") as info:
        _load(path)
    assert info.value.path == str(path)
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        scan_gguf(path)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file(gguf_path: Path, keep: float) -> None:
    data = gguf_path.read_bytes()
    gguf_path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFormatError, match=r"tiny\.gguf: .*truncated"):
        _load(gguf_path)


def test_truncated_header(gguf_path: Path) -> None:
    gguf_path.write_bytes(gguf_path.read_bytes()[:200])
    with pytest.raises(ModelFormatError, match=r"tiny\.gguf"):
        _load(gguf_path)
    with pytest.raises(ModelFormatError, match="truncated"):
        scan_gguf(gguf_path)


def test_missing_tensor(
    tmp_path: Path, config: ModelConfig, weights: dict[str, torch.Tensor]
) -> None:
    partial = {k: v for k, v in weights.items() if k != "model.layers.1.mlp.down_proj.weight"}
    path = write_tiny_gguf(tmp_path / "m.gguf", config, partial)
    with pytest.raises(ModelFormatError, match=r"missing tensor for model\.layers\.1\.mlp\.down"):
        _load(path)


def test_shape_mismatch(
    tmp_path: Path, config: ModelConfig, weights: dict[str, torch.Tensor]
) -> None:
    bad = dict(weights)
    bad["model.layers.0.mlp.gate_proj.weight"] = torch.zeros(64, 64)
    path = write_tiny_gguf(tmp_path / "m.gguf", config, bad)
    with pytest.raises(ModelFormatError, match=r"blk\.0\.ffn_gate\.weight has shape \[64, 64\]"):
        _load(path)


def _gguf_with(tmp_path: Path, arch: str, tensor_type: gguf.GGMLQuantizationType) -> Path:
    path = tmp_path / f"{arch}.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_token_list(["a", "b"])
    writer.add_tokenizer_model("gpt2")
    elems, nbytes = gguf.GGML_QUANT_SIZES[tensor_type]
    raw = np.zeros((32, 32 // elems * nbytes), np.uint8)  # one 32-element block per row
    writer.add_tensor("token_embd.weight", raw, raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = _gguf_with(tmp_path, "mamba", gguf.GGMLQuantizationType.Q5_0)
    with pytest.raises(UnsupportedModelError, match=r"mamba\.gguf: unsupported architecture"):
        _load(path)


def test_unsupported_quantization(tmp_path: Path) -> None:
    from inferno_models import GGUFFile
    from inferno_models.testing import tiny_config

    path = _gguf_with(tmp_path, "llama", gguf.GGMLQuantizationType.MXFP4)
    config = tiny_config(vocab_size=32, hidden_size=32, num_hidden_layers=1)
    with pytest.raises(UnsupportedModelError, match="unsupported type MXFP4"):
        list(GGUFFile(path).iter_weights(config))


def test_unreadable_tokenizer(hf_dir: Path) -> None:
    (hf_dir / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ModelFormatError, match=r"tokenizer\.json: unreadable tokenizer"):
        _load(hf_dir)


def test_corrupt_config(hf_dir: Path) -> None:
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(ModelFormatError, match=r"config\.json: missing field"):
        _load(hf_dir)


def test_invalid_config_value(hf_dir: Path) -> None:
    data = json.loads((hf_dir / "config.json").read_text())
    data["num_key_value_heads"] = 3
    (hf_dir / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelFormatError, match="multiple of num_key_value_heads"):
        _load(hf_dir)


def test_corrupt_safetensors(hf_dir: Path) -> None:
    path = hf_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelFormatError, match=r"model\.safetensors"):
        _load(hf_dir)


def test_no_such_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        _load(tmp_path / "absent.gguf")
