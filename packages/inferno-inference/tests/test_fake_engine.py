"""The FakeEngine test double behaves like the engine seam promises."""

from __future__ import annotations

import asyncio

import pytest
from inferno_inference import (
    EngineStoppedError,
    GenerationOutput,
    GenerationRequest,
    InferenceEngine,
    InvalidRequestError,
    PromptTooLongError,
    SamplingParams,
)
from inferno_inference.testing import FakeEngine, fake_token_id


def _req(rid: str = "r1", prompt: tuple[int, ...] = (1, 2, 3), **kw: object) -> GenerationRequest:
    return GenerationRequest(rid, prompt, SamplingParams.model_validate(kw))


async def _collect(engine: FakeEngine, req: GenerationRequest) -> list[GenerationOutput]:
    return [o async for o in engine.generate(req)]


def test_implements_protocol() -> None:
    assert isinstance(FakeEngine(), InferenceEngine)


async def test_streams_script_and_usage() -> None:
    engine = FakeEngine(["a", "b", "c"])
    outs = await _collect(engine, _req(max_tokens=10))
    assert "".join(o.text for o in outs) == "abc"
    assert [o.token_ids for o in outs] == [(fake_token_id(p, 49152),) for p in "abc"]
    assert outs[-1].finish_reason == "stop"
    assert outs[-1].usage is not None
    assert outs[-1].usage.completion_tokens == 3
    assert all(o.usage is None for o in outs[:-1])


async def test_max_tokens_gives_length() -> None:
    outs = await _collect(FakeEngine(["x"] * 10), _req(max_tokens=4))
    assert len(outs) == 4
    assert outs[-1].finish_reason == "length"


async def test_stop_string_across_pieces_is_cut() -> None:
    outs = await _collect(FakeEngine(["Hel", "lo wo", "rld", "!"]), _req(stop=("o w",)))
    assert "".join(o.text for o in outs) == "Hell"
    assert outs[-1].finish_reason == "stop"
    assert outs[-1].stop_reason == "o w"


async def test_end_token_ends_a_script_like_a_model_ends_its_turn() -> None:
    outs = await _collect(FakeEngine(["a", "b"], end_token_id=7), _req(logprobs=1))
    assert [o.token_ids for o in outs][-1] == (7,)
    assert "".join(o.text for o in outs) == "ab"
    last = outs[-1]
    assert (last.finish_reason, last.stop_reason, last.text) == ("stop", 7, "")
    assert last.logprobs is not None
    assert last.logprobs[0].token_id == 7
    assert last.usage is not None
    assert last.usage.completion_tokens == 3
    cut = await _collect(FakeEngine(["a", "b"], end_token_id=7), _req(max_tokens=2))
    assert (cut[-1].finish_reason, cut[-1].stop_reason) == ("length", None)
    assert all(7 not in o.token_ids for o in cut)


async def test_n_choices_and_logprobs() -> None:
    engine = FakeEngine(lambda req, i: [f"c{i}", "."])
    outs = await _collect(engine, _req(n=2, logprobs=2))
    by = {i: "".join(o.text for o in outs if o.index == i) for i in (0, 1)}
    assert by == {0: "c0.", 1: "c1."}
    lp = outs[0].logprobs
    assert lp is not None
    assert len(lp[0].top) == 2
    assert lp[0].top[0][0] == lp[0].token_id
    assert outs[-1].usage is not None
    assert outs[-1].usage.completion_tokens == 4


async def test_validation_errors() -> None:
    engine = FakeEngine(max_model_len=8, vocab_size=100)
    with pytest.raises(PromptTooLongError) as info:
        await _collect(engine, _req(prompt=tuple(range(8))))
    assert info.value.param == "prompt"
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        await _collect(engine, _req(prompt=(5, 100)))
    biased = GenerationRequest("b", (5,), SamplingParams(logit_bias=((100, 1.0),)))
    with pytest.raises(InvalidRequestError, match="logit_bias token id 100") as bias_info:
        await _collect(engine, biased)
    assert bias_info.value.param == "logit_bias"


