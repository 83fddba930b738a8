"""Embedding requests: pooled final hidden states equal transformers', inside a running batch."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import torch
from inferno_inference import (
    AsyncEngine,
    EmbeddingRequest,
    EngineError,
    InvalidRequestError,
    PromptTooLongError,
)
from inferno_inference.engine import LLMEngine
from inferno_inference.tiny import tiny_llm_engine
from inferno_inference.types import GenerationOutput, GenerationRequest, SamplingParams
from inferno_models.config import ModelConfig
from inferno_models.testing import random_weights, tiny_config

Weights = dict[str, torch.Tensor]


def _inputs(vocab: int) -> list[list[int]]:
    # Lengths below, at and across block (4) and chunk boundaries, some past the llama3
    # original context (64).
    lengths = [1, 2, 4, 9, 16, 33, 70]
    return [[(i * 37 + k * k * 5 + 3) % vocab for k in range(n)] for i, n in enumerate(lengths)]


def _hf_hidden(config: ModelConfig, weights: Weights, ids: list[int]) -> torch.Tensor:
    """transformers' last hidden state (after the final norm), fp32, ``[len(ids), hidden]``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf: Any = LlamaForCausalLM(LlamaConfig(**config.to_hf_dict()))
    hf.eval()
    hf.load_state_dict(weights, strict=False)
    with torch.inference_mode():
        mask = torch.ones(1, len(ids), dtype=torch.long)
        out = hf.model(torch.tensor([ids]), attention_mask=mask)
    return out.last_hidden_state[0].float()


def _run(engine: LLMEngine) -> dict[str, GenerationOutput]:
    finals: dict[str, GenerationOutput] = {}
    while engine.has_work():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
    return finals


@pytest.fixture(scope="module")
def model() -> tuple[ModelConfig, Weights]:
    config = tiny_config()
    return config, random_weights(config, seed=5)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_embeddings_equal_transformers_pooled_hidden_states(
    model: tuple[ModelConfig, Weights], pooling: str
) -> None:
    config, weights = model
    inputs = _inputs(config.vocab_size)
    # A small token budget: long inputs are embedded over several chunks.
    engine = tiny_llm_engine(
        config=config, weights=weights, max_num_seqs=8, max_num_batched_tokens=24
    )
    for i, ids in enumerate(inputs):
        engine.add_request(EmbeddingRequest(f"e{i}", tuple(ids), pooling=pooling))  # type: ignore[arg-type]
    finals = _run(engine)
    for i, ids in enumerate(inputs):
        out = finals[f"e{i}"]
        assert out.finish_reason == "stop"
        assert out.token_ids == ()
        assert out.usage is not None
        assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(ids), 0)
        hidden = _hf_hidden(config, weights, ids)
        want = hidden.mean(0) if pooling == "mean" else hidden[-1]
        want = torch.nn.functional.normalize(want, dim=0)
        assert out.embedding is not None
        got = torch.tensor(out.embedding)
        assert got.shape == (config.hidden_size,)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    bm = engine.scheduler.block_manager
    assert bm.num_free_blocks == bm.num_blocks


def test_unnormalized_embeddings_are_the_raw_mean(model: tuple[ModelConfig, Weights]) -> None:
    config, weights = model
    ids = _inputs(config.vocab_size)[5]
    engine = tiny_llm_engine(config=config, weights=weights)
    engine.add_request(EmbeddingRequest("raw", tuple(ids), normalize=False))
    out = _run(engine)["raw"]
    assert out.embedding is not None
    torch.testing.assert_close(
        torch.tensor(out.embedding), _hf_hidden(config, weights, ids).mean(0), atol=1e-5, rtol=1e-4
    )
    assert not math.isclose(sum(v * v for v in out.embedding), 1.0, rel_tol=1e-3)


