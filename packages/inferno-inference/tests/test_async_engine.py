"""AsyncEngine over a tiny real model: streaming, abort, cancellation, errors, n > 1, stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import torch
from inferno_inference import (
    EngineStoppedError,
    GenerationOutput,
    GenerationRequest,
    InferenceEngine,
    InvalidRequestError,
    PromptTooLongError,
    SamplingParams,
)
from inferno_inference.async_engine import AsyncEngine
from inferno_inference.runner import StepInputs
from inferno_inference.tiny import tiny_llm_engine
from inferno_memory import HostMemoryResource, StatisticsAdaptor

PROMPT = tuple(range(3, 20))


@pytest.fixture
def resource() -> StatisticsAdaptor:
    return StatisticsAdaptor(HostMemoryResource())


@pytest.fixture
async def engine(resource: StatisticsAdaptor) -> AsyncIterator[AsyncEngine]:
    eng = AsyncEngine(tiny_llm_engine(resource=resource, max_num_batched_tokens=16))
    yield eng
    await eng.shutdown()


def _req(rid: str, prompt: tuple[int, ...] = PROMPT, **kw: object) -> GenerationRequest:
    return GenerationRequest(rid, prompt, SamplingParams.model_validate(kw))


async def _collect(engine: AsyncEngine, req: GenerationRequest) -> list[GenerationOutput]:
    return [o async for o in engine.generate(req)]


def _tokens(outs: list[GenerationOutput], index: int = 0) -> list[int]:
    return [t for o in outs if o.index == index for t in o.token_ids]


def _text(outs: list[GenerationOutput], index: int = 0) -> str:
    return "".join(o.text for o in outs if o.index == index)


async def test_streams_tokens_text_and_usage(engine: AsyncEngine) -> None:
    assert isinstance(engine, InferenceEngine)
    outs = await _collect(engine, _req("a", max_tokens=12, temperature=0, ignore_eos=True))
    tokens = _tokens(outs)
    assert len(tokens) == 12
    assert _text(outs) == "".join(chr(97 + t % 26) for t in tokens)
    assert outs[-1].finish_reason == "length"
    assert outs[-1].usage is not None
    assert (outs[-1].usage.prompt_tokens, outs[-1].usage.completion_tokens) == (len(PROMPT), 12)
    assert all(o.finish_reason is None for o in outs[:-1])


async def test_concurrent_requests_finish_and_free_all_blocks(engine: AsyncEngine) -> None:
    reqs = [
        _req(f"r{i}", tuple(range(3, 5 + 3 * i)), max_tokens=8 + i, ignore_eos=True)
        for i in range(6)
    ]
    results = await asyncio.gather(*(_collect(engine, r) for r in reqs))
    assert [len(_tokens(r)) for r in results] == [8 + i for i in range(6)]
    stats = engine.stats()
    assert stats.kv_blocks_used == 0
    assert (stats.running, stats.waiting) == (0, 0)
    assert stats.generation_tokens_total == sum(8 + i for i in range(6))


async def test_cancelling_the_iterator_aborts(engine: AsyncEngine) -> None:
    got: list[GenerationOutput] = []

    async def consume() -> None:
        async for out in engine.generate(_req("c", max_tokens=400, ignore_eos=True)):
            got.append(out)

    task = asyncio.create_task(consume())
    for _ in range(1000):
        if len(got) >= 3:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):
        if engine.stats().kv_blocks_used == 0 and engine.stats().running == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.stats().kv_blocks_used == 0
    assert len(got) < 400


async def test_abort_mid_prefill(engine: AsyncEngine) -> None:
    runner = engine.engine.runner
    original = runner.execute
    steps = asyncio.Queue[int]()
    loop = asyncio.get_running_loop()

    def slow(inputs: StepInputs) -> torch.Tensor:
        time.sleep(0.01)  # keep the prefill going long enough to abort it from the loop
        loop.call_soon_threadsafe(steps.put_nowait, 1)
        return original(inputs)

    runner.execute = slow  # type: ignore[method-assign]
    long_prompt = tuple(i % 250 + 3 for i in range(300))  # 19 chunks of 16 tokens
    stream = engine.generate(_req("p", long_prompt, max_tokens=5))
    first = asyncio.ensure_future(stream.__anext__())
    await steps.get()  # one chunk computed
    engine.abort("p")
    out = await first
    assert out.finish_reason == "abort"
    assert out.token_ids == ()
    assert out.usage is not None
    assert out.usage.completion_tokens == 0
    assert engine.stats().kv_blocks_used == 0


async def test_validation_errors_raise_on_first_next(engine: AsyncEngine) -> None:
    with pytest.raises(PromptTooLongError):
        await _collect(engine, _req("x", tuple([3] * 600)))
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        await _collect(engine, _req("y", (3, 10_000)))
    stream = engine.generate(_req("dup", max_tokens=50, ignore_eos=True))
    await stream.__anext__()
    with pytest.raises(InvalidRequestError, match="already running"):
        await _collect(engine, _req("dup"))
    await stream.aclose()  # type: ignore[attr-defined]


async def test_step_failure_fails_its_requests_and_engine_keeps_serving(
    engine: AsyncEngine,
) -> None:
    runner = engine.engine.runner
    original = runner.execute
    calls = {"n": 0}

    def flaky(inputs: StepInputs) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated kernel failure")
        return original(inputs)

    runner.execute = flaky  # type: ignore[method-assign]
    outs = await _collect(engine, _req("bad", max_tokens=10, ignore_eos=True))
    assert outs[-1].finish_reason == "error"
    assert outs[-1].error is not None
    assert "simulated kernel failure" in outs[-1].error
    assert engine.stats().kv_blocks_used == 0
    ok = await _collect(engine, _req("good", max_tokens=4, ignore_eos=True))
    assert ok[-1].finish_reason == "length"


async def test_n_choices_with_seed_are_reproducible(engine: AsyncEngine) -> None:
    req = _req("n", max_tokens=10, n=3, seed=5, temperature=1.0, ignore_eos=True, logprobs=2)
    first = await _collect(engine, req)
    choices = [_tokens(first, i) for i in range(3)]
    assert all(len(c) == 10 for c in choices)
    assert len({tuple(c) for c in choices}) == 3
    assert first[-1].usage is not None
    assert first[-1].usage.completion_tokens == 30
    assert all(o.logprobs is not None for o in first if o.token_ids)
    # Again, now alongside unrelated traffic: a seeded request ignores its batch neighbours.
    noise = [_req(f"z{i}", max_tokens=10, temperature=1.0, ignore_eos=True) for i in range(3)]
    again, *_ = await asyncio.gather(
        _collect(engine, _req("n2", max_tokens=10, n=3, seed=5, temperature=1.0, ignore_eos=True)),
        *(_collect(engine, r) for r in noise),
    )
    assert [_tokens(again, i) for i in range(3)] == choices
    assert engine.stats().prefix_cache_hits > 0  # siblings reused the leader's prompt blocks


async def test_stop_strings_and_stop_token_ids(engine: AsyncEngine) -> None:
    base = await _collect(engine, _req("s0", max_tokens=20, temperature=0, ignore_eos=True))
    text, tokens = _text(base), _tokens(base)
    stop = text[6:8]
    outs = await _collect(
        engine, _req("s1", max_tokens=20, temperature=0, ignore_eos=True, stop=(stop,))
    )
    assert _text(outs) == text[: text.find(stop)]
    assert outs[-1].finish_reason == "stop"
    assert outs[-1].stop_reason == stop
    stop_id = tokens[4]
    outs = await _collect(
        engine, _req("s2", max_tokens=20, temperature=0, ignore_eos=True, stop_token_ids=(stop_id,))
    )
    assert _tokens(outs) == tokens[: tokens.index(stop_id) + 1]
    assert outs[-1].finish_reason == "stop"
    assert outs[-1].stop_reason == stop_id
    assert outs[-1].token_ids == (stop_id,)
    assert outs[-1].text == ""
    assert all(o.stop_reason is None for o in outs[:-1])
    outs = await _collect(engine, _req("s3", max_tokens=5, temperature=0, ignore_eos=True))
    assert (outs[-1].finish_reason, outs[-1].stop_reason) == ("length", None)


async def test_logprobs_describe_the_text_a_stop_string_leaves(engine: AsyncEngine) -> None:
    base = await _collect(engine, _req("l0", max_tokens=20, temperature=0, ignore_eos=True))
    text, tokens = _text(base), _tokens(base)
    stop = text[6:9]
    cut = text.find(stop)
    outs = await _collect(
        engine,
        _req("l1", max_tokens=20, temperature=0, ignore_eos=True, stop=(stop,), logprobs=2),
    )
    assert _text(outs) == text[:cut]
    lps = [lp for o in outs for lp in o.logprobs or ()]
    # One character per token in the tiny tokenizer: the stop string's tokens are gone.
    assert [lp.token_id for lp in lps] == tokens[:cut]
    assert _tokens(outs) == tokens[: cut + len(stop)]  # usage still counts them
    shown = scored = 0
    for o in outs:  # and no output's logprobs run ahead of its text
        shown, scored = shown + len(o.text), scored + len(o.logprobs or ())
        assert scored <= shown


async def test_eos_stops_unless_ignored(resource: StatisticsAdaptor) -> None:
    probe = AsyncEngine(tiny_llm_engine(resource=resource))
    base = await _collect(probe, _req("e0", max_tokens=12, temperature=0, ignore_eos=True))
    await probe.shutdown()
    tokens = _tokens(base)
    llm = tiny_llm_engine(resource=resource)
    llm.eos_token_ids = frozenset({tokens[3]})
    eng = AsyncEngine(llm)
    outs = await _collect(eng, _req("e1", max_tokens=12, temperature=0))
    assert _tokens(outs) == tokens[: tokens.index(tokens[3]) + 1]
    assert outs[-1].finish_reason == "stop"
    assert outs[-1].stop_reason == tokens[3]
    await eng.shutdown()


async def test_shutdown_releases_kv_memory_and_refuses_requests(
    resource: StatisticsAdaptor,
) -> None:
    eng = AsyncEngine(tiny_llm_engine(resource=resource))
    assert resource.stats().current_bytes == eng.engine.runner.kv_cache.nbytes > 0
    stream = eng.generate(_req("long", max_tokens=400, ignore_eos=True))
    await stream.__anext__()
    await eng.shutdown()
    rest = [o async for o in stream]
    assert rest[-1].finish_reason == "abort"
    assert resource.stats().current_bytes == 0
    with pytest.raises(EngineStoppedError):
        await _collect(eng, _req("late"))


async def test_abort_right_after_submit_and_id_reuse(engine: AsyncEngine) -> None:
    stream = engine.generate(_req("same", max_tokens=300, ignore_eos=True))
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0)  # the submission is queued
    engine.abort("same")
    out = await first
    assert out.finish_reason in ("abort", None)
    await stream.aclose()  # type: ignore[attr-defined]
    # The id is free again at once; the stale abort must not hit the new request.
    outs = await _collect(engine, _req("same", max_tokens=6, ignore_eos=True))
    assert outs[-1].finish_reason == "length"
    assert len(_tokens(outs)) == 6


async def test_logit_bias_bans_a_token_in_a_shared_batch(engine: AsyncEngine) -> None:
    greedy = {"max_tokens": 12, "temperature": 0, "ignore_eos": True}
    base = _tokens(await _collect(engine, _req("lb0", **greedy)))
    banned = base[2]
    outs, plain = await asyncio.gather(
        _collect(engine, _req("lb1", logit_bias=((banned, -100.0),), **greedy)),
        _collect(engine, _req("lb2", **greedy)),
    )
    tokens = _tokens(outs)
    assert tokens[:2] == base[:2]  # same up to the first position the ban touches
    assert banned not in tokens
    assert _tokens(plain) == base  # the unbiased neighbour is untouched
    forced = base[0] + 1
    outs = await _collect(engine, _req("lb3", logit_bias=((forced, 100.0),), **greedy))
    assert _tokens(outs) == [forced] * 12