async def test_abort_mid_stream() -> None:
    engine = FakeEngine(["t"] * 100, token_delay=0.001)
    outs: list[GenerationOutput] = []
    async for out in engine.generate(_req(max_tokens=100)):
        outs.append(out)
        if len(outs) == 3:
            engine.abort("r1")
    assert outs[-1].finish_reason == "abort"
    assert len(outs) < 100
    assert engine.aborted == ["r1"]
    assert engine.stats().running == 0


async def test_cancel_iterator_counts_as_abort() -> None:
    engine = FakeEngine(["t"] * 100, token_delay=0.01)

    async def consume() -> None:
        async for _ in engine.generate(_req(max_tokens=100)):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.03)
    assert engine.stats().running == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.aborted == ["r1"]
    assert engine.stats().running == 0


async def test_scripted_error() -> None:
    outs = await _collect(FakeEngine(["a", "b", "c"], fail_after=1), _req())
    assert outs[-1].finish_reason == "error"
    assert outs[-1].error
    assert outs[0].text == "a"


async def test_max_num_seqs_queues_and_stats() -> None:
    engine = FakeEngine(["a"] * 5, max_num_seqs=1, token_delay=0.005)
    tasks = [asyncio.create_task(_collect(engine, _req(f"r{i}"))) for i in range(2)]
    await asyncio.sleep(0.01)
    stats = engine.stats()
    assert (stats.running, stats.waiting) == (1, 1)
    results = await asyncio.gather(*tasks)
    assert all(r[-1].finish_reason == "stop" for r in results)
    assert engine.stats().generation_tokens_total == 10


async def test_shutdown_refuses_new_requests() -> None:
    engine = FakeEngine()
    await engine.shutdown()
    with pytest.raises(EngineStoppedError):
        await _collect(engine, _req())


def test_seam_and_fake_import_without_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, inferno_inference, inferno_inference.testing; "
        "assert 'torch' not in sys.modules, 'torch was imported'; "
        "assert inferno_inference.EngineConfig.__name__ == 'EngineConfig'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


async def test_fake_embeddings_are_deterministic_unit_vectors() -> None:
    from inferno_inference import EmbeddingRequest

    engine = FakeEngine(embedding_size=8)
    a = await engine.embed(EmbeddingRequest("a", (1, 2, 3)))
    b = await engine.embed(EmbeddingRequest("b", (1, 2, 3)))
    c = await engine.embed(EmbeddingRequest("c", (3, 2, 1), pooling="last"))
    raw = await engine.embed(EmbeddingRequest("d", (5, 6), normalize=False))
    assert a.embedding == b.embedding
    assert len(a.embedding) == 8
    assert a.prompt_tokens == 3
    assert abs(sum(v * v for v in a.embedding) - 1) < 1e-9
    assert c.embedding != a.embedding
    assert abs(sum(v * v for v in raw.embedding) - 1) > 1e-6
    assert [r.request_id for r in engine.embeddings] == ["a", "b", "c", "d"]
    assert engine.stats().prompt_tokens_total == 11


async def test_fake_embed_validates_fails_and_aborts() -> None:
    from inferno_inference import EmbeddingRequest, EngineError

    engine = FakeEngine(max_model_len=4, vocab_size=10)
    with pytest.raises(PromptTooLongError):
        await engine.embed(EmbeddingRequest("long", (1,) * 5))
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        await engine.embed(EmbeddingRequest("oov", (10,)))
    with pytest.raises(EngineError, match="scripted"):
        await FakeEngine(fail_after=0).embed(EmbeddingRequest("x", (1,)))
    slow = FakeEngine(first_token_delay=5.0)
    task = asyncio.create_task(slow.embed(EmbeddingRequest("slow", (1, 2))))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slow.aborted == ["slow"]
    assert not slow._embedding_live
    await slow.shutdown()
    with pytest.raises(EngineStoppedError):
        await slow.embed(EmbeddingRequest("late", (1,)))