def test_embeddings_join_running_generations_without_changing_them(
    model: tuple[ModelConfig, Weights],
) -> None:
    config, weights = model
    prompts = _inputs(config.vocab_size)
    sp = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)

    def generate(with_embeddings: bool) -> tuple[dict[str, list[int]], dict[str, Any]]:
        engine = tiny_llm_engine(
            config=config, weights=weights, max_num_seqs=16, max_num_batched_tokens=32
        )
        for i, p in enumerate(prompts[:4]):
            engine.add_request(GenerationRequest(f"g{i}", tuple(p), sp))
        tokens: dict[str, list[int]] = {f"g{i}": [] for i in range(4)}
        embeddings: dict[str, Any] = {}
        steps = 0
        while engine.has_work():
            if with_embeddings and steps in (1, 3):  # arrive while the others decode
                for j, ids in enumerate(prompts[4:]):
                    engine.add_request(EmbeddingRequest(f"e{steps}-{j}", tuple(ids)))
            for out in engine.step():
                if out.embedding is not None:
                    embeddings[out.request_id] = out.embedding
                else:
                    tokens[out.request_id].extend(out.token_ids)
            steps += 1
        bm = engine.scheduler.block_manager
        assert bm.num_free_blocks == bm.num_blocks
        return tokens, embeddings

    alone, _ = generate(False)
    mixed, embeddings = generate(True)
    assert mixed == alone
    assert len(embeddings) == 6
    # The same input embeds the same whatever else shared its steps.
    for j in range(3):
        torch.testing.assert_close(
            torch.tensor(embeddings[f"e1-{j}"]), torch.tensor(embeddings[f"e3-{j}"])
        )


def test_mean_pooling_skips_the_prefix_cache_and_last_pooling_uses_it(
    model: tuple[ModelConfig, Weights],
) -> None:
    config, weights = model
    ids = tuple(_inputs(config.vocab_size)[6])  # 70 tokens: 17 full blocks
    engine = tiny_llm_engine(config=config, weights=weights, kv_cache_bytes=1 << 21)
    engine.add_request(GenerationRequest("warm", ids, SamplingParams(max_tokens=1)))
    _run(engine)
    bm = engine.scheduler.block_manager
    queries, hits = bm.prefix_queries, bm.prefix_hits
    engine.add_request(EmbeddingRequest("mean", ids))
    mean = _run(engine)["mean"]
    assert (bm.prefix_queries, bm.prefix_hits) == (queries, hits)  # never looked up
    engine.add_request(EmbeddingRequest("last", ids, pooling="last"))
    last = _run(engine)["last"]
    assert bm.prefix_hits > hits
    assert last.usage is not None
    assert last.usage.cached_prompt_tokens > 0
    hidden = _hf_hidden(config, weights, list(ids))
    for out, want in ((mean, hidden.mean(0)), (last, hidden[-1])):
        assert out.embedding is not None
        torch.testing.assert_close(
            torch.tensor(out.embedding),
            torch.nn.functional.normalize(want, dim=0),
            atol=1e-5,
            rtol=1e-4,
        )


def test_a_preempted_embedding_is_recomputed_from_scratch(
    model: tuple[ModelConfig, Weights],
) -> None:
    config, weights = model
    inputs = _inputs(config.vocab_size)
    # 12 blocks of 4 tokens: a 33-token embedding and growing generations cannot all fit.
    engine = tiny_llm_engine(
        config=config,
        weights=weights,
        kv_cache_bytes=12 * 4 * 2 * 2 * 16 * 4 * 2,
        max_num_batched_tokens=8,
        enable_prefix_caching=False,
    )
    bm = engine.scheduler.block_manager
    sp = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    engine.add_request(GenerationRequest("g", tuple(inputs[3]), sp))
    engine.add_request(EmbeddingRequest("e", tuple(inputs[5])))
    finals = _run(engine)
    assert engine.scheduler.num_preemptions > 0
    out = finals["e"]
    assert out.embedding is not None
    want = torch.nn.functional.normalize(_hf_hidden(config, weights, inputs[5]).mean(0), dim=0)
    torch.testing.assert_close(torch.tensor(out.embedding), want, atol=1e-5, rtol=1e-4)
    assert bm.num_free_blocks == bm.num_blocks


