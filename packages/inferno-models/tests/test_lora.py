"""LoRA adapters in PEFT's format: merged as ``peft`` merges them, and refused with typed
errors when malformed or unmergeable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from inferno_models import LlamaLoader, ModelFormatError, ModelNotFoundError, UnsupportedModelError
from inferno_models.config import ModelConfig
from inferno_models.lora import apply_lora, load_lora
from inferno_models.testing import (
    LORA_TARGETS,
    random_weights,
    tiny_config,
    write_peft_adapter,
    write_tiny_hf_dir,
)

TARGETS = list(LORA_TARGETS)


def peft_adapter(
    directory: Path, config: ModelConfig, weights: dict[str, torch.Tensor], **lora: Any
) -> Any:
    """A PEFT adapter of a transformers model holding ``weights``, saved to ``directory``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf: Any = LlamaForCausalLM(LlamaConfig(**config.to_hf_dict()))
    hf.load_state_dict(weights, strict=False)
    return write_peft_adapter(directory, hf, **lora)


@pytest.fixture(scope="module")
def base(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ModelConfig, dict[str, torch.Tensor], Path]:
    config = tiny_config()
    weights = random_weights(config, seed=11)
    path = write_tiny_hf_dir(tmp_path_factory.mktemp("base"), config, weights)
    return config, weights, path


@pytest.mark.parametrize(
    "lora",
    [
        {},
        {"use_rslora": True},
        {"rank_pattern": {"down_proj": 2}, "alpha_pattern": {"q_proj": 3}},
        {"target_modules": ["q_proj", "v_proj"], "r": 8, "lora_alpha": 16},
    ],
    ids=["plain", "rslora", "patterns", "attention-only"],
)
def test_merge_matches_peft(
    base: tuple[ModelConfig, dict[str, torch.Tensor], Path], tmp_path: Path, lora: dict[str, Any]
) -> None:
    config, weights, path = base
    peft_model = peft_adapter(tmp_path / "adapter", config, weights, **lora)
    expected = {
        k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()
    }
    model = LlamaLoader().load(path)
    adapter = load_lora(tmp_path / "adapter")
    merged = apply_lora(model, adapter)
    targets = lora.get("target_modules", TARGETS)
    changed = [n for n in merged.weights if any(f".{t}." in n for t in targets)]
    assert len(adapter.pairs) == len(changed) == len(targets) * config.num_hidden_layers
    for name, tensor in merged.weights.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6, msg=name)
        if name not in changed:
            assert tensor is model.weights[name]  # untouched weights are shared, not copied
    assert not torch.equal(merged.weights[changed[0]], model.weights[changed[0]])
    # The base model is unchanged.
    torch.testing.assert_close(model.weights[changed[0]], weights[changed[0]])


def test_the_safetensors_file_may_be_named_and_the_name_is_the_directory(
    base: tuple[ModelConfig, dict[str, torch.Tensor], Path], tmp_path: Path
) -> None:
    config, weights, _ = base
    peft_adapter(tmp_path / "my-adapter", config, weights)
    config_file = tmp_path / "my-adapter" / "adapter_config.json"
    config_file.write_text(
        json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": "tiny"})
    )
    adapter = load_lora(tmp_path / "my-adapter" / "adapter_model.safetensors")
    assert adapter.name == "my-adapter"
    assert adapter.base_model == "tiny"
    assert (adapter.rank, adapter.alpha) == (4, 8.0)


def test_an_adapter_of_another_shape_is_refused(
    base: tuple[ModelConfig, dict[str, torch.Tensor], Path], tmp_path: Path
) -> None:
    config, _, path = base
    wider = tiny_config(hidden_size=config.hidden_size * 2)
    peft_adapter(tmp_path / "other", wider, random_weights(wider, seed=1))
    with pytest.raises(ModelFormatError, match=r"another base model") as info:
        apply_lora(LlamaLoader().load(path), load_lora(tmp_path / "other"))
    assert info.value.path == str(tmp_path / "other")


