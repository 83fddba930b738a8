from __future__ import annotations

from pathlib import Path

import pytest
import torch
from inferno_models import LlamaLoader, ModelConfig, ModelError
from inferno_models.convert import convert_gguf_to_hf
from inferno_models.testing import write_tiny_gguf


def test_converted_directory_loads_in_transformers(
    tmp_path: Path, config: ModelConfig, weights: dict[str, torch.Tensor]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = write_tiny_gguf(tmp_path / "m.gguf", config, weights, quantization="Q8_0")
    out = convert_gguf_to_hf(src, tmp_path / "hf")
    ours = LlamaLoader().load(src)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    state = hf.state_dict()
    for name, tensor in ours.weights.items():
        assert torch.equal(state[name], tensor), name
    tok = AutoTokenizer.from_pretrained(out)
    text = "<|im_start|>the théâtre"
    assert tok(text).input_ids == ours.tokenizer.encode(text)
    msgs = [{"role": "user", "content": "hi"}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert ours.chat_template is not None
    assert rendered == ours.chat_template.render(msgs)
    # Our own loader reads the converted directory back to the same model.
    again = LlamaLoader().load(out)
    assert again.config.model_dump() == ours.config.model_dump()


def test_refuses_non_empty_destination(gguf_path: Path, tmp_path: Path) -> None:
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "file").write_text("x")
    with pytest.raises(ModelError, match="not an empty directory"):
        convert_gguf_to_hf(gguf_path, dst)
