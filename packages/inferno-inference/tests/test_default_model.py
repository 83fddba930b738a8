"""The engine against transformers on the default model (SmolLM2-135M-Instruct, fp32, CPU).

transformers loads the GGUF itself (its own dequantization), so these tests check the whole
path: inferno-models' loader, the forward pass and greedy decoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from inferno_inference.config import EngineConfig
from inferno_inference.engine import LLMEngine
from inferno_inference.factory import build_llm_engine
from inferno_inference.model import AttentionMetadata, PrefillSegment
from inferno_inference.tiny import greedy_tokens, reference_greedy_tokens
from inferno_memory import HostMemoryResource
from inferno_models import LlamaLoader, LoadedModel, default_model_path

pytestmark = pytest.mark.slow

NEW_TOKENS = 64
TEXTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "1, 2, 3, 4, 5,",
    "Water boils at",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox",
    "In machine learning, a transformer is",
    "Q: Who wrote Hamlet?\nA:",
    "Les feuilles d'automne",
]


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return LlamaLoader().load(default_model_path(), dtype=torch.float32)


@pytest.fixture(scope="module")
def hf_model() -> Any:
    from transformers import AutoModelForCausalLM

    path = Path(default_model_path())
    model: Any = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, torch_dtype=torch.float32
    )
    model.eval()
    return model


@pytest.fixture(scope="module")
def prompts(loaded: LoadedModel) -> list[list[int]]:
    return [loaded.tokenizer.encode(t) for t in TEXTS]


def _engine(loaded: LoadedModel, **kw: Any) -> LLMEngine:
    config = EngineConfig(kv_cache_bytes=96 << 20, **kw)
    return build_llm_engine(
        loaded.config, loaded.weights, config, HostMemoryResource(), tokenizer=loaded.tokenizer
    )


def test_prefill_logits_match_transformers(
    loaded: LoadedModel, hf_model: Any, prompts: list[list[int]]
) -> None:
    engine = _engine(loaded)
    model, layers = engine.runner.model, engine.runner.kv_cache.layers
    for ids in prompts[:4]:
        with torch.inference_mode():
            ref = hf_model(torch.tensor([ids])).logits[0]
            pos = torch.arange(len(ids))
            meta = AttentionMetadata(
                pos, pos, 0, None, None, [PrefillSegment(0, len(ids), len(ids), None)], pos
            )
            ours = model.forward(torch.tensor(ids), meta, layers)
        torch.testing.assert_close(ours, ref, atol=2e-3, rtol=1e-3)


def _greedy(engine: LLMEngine, prompts: list[list[int]]) -> list[list[int]]:
    return greedy_tokens(engine, prompts, NEW_TOKENS)


def test_greedy_matches_transformers_alone_and_batched(
    loaded: LoadedModel, hf_model: Any, prompts: list[list[int]]
) -> None:
    expected = reference_greedy_tokens(hf_model, prompts, NEW_TOKENS)
    engine = _engine(loaded, max_num_seqs=16)
    assert [_greedy(engine, [p])[0] for p in prompts] == expected
    assert _greedy(engine, prompts) == expected
    assert engine.stats().kv_blocks_used == 0


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_int8_greedy_shares_a_long_prefix_with_unquantized(
    loaded: LoadedModel, prompts: list[list[int]], dtype: str
) -> None:
    # int8 rounding is not token-identical, but the greedy path must not veer off early.
    prompt = prompts[0]
    plain = _greedy(_engine(loaded, dtype=dtype), [prompt])[0]
    quant = _greedy(_engine(loaded, dtype=dtype, weight_quantization="int8"), [prompt])[0]
    assert len(quant) == NEW_TOKENS
    assert quant[:8] == plain[:8]


def test_embeddings_match_transformers_pooled_hidden_states(
    loaded: LoadedModel, hf_model: Any, prompts: list[list[int]]
) -> None:
    from inferno_inference.types import EmbeddingRequest

    # The longer texts take two chunks.
    engine = _engine(loaded, max_num_batched_tokens=16, max_num_seqs=8)
    for i, ids in enumerate(prompts):
        engine.add_request(EmbeddingRequest(f"m{i}", tuple(ids)))
        engine.add_request(EmbeddingRequest(f"l{i}", tuple(ids), pooling="last"))
    got: dict[str, torch.Tensor] = {}
    while engine.has_work():
        for out in engine.step():
            assert out.embedding is not None
            got[out.request_id] = torch.tensor(out.embedding)
    for i, ids in enumerate(prompts):
        with torch.inference_mode():
            hidden = hf_model.model(torch.tensor([ids])).last_hidden_state[0]
        for key, want in ((f"m{i}", hidden.mean(0)), (f"l{i}", hidden[-1])):
            want = torch.nn.functional.normalize(want, dim=0)
            torch.testing.assert_close(got[key], want, atol=2e-4, rtol=1e-3)
            # As a user sees it: the same direction.
            assert float(got[key] @ want) > 0.99999


def test_a_long_prompt_in_the_c_step_matches_transformers(
    loaded: LoadedModel, hf_model: Any
) -> None:
    # About 770 tokens: two prefill chunks, each attending in the C step's tiles to a context
    # of many 64-key blocks, then decode rows over ranges of it merged across threads.
    text = " ".join(TEXTS * 9)
    prompt = loaded.tokenizer.encode(text)
    assert 700 < len(prompt) < 1000
    [expected] = reference_greedy_tokens(hf_model, [prompt], 32)
    engine = _engine(loaded, max_num_batched_tokens=512)
    assert engine.runner.native is not None
    assert greedy_tokens(engine, [prompt], 32) == [expected]


def test_prompt_logprobs_match_transformers(
    loaded: LoadedModel, hf_model: Any, prompts: list[list[int]]
) -> None:
    from inferno_inference import SamplingParams
    from inferno_inference.types import GenerationRequest

    # Chunks of 7: the prompts are scored across several prefill steps.
    engine = _engine(loaded, max_num_seqs=4, max_num_batched_tokens=7)
    sampling = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=2)
    scored: dict[str, Any] = {}
    for i, ids in enumerate(prompts[:4]):
        engine.add_request(GenerationRequest(f"p{i}", tuple(ids), sampling))
    while engine.has_work():
        for out in engine.step():
            if out.prompt_logprobs is not None:
                scored[out.request_id] = out.prompt_logprobs
    for i, ids in enumerate(prompts[:4]):
        with torch.inference_mode():
            ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1)
        ours = scored[f"p{i}"]
        assert ours[0] is None
        for q in range(1, len(ids)):
            entry = ours[q]
            assert entry is not None
            assert entry.token_id == ids[q]
            assert abs(entry.logprob - float(ref[q - 1, ids[q]])) < 1e-3, (i, q)
            assert [t for t, _ in entry.top] == ref[q - 1].topk(2).indices.tolist()


def test_a_merged_lora_adapter_matches_peft(
    loaded: LoadedModel, hf_model: Any, prompts: list[list[int]], tmp_path: Path
) -> None:
    import copy

    from inferno_models import apply_lora, load_lora
    from inferno_models.testing import write_peft_adapter

    # The adapter's own forward (base plus B @ A at every projection, not merged) is the
    # reference; the copy keeps the other tests' model unadapted.
    peft_model = write_peft_adapter(tmp_path / "adapter", copy.deepcopy(hf_model), seed=7)
    adapted = apply_lora(loaded, load_lora(tmp_path / "adapter"))
    few = prompts[:2]
    expected = reference_greedy_tokens(peft_model, few, 24)
    engine = _engine(adapted, max_num_seqs=4)
    assert greedy_tokens(engine, few, 24) == expected
    # And it is a different model: the base answers otherwise.
    assert greedy_tokens(_engine(loaded, max_num_seqs=4), few, 24) != expected
    with torch.inference_mode():
        ref = peft_model(torch.tensor([prompts[0]])).logits[0]
        ids = prompts[0]
        pos = torch.arange(len(ids))
        meta = AttentionMetadata(
            pos, pos, 0, None, None, [PrefillSegment(0, len(ids), len(ids), None)], pos
        )
        ours = engine.runner.model.forward(torch.tensor(ids), meta, engine.runner.kv_cache.layers)
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=2e-3)
