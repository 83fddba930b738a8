"""Llama's variants match transformers: logits, and greedy tokens on every CPU path of the
engine. Attention biases (Qwen2: on Q, K and V; Llama with ``attention_bias``: on the output
too), Qwen3's per-head query/key norms with heads wider than ``hidden / heads``, and SmolLM3's
layers without rotary embeddings."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from inferno_inference.native import NativeDecoder
from inferno_inference.tiny import (
    greedy_tokens,
    prefill_metadata,
    reference_greedy_tokens,
    tiny_llm_engine,
)
from inferno_models.config import ModelConfig
from inferno_models.testing import random_weights, tiny_config, transformers_model

NEW_TOKENS = 32


def _qwen2() -> ModelConfig:
    return tiny_config(architecture="qwen2", llama3_rope=False, tie_word_embeddings=True)


def _llama_with_bias() -> ModelConfig:
    return tiny_config().model_copy(update={"qkv_bias": True, "o_bias": True})


def _qwen3() -> ModelConfig:
    return tiny_config(architecture="qwen3", head_dim=32, llama3_rope=False)


def _smollm3() -> ModelConfig:
    return tiny_config(architecture="smollm3", num_hidden_layers=4)


CONFIGS = {
    "qwen2": _qwen2,
    "llama-attention-bias": _llama_with_bias,
    "qwen3": _qwen3,
    "smollm3": _smollm3,
}


def _hf_model(config: ModelConfig, weights: dict[str, torch.Tensor]) -> Any:
    hf = transformers_model(config, weights)
    # The biases, norms and unrotated layers are real in the reference, so a model that
    # skipped them would fail.
    layer = hf.model.layers[0].self_attn
    assert (layer.q_proj.bias is not None) == config.qkv_bias
    assert (layer.o_proj.bias is not None) == config.o_bias
    assert hasattr(layer, "q_norm") == config.qk_norm
    rotated = [getattr(layer.self_attn, "use_rope", True) for layer in hf.model.layers]
    assert [i for i, r in enumerate(rotated) if not r] == list(config.nope_layers)
    return hf


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(
    request: pytest.FixtureRequest,
) -> tuple[ModelConfig, dict[str, torch.Tensor], list[list[int]], list[list[int]]]:
    config = CONFIGS[request.param]()
    weights = random_weights(config, seed=5)
    vocab = config.vocab_size
    prompts = [
        [(i * 37 + k * k * 5 + 3) % vocab for k in range(n)] for i, n in enumerate((1, 9, 30, 75))
    ]
    expected = reference_greedy_tokens(_hf_model(config, weights), prompts, NEW_TOKENS)
    return config, weights, prompts, expected


Ref = tuple[ModelConfig, dict[str, torch.Tensor], list[list[int]], list[list[int]]]


def test_logits_match_transformers(reference: Ref) -> None:
    config, weights, prompts, _ = reference
    hf = _hf_model(config, weights)
    engine = tiny_llm_engine(config=config, weights=weights, cpu_native_decode=False)
    model = engine.runner.model
    ids = prompts[-1]
    shape = (len(ids), config.num_key_value_heads, config.head_dim)
    caches = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(config.num_hidden_layers)]
    meta = prefill_metadata(len(ids))
    with torch.inference_mode():
        ours = model.forward(torch.tensor(ids), meta, caches)
        want = hf(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "options",
    [
        {"cpu_native_decode": False},
        {"cpu_native_decode": True},
        {"cpu_native_decode": True, "cpu_native_matmuls": False},
    ],
    ids=["torch", "native", "native-step-onednn-matmuls"],
)
def test_greedy_tokens_match_transformers(
    reference: Ref, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, weights, prompts, expected = reference
    native_steps = 0
    real_run = NativeDecoder.run

    def counting_run(self: NativeDecoder, *args: Any) -> torch.Tensor:
        nonlocal native_steps
        native_steps += 1
        return real_run(self, *args)

    monkeypatch.setattr(NativeDecoder, "run", counting_run)
    engine = tiny_llm_engine(config=config, weights=weights, max_num_batched_tokens=48, **options)
    assert greedy_tokens(engine, prompts, NEW_TOKENS) == expected
    # The C step (biases, head norms and unrotated layers in C) took the steps whenever it
    # was asked for.
    assert (native_steps > 0) == bool(options["cpu_native_decode"])
    assert engine.stats().kv_blocks_used == 0
