"""Phi-3 (Llama whose checkpoints fuse Q, K and V into ``qkv_proj`` and the gate and up
projections into ``gate_up_proj``): config.json, safetensors, GGUF and conversion, against
transformers' own Phi3. Loaded, a Phi-3 has the Llama layout, so the reference for what the
engine computes is transformers' Llama on the split weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from inferno_models import (
    GGUFFile,
    LlamaLoader,
    ModelConfig,
    ModelFormatError,
    UnsupportedModelError,
    apply_lora,
    convert_gguf_to_hf,
    load_lora,
)
from inferno_models.names import checkpoint_shapes, expected_shapes, fuse
from inferno_models.safetensors_loader import read_safetensors
from inferno_models.testing import (
    random_weights,
    tiny_config,
    tiny_tokenizer,
    transformers_model,
    write_gguf_lora,
    write_peft_adapter,
    write_tiny_gguf,
    write_tiny_hf_dir,
)

IDS = torch.tensor([[5, 9, 40, 77, 3, 12, 90, 4]])
QKV = "model.layers.1.self_attn.qkv_proj.weight"
GATE_UP = "model.layers.1.mlp.gate_up_proj.weight"


@pytest.fixture
def phi3() -> ModelConfig:
    # Phi-3-mini's shape in small: GQA, untied head, no rope scaling.
    return tiny_config(architecture="phi3")


def _as_llama(config: ModelConfig) -> ModelConfig:
    return config.model_copy(update={"architecture": "llama"})


def _logits(model: Any, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits  # type: ignore[no-any-return]


def test_the_config_round_trips_through_transformers(phi3: ModelConfig, tmp_path: Path) -> None:
    from transformers import Phi3Config

    Phi3Config(**phi3.to_hf_dict()).save_pretrained(tmp_path)
    again = ModelConfig.from_hf_file(tmp_path / "config.json")
    assert again == phi3
    assert (again.architecture, again.qkv_bias, again.o_bias, again.rope_scaling) == (
        "phi3",
        False,
        False,
        None,
    )
    # Loaded, the tensors are Llama's; stored, Q/K/V and gate/up are one tensor each.
    q, kv = 4 * 16, 2 * 16
    assert expected_shapes(again)["model.layers.1.self_attn.k_proj.weight"] == (kv, 64)
    stored = checkpoint_shapes(again)
    assert stored[QKV] == (q + 2 * kv, 64)
    assert stored[GATE_UP] == (2 * 128, 64)
    split = (".q_proj.weight", ".k_proj.weight", ".gate_proj.weight", ".up_proj.weight")
    assert not any(n.endswith(split) for n in stored)


def test_parameter_count_matches_transformers(phi3: ModelConfig) -> None:
    weights = random_weights(phi3)
    hf = transformers_model(phi3, weights)
    assert type(hf).__name__ == "Phi3ForCausalLM"
    assert phi3.num_parameters() == sum(t.numel() for t in weights.values())
    assert sum(t.numel() for t in hf.parameters()) == phi3.num_parameters()


def test_phi3_has_no_biases_and_no_llama3_scaling(phi3: ModelConfig) -> None:
    with pytest.raises(ValueError, match="phi3 has no attention biases"):
        ModelConfig.model_validate({**phi3.model_dump(), "qkv_bias": True, "o_bias": True})
    with pytest.raises(ValueError, match="rope_scaling"):
        tiny_config(architecture="phi3", llama3_rope=True)
    # Its projections have no biases in transformers whatever the config says.
    assert not ModelConfig.from_hf_dict({**phi3.to_hf_dict(), "attention_bias": True}).o_bias


def test_a_sliding_window_becomes_the_context(phi3: ModelConfig, tmp_path: Path) -> None:
    hf = phi3.to_hf_dict()
    assert hf["sliding_window"] is None
    # Phi-3 has no use_sliding_window switch: a window is used (Phi-3-mini-4k's is 2047).
    assert ModelConfig.from_hf_dict({**hf, "sliding_window": 64}).max_position_embeddings == 64
    assert ModelConfig.from_hf_dict({**hf, "sliding_window": 2047}).max_position_embeddings == 512
    weights = random_weights(phi3)
    window = {"phi3.attention.sliding_window": 64}
    windowed = write_tiny_gguf(tmp_path / "w.gguf", phi3, weights, metadata=window)
    assert GGUFFile(windowed).config().max_position_embeddings == 64
    # llama.cpp writes a window of 0 for a Phi-3 (Phi-4) without one.
    plain = write_tiny_gguf(tmp_path / "p.gguf", phi3, weights)
    assert GGUFFile(plain).get("phi3.attention.sliding_window") == 0
    assert GGUFFile(plain).config().max_position_embeddings == 512


@pytest.mark.parametrize("kind", ["longrope", "su"])
def test_long_rope_is_refused(phi3: ModelConfig, tmp_path: Path, kind: str) -> None:
    # Phi-3-mini-128k's scaling, as its config.json spells it.
    half = phi3.head_dim // 2
    scaling = {"type": kind, "long_factor": [1.5] * half, "short_factor": [1.0] * half}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**phi3.to_hf_dict(), "rope_scaling": scaling}))
    with pytest.raises(
        UnsupportedModelError, match=rf"config\.json: rope_scaling of type '{kind}' \(Phi-3's"
    ):
        ModelConfig.from_hf_file(path)


def test_long_rope_saved_by_transformers_is_refused(phi3: ModelConfig, tmp_path: Path) -> None:
    from transformers import Phi3Config

    half = phi3.head_dim // 2
    scaling = {"rope_type": "longrope", "long_factor": [2.0] * half, "short_factor": [1.0] * half}
    fields = {**phi3.to_hf_dict(), "rope_scaling": scaling, "original_max_position_embeddings": 64}
    Phi3Config(**fields).save_pretrained(tmp_path)
    # transformers 5 writes it as rope_parameters.
    assert "rope_parameters" in json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(UnsupportedModelError, match=r"config\.json: rope_scaling .*'longrope'"):
        ModelConfig.from_hf_file(tmp_path / "config.json")


def test_a_long_rope_gguf_is_refused(phi3: ModelConfig, tmp_path: Path) -> None:
    factors = np.ones(phi3.head_dim // 2, dtype=np.float32)
    extra = {"rope_factors_long.weight": 2 * factors, "rope_factors_short.weight": factors}
    path = write_tiny_gguf(tmp_path / "p.gguf", phi3, random_weights(phi3), extra_tensors=extra)
    with pytest.raises(
        UnsupportedModelError, match=r"p\.gguf: tensor rope_factors_long\.weight .*longrope"
    ):
        LlamaLoader().load(path)


def test_partial_rotary_factor_is_refused(phi3: ModelConfig, tmp_path: Path) -> None:
    from transformers import Phi3Config

    # Phi-4-mini rotates three quarters of each head; older configs say so beside the rest,
    # transformers 5 inside rope_parameters.
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**phi3.to_hf_dict(), "partial_rotary_factor": 0.75}))
    with pytest.raises(UnsupportedModelError, match=r"config\.json: partial_rotary_factor 0\.75"):
        ModelConfig.from_hf_file(path)
    Phi3Config(**phi3.to_hf_dict(), partial_rotary_factor=0.75).save_pretrained(tmp_path / "v5")
    with pytest.raises(UnsupportedModelError, match=r"partial_rotary_factor 0\.75"):
        ModelConfig.from_hf_file(tmp_path / "v5" / "config.json")
    # llama.cpp's converter writes the rotary width as rope.dimension_count.
    gguf = write_tiny_gguf(
        tmp_path / "p.gguf",
        phi3,
        random_weights(phi3),
        metadata={"phi3.rope.dimension_count": 12},
    )
    with pytest.raises(
        UnsupportedModelError,
        match=r"p\.gguf: phi3\.rope\.dimension_count 12 is not the head width 16: .*0\.75",
    ):
        LlamaLoader().load(gguf)


def test_a_transformers_checkpoint_loads_split(phi3: ModelConfig, tmp_path: Path) -> None:
    weights = random_weights(phi3, seed=4)
    reference = transformers_model(phi3, weights)
    reference.save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save(tmp_path / "ckpt")
    stored = read_safetensors(tmp_path / "ckpt" / "model.safetensors")
    assert QKV in stored
    assert "model.layers.1.self_attn.q_proj.weight" not in stored
    ours = LlamaLoader().load(tmp_path / "ckpt")
    assert ours.config == phi3
    assert set(ours.weights) == set(weights)
    for name, tensor in weights.items():
        assert torch.equal(ours.weights[name], tensor), name
    # The split weights are a Llama's: transformers' Llama on them computes Phi-3's logits.
    llama = transformers_model(_as_llama(ours.config), ours.weights)
    assert type(llama).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(_logits(llama), _logits(reference), rtol=1e-5, atol=1e-5)


def test_a_gguf_loads_here_and_in_transformers_alike(phi3: ModelConfig, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    weights = random_weights(phi3, seed=6)
    path = write_tiny_gguf(tmp_path / "p.gguf", phi3, weights)
    names = {t.name for t in GGUFFile(path).file_tensors}
    assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"} <= names
    assert not names & {"blk.0.attn_q.weight", "blk.0.ffn_gate.weight"}
    ours = LlamaLoader().load(path)
    # The file stores the epsilon as float32.
    assert ours.config == phi3.model_copy(update={"rms_norm_eps": ours.config.rms_norm_eps})
    # Phi-3 files keep the Hugging Face row order (llama.cpp rotates them NEOX-style).
    for name, tensor in weights.items():
        assert torch.equal(ours.weights[name], tensor), name
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="p.gguf", dtype=torch.float32)
    assert type(hf).__name__ == "Phi3ForCausalLM"
    state = hf.state_dict()
    for name, tensor in fuse(ours.config, ours.weights).items():
        assert torch.equal(state[name], tensor), name
    llama = transformers_model(_as_llama(ours.config), ours.weights)
    torch.testing.assert_close(_logits(llama), _logits(hf), rtol=1e-5, atol=1e-5)


def test_fused_tensors_of_the_wrong_shape_name_the_file(phi3: ModelConfig, tmp_path: Path) -> None:
    weights = random_weights(phi3)
    short = fuse(phi3, weights)
    short[QKV] = short[QKV][:-16]
    directory = write_tiny_hf_dir(tmp_path / "hf", phi3, short)
    with pytest.raises(
        ModelFormatError,
        match=r"model\.safetensors: tensor .*1\.self_attn\.qkv_proj\.weight has shape "
        r"\[112, 64\], expected \[128, 64\]",
    ):
        LlamaLoader().load(directory)
    path = write_tiny_gguf(tmp_path / "short.gguf", phi3, short)
    with pytest.raises(
        ModelFormatError,
        match=r"short\.gguf: tensor blk\.1\.attn_qkv\.weight has shape \[112, 64\], "
        r"expected \[128, 64\]",
    ):
        LlamaLoader().load(path)
    # A Llama-style up projection where Phi-3's fused gate and up belong.
    no_gate = {n: t for n, t in weights.items() if n != "model.layers.1.mlp.gate_proj.weight"}
    path = write_tiny_gguf(tmp_path / "up.gguf", phi3, no_gate)
    with pytest.raises(
        ModelFormatError,
        match=r"up\.gguf: tensor blk\.1\.ffn_up\.weight has shape \[128, 64\], "
        r"expected \[256, 64\]",
    ):
        LlamaLoader().load(path)
    # A checkpoint without the fused tensor names the one it lacks.
    del_gate_up = {n: t for n, t in fuse(phi3, weights).items() if n != GATE_UP}
    directory = write_tiny_hf_dir(tmp_path / "missing", phi3, del_gate_up)
    with pytest.raises(ModelFormatError, match=r"missing tensor .*1\.mlp\.gate_up_proj\.weight"):
        LlamaLoader().load(directory)


def test_conversion_writes_a_phi3_checkpoint(phi3: ModelConfig, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    weights = random_weights(phi3, seed=8)
    src = write_tiny_gguf(tmp_path / "p.gguf", phi3, weights, quantization="Q8_0")
    out = convert_gguf_to_hf(src, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Phi3ForCausalLM"]
    stored = read_safetensors(out / "model.safetensors")
    assert {QKV, GATE_UP} <= set(stored)
    assert not any(n.endswith((".q_proj.weight", ".up_proj.weight")) for n in stored)
    ours = LlamaLoader().load(src)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(hf).__name__ == "Phi3ForCausalLM"
    torch.testing.assert_close(_logits(hf), _logits(transformers_model(ours.config, ours.weights)))
    llama = transformers_model(_as_llama(ours.config), ours.weights)
    torch.testing.assert_close(_logits(llama), _logits(hf), rtol=1e-5, atol=1e-5)
    # And back: the converted checkpoint loads to the GGUF's weights.
    again = LlamaLoader().load(out)
    assert again.config == ours.config
    for name, tensor in ours.weights.items():
        assert torch.equal(again.weights[name], tensor), name


def test_adapters_of_the_unfused_projections_merge(phi3: ModelConfig, tmp_path: Path) -> None:
    weights = random_weights(phi3, seed=10)
    directory = write_tiny_hf_dir(tmp_path / "base", phi3, weights)
    peft = write_peft_adapter(
        tmp_path / "lora", transformers_model(phi3, weights), target_modules=["o_proj", "down_proj"]
    )
    merged = apply_lora(LlamaLoader().load(directory), load_lora(tmp_path / "lora"))
    want = peft.merge_and_unload().state_dict()
    for name in ("model.layers.1.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        torch.testing.assert_close(merged.weights[name], want[name], rtol=1e-5, atol=1e-6)


def test_adapters_of_fused_projections_are_refused(phi3: ModelConfig, tmp_path: Path) -> None:
    weights = random_weights(phi3, seed=10)
    write_peft_adapter(
        tmp_path / "lora", transformers_model(phi3, weights), target_modules=["qkv_proj"]
    )
    with pytest.raises(UnsupportedModelError, match=r"targets .*qkv_proj"):
        load_lora(tmp_path / "lora")
    rank = 2
    pair = (torch.randn(rank, 64), torch.randn(2 * 128, rank))
    path = write_gguf_lora(tmp_path / "a.gguf", phi3, {GATE_UP: pair}, alpha=4.0)
    with pytest.raises(
        UnsupportedModelError, match=r"a\.gguf: .*blk\.1\.ffn_up\.weight, a Phi-3 fused"
    ):
        load_lora(path)
