"""The fixed-shape decode steps behind CUDA graphs, run eagerly on the CPU.

`CudaGraphDecoder(capture=False)` pads each decode step into its (batch, span) bucket exactly as
the captured graphs do, so the padding (scratch-slot writes, masked spans, stale rows of an
earlier, larger step) is checked here without a GPU; `test_gpu.py` replays the real graphs.
"""

from __future__ import annotations

import pytest
import torch
from inferno_inference.cuda_graphs import MAX_GRAPH_SLOTS, span_buckets
from inferno_inference.engine import LLMEngine
from inferno_inference.tiny import attach_eager_graphs, greedy_tokens, tiny_llm_engine
from inferno_inference.types import GenerationRequest, SamplingParams
from inferno_models.testing import random_weights, tiny_config


def test_span_buckets_double_in_whole_blocks_up_to_the_maximum() -> None:
    assert span_buckets(1024, 16) == [256, 512, 1024]
    assert span_buckets(1000 * 16, 16) == [256, 512, 1024, 2048, 4096, 8192, 16000]
    assert span_buckets(64, 16) == [64]
    assert span_buckets(96, 16, min_span=20) == [32, 64, 96]
    with pytest.raises(ValueError, match="multiple of 16"):
        span_buckets(100, 16)


def _engine(*, static: bool, max_graph_slots: int = MAX_GRAPH_SLOTS, **kwargs: object) -> LLMEngine:
    config = tiny_config()
    engine = tiny_llm_engine(
        config=config,
        weights=random_weights(config, seed=3),
        cpu_native_decode=False,
        kv_cache_bytes=1 << 20,
        **kwargs,
    )
    if static:
        attach_eager_graphs(
            engine, max_batch=6, max_span=48, min_span=8, max_graph_slots=max_graph_slots
        )
    return engine


def test_buckets_pick_the_smallest_that_holds_the_step() -> None:
    graphs = _engine(static=True).runner.graphs
    assert graphs is not None
    assert graphs.batches == [1, 2, 4, 6]
    assert graphs.spans == [8, 16, 32, 48]
    assert graphs.bucket(1, 1) == (1, 8)
    assert graphs.bucket(3, 9) == (4, 16)
    assert graphs.bucket(6, 48) == (6, 48)
    assert not graphs.can_run(7, 8)
    assert not graphs.can_run(1, 49)
    with pytest.raises(ValueError, match="no bucket"):
        graphs.bucket(1, 49)


def _generate(engine: LLMEngine, prompts: list[list[int]]) -> list[list[int]]:
    # Different lengths, so the batch shrinks as requests finish and rows of an earlier,
    # larger step are left behind in the buckets' inputs.
    return greedy_tokens(engine, prompts, [6 + 8 * i for i in range(len(prompts))])


def test_padded_steps_generate_the_same_tokens_as_plain_steps() -> None:
    prompts = [[(11 * i + 5 * k) % 300 + 3 for k in range(3 + 4 * i)] for i in range(5)]
    plain = _engine(static=False)
    static = _engine(static=True)
    graphs = static.runner.graphs
    assert graphs is not None
    used: list[tuple[int, int]] = []
    run = graphs.run

    def counting_run(input_ids: torch.Tensor, meta: object) -> torch.Tensor:
        slots = meta.decode_slots  # type: ignore[attr-defined]
        used.append(graphs.bucket(meta.num_decodes, slots.shape[1]))  # type: ignore[attr-defined]
        return run(input_ids, meta)  # type: ignore[arg-type]

    graphs.run = counting_run  # type: ignore[method-assign]
    for alone in ([7, 8, 9], list(range(3, 13))):  # spans 4-8, then 11-16
        assert _generate(static, [alone]) == _generate(plain, [alone])
    assert _generate(static, prompts) == _generate(plain, prompts)
    # Batches of 5 and fewer and every span bucket were used; the last request grows to 19 + 38
    # tokens, past the largest span, so its last steps ran on the plain path in between.
    assert {b for b, _ in used} >= {1, 2, 4, 6}
    assert {s for _, s in used} >= {8, 16, 32, 48}
    assert static.stats().kv_blocks_used == 0


def test_padded_rows_touch_only_the_scratch_slot() -> None:
    engine = _engine(static=True)
    cache = engine.runner.kv_cache
    sp = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    for i in range(3):
        engine.add_request(GenerationRequest(f"r{i}", tuple(range(3 + i, 10 + 2 * i)), sp))
    for _ in range(3):  # prefill, then decode steps
        engine.step()
    running = engine.scheduler.running
    assert len(running) == 3
    assert all(s.num_tokens - s.num_computed == 1 for s in running)
    bs = cache.block_size
    written = {s.block_table[s.num_computed // bs] * bs + s.num_computed % bs for s in running}

    def snapshot() -> torch.Tensor:
        return torch.stack([torch.stack(kv) for kv in cache.layers])

    for keys, values in cache.layers:
        keys[cache.scratch_slot].zero_()
        values[cache.scratch_slot].zero_()
    before = snapshot()
    engine.step()  # three sequences in the 4-row bucket: one padded row
    changed = (snapshot() != before).flatten(3).any(dim=3).any(dim=0).any(dim=0)
    assert set(changed.nonzero().flatten().tolist()) == written | {cache.scratch_slot}


def test_buckets_past_the_slot_budget_are_left_to_the_plain_path() -> None:
    engine = _engine(static=True, max_graph_slots=64)
    graphs = engine.runner.graphs
    assert graphs is not None
    assert graphs.can_run(1, 48)  # 1 x 48 slots
    assert graphs.can_run(6, 8)  # 6 x 8
    assert not graphs.can_run(3, 20)  # its bucket, 4 x 32, is over 64 slots
    with pytest.raises(ValueError, match="no bucket"):
        graphs.bucket(3, 20)
    prompts = [[(11 * i + 5 * k) % 300 + 3 for k in range(3 + 4 * i)] for i in range(5)]
    assert _generate(engine, prompts) == _generate(_engine(static=False), prompts)


@pytest.mark.parametrize("path", ["torch", "static", "native"])
def test_a_one_token_prefill_chunk_in_a_decode_step_is_not_sampled(path: str) -> None:
    # A two-token budget: while "a" decodes, "b"'s prompt goes in one token a step, so every
    # step is single tokens, and all but the last of b's are mid-prompt.
    def run(requests: list[GenerationRequest], **kwargs: object) -> dict[str, list[int]]:
        if path == "native":
            config = tiny_config()
            engine = tiny_llm_engine(
                config=config, weights=random_weights(config, seed=3), **kwargs
            )
        else:
            engine = _engine(static=path == "static", **kwargs)
        out: dict[str, list[int]] = {}
        engine.add_request(requests[0])
        for step in range(200):
            if step == 2 and len(requests) > 1:
                engine.add_request(requests[1])
            for o in engine.step():
                out.setdefault(o.request_id, []).extend(o.token_ids)
            if not engine.has_work():
                break
        return out

    sp = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    a = GenerationRequest("a", (5, 6, 7), sp)
    b = GenerationRequest("b", tuple(range(20, 29)), sp)
    alone = {**run([a]), **run([b])}
    together = run([a, b], max_num_seqs=2, max_num_batched_tokens=2)
    assert together == alone
    assert all(len(tokens) == 6 for tokens in together.values())