def test_embedding_validation_and_abort(model: tuple[ModelConfig, Weights]) -> None:
    config, weights = model
    engine = tiny_llm_engine(config=config, weights=weights, max_num_batched_tokens=8)
    with pytest.raises(InvalidRequestError, match="at least one token"):
        engine.add_request(EmbeddingRequest("empty", ()))
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        engine.add_request(EmbeddingRequest("oov", (config.vocab_size,)))
    with pytest.raises(InvalidRequestError, match="pooling"):
        engine.add_request(EmbeddingRequest("pool", (1, 2), pooling="max"))  # type: ignore[arg-type]
    # An embedding may fill the whole context (nothing is generated after it) but no more.
    full = tuple(range(engine.max_model_len))
    engine.validate(EmbeddingRequest("full", tuple(t % config.vocab_size for t in full)))
    with pytest.raises(PromptTooLongError) as info:
        engine.add_request(EmbeddingRequest("long", (1,) * (engine.max_model_len + 1)))
    assert info.value.param == "input"
    engine.add_request(EmbeddingRequest("cut", tuple(_inputs(config.vocab_size)[6])))
    engine.step()  # mid-prefill: 8 of 70 tokens
    bm = engine.scheduler.block_manager
    assert bm.num_free_blocks < bm.num_blocks
    (out,) = engine.abort("cut")
    assert out.finish_reason == "abort"
    assert out.embedding is None
    assert bm.num_free_blocks == bm.num_blocks
    assert not engine.has_work()


def test_a_failing_step_fails_the_embedding_and_the_engine_serves_on(
    model: tuple[ModelConfig, Weights], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, weights = model
    engine = tiny_llm_engine(config=config, weights=weights)
    ids = tuple(_inputs(config.vocab_size)[4])
    original = engine.runner.model.forward_with_hidden

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(engine.runner.model, "forward_with_hidden", broken)
    engine.add_request(EmbeddingRequest("bad", ids))
    out = _run(engine)["bad"]
    assert out.finish_reason == "error"
    assert out.error is not None
    assert "simulated kernel failure" in out.error
    monkeypatch.setattr(engine.runner.model, "forward_with_hidden", original)
    engine.add_request(EmbeddingRequest("good", ids))
    assert _run(engine)["good"].embedding is not None


async def test_async_embed_batches_concurrent_inputs_and_cancellation_aborts(
    model: tuple[ModelConfig, Weights],
) -> None:
    config, weights = model
    inputs = _inputs(config.vocab_size)
    engine = AsyncEngine(
        tiny_llm_engine(config=config, weights=weights, max_num_seqs=8, max_num_batched_tokens=16)
    )
    try:
        outs = await asyncio.gather(
            *(engine.embed(EmbeddingRequest(f"a{i}", tuple(ids))) for i, ids in enumerate(inputs))
        )
        for i, (ids, out) in enumerate(zip(inputs, outs, strict=True)):
            assert out.request_id == f"a{i}"
            assert out.prompt_tokens == len(ids)
            assert math.isclose(sum(v * v for v in out.embedding), 1.0, rel_tol=1e-5)
        with pytest.raises(PromptTooLongError):
            await engine.embed(EmbeddingRequest("long", (1,) * (engine.engine.max_model_len + 1)))
        # Cancelled mid-prefill: the request is aborted and its blocks come back.
        task = asyncio.create_task(engine.embed(EmbeddingRequest("x", (3,) * 400)))
        for _ in range(1000):
            await asyncio.sleep(0.001)
            if engine.stats().kv_blocks_used:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(1000):
            if not engine.stats().running and not engine.stats().kv_blocks_used:
                break
            await asyncio.sleep(0.001)
        assert engine.stats().kv_blocks_used == 0
        assert engine.engine.request_ids() == []
    finally:
        await engine.shutdown()


async def test_async_embed_raises_engine_error_when_its_step_fails(
    model: tuple[ModelConfig, Weights], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, weights = model
    inner = tiny_llm_engine(config=config, weights=weights)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(inner.runner.model, "forward_with_hidden", broken)
    engine = AsyncEngine(inner)
    try:
        with pytest.raises(EngineError, match="simulated kernel failure"):
            await engine.embed(EmbeddingRequest("bad", (1, 2, 3)))
    finally:
        await engine.shutdown()