def _write(directory: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    return directory


PREFIX = "base_model.model.model.layers.0."
GOOD = {
    f"{PREFIX}self_attn.q_proj.lora_A.weight": torch.zeros(2, 8),
    f"{PREFIX}self_attn.q_proj.lora_B.weight": torch.zeros(8, 2),
}


@pytest.mark.parametrize(
    ("config", "tensors", "error", "message"),
    [
        ({"peft_type": "IA3", "r": 2}, GOOD, UnsupportedModelError, "not a LoRA adapter"),
        ({"r": 2, "use_dora": True}, GOOD, UnsupportedModelError, "DoRA"),
        ({"r": 2, "bias": "all"}, GOOD, UnsupportedModelError, "trained biases"),
        ({"r": 2, "modules_to_save": ["lm_head"]}, GOOD, UnsupportedModelError, "modules_to_save"),
        ({"r": 0}, GOOD, ModelFormatError, "r must be a positive integer"),
        ({"r": 2, "lora_alpha": "x"}, GOOD, ModelFormatError, "lora_alpha must be a number"),
        ({"r": 2, "rank_pattern": {"(": 1}}, GOOD, ModelFormatError, "invalid pattern"),
        ({"r": 3}, GOOD, ModelFormatError, "has rank 2, the config says 3"),
        (
            {"r": 2},
            {f"{PREFIX}self_attn.q_proj.lora_A.weight": torch.zeros(2, 8)},
            ModelFormatError,
            "no lora_B",
        ),
        (
            {"r": 2},
            {**GOOD, f"{PREFIX}self_attn.q_proj.lora_B.weight": torch.zeros(8, 3)},
            ModelFormatError,
            "do not make a product",
        ),
        (
            {"r": 2},
            {
                "base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(2, 8),
                **GOOD,
            },
            UnsupportedModelError,
            "not a LoRA A or B matrix",
        ),
        (
            {"r": 2},
            {
                "base_model.model.lm_head.lora_A.weight": torch.zeros(2, 8),
                "base_model.model.lm_head.lora_B.weight": torch.zeros(8, 2),
            },
            UnsupportedModelError,
            "only the attention and MLP projections",
        ),
        ({"r": 2}, {}, ModelFormatError, "no LoRA matrices"),
    ],
)
def test_malformed_or_unmergeable_adapters_are_typed_errors(
    tmp_path: Path,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    error: type[Exception],
    message: str,
) -> None:
    directory = _write(tmp_path / "bad", config, tensors)
    with pytest.raises(error, match=message):
        load_lora(directory)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        load_lora(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match=r"adapter_config\.json"):
        load_lora(tmp_path / "empty")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text('{"r": 2}')
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UnsupportedModelError, match="pickle"):
        load_lora(pickled)
    broken = _write(tmp_path / "broken", {"r": 2}, GOOD)
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="unreadable adapter config") as info:
        load_lora(broken)
    assert info.value.path.endswith("adapter_config.json")
    cut = _write(tmp_path / "cut", {"r": 2}, GOOD)
    weights = cut / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(ModelFormatError, match="unreadable safetensors"):
        load_lora(cut)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_merges_into_the_models_own_weights(
    base: tuple[ModelConfig, dict[str, torch.Tensor], Path], tmp_path: Path, dtype: torch.dtype
) -> None:
    config, weights, path = base
    peft_adapter(tmp_path / "adapter", config, weights)
    adapter = load_lora(tmp_path / "adapter")
    copied = apply_lora(LlamaLoader().load(path, dtype=dtype), adapter)
    model = LlamaLoader().load(path, dtype=dtype)
    before = dict(model.weights)
    merged = apply_lora(model, adapter, in_place=True)
    name = "model.layers.0.mlp.down_proj.weight"
    assert merged.weights[name] is before[name]  # the same storage, now adapted
    assert merged.weights[name].dtype == dtype
    for key, tensor in merged.weights.items():
        torch.testing.assert_close(tensor, copied.weights[key], rtol=0, atol=0, msg=key)
