"""Prompt scoring: each prompt token's log-probability given the tokens before it."""

from __future__ import annotations

import math

import pytest
from inferno_inference import SamplingParams
from inferno_inference.engine import LLMEngine
from inferno_inference.tiny import tiny_llm_engine
from inferno_inference.types import GenerationOutput, GenerationRequest, TokenLogprob

PROMPT = (5, 9, 13, 2, 7, 21, 30, 4, 11, 17, 8, 3)


def _run(engine: LLMEngine, request: GenerationRequest) -> list[GenerationOutput]:
    engine.add_request(request)
    outputs: list[GenerationOutput] = []
    while engine.has_work():
        outputs.extend(engine.step())
    return outputs


def _generated(engine: LLMEngine, prompt: tuple[int, ...], n: int) -> list[TokenLogprob]:
    """Greedy continuation of ``prompt`` with the chosen tokens' log-probabilities."""
    sampling = SamplingParams(max_tokens=n, temperature=0, logprobs=0, ignore_eos=True)
    outs = _run(engine, GenerationRequest(f"g{len(prompt)}", prompt, sampling))
    return [lp for o in outs for lp in o.logprobs or ()]


@pytest.mark.parametrize("budget", [512, 5])  # one chunk, or the prompt in chunks of 5
def test_the_prompt_is_scored_as_decoding_scores_it(budget: int) -> None:
    engine = tiny_llm_engine(seed=4, max_num_batched_tokens=max(budget, 8))
    engine.scheduler.max_num_batched_tokens = budget
    continuation = _generated(engine, PROMPT, 8)
    prompt = PROMPT + tuple(lp.token_id for lp in continuation)
    sampling = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=3, ignore_eos=True)
    outs = _run(engine, GenerationRequest("p", prompt, sampling))
    scored = outs[0].prompt_logprobs
    assert scored is not None
    assert len(scored) == len(prompt)
    assert scored[0] is None
    entries = [lp for lp in scored[1:] if lp is not None]
    assert [lp.token_id for lp in entries] == list(prompt[1:])
    # The tokens decoding chose, scored as part of a prompt, have the logprobs they had.
    for decoded, again in zip(continuation, entries[-8:], strict=True):
        assert math.isclose(decoded.logprob, again.logprob, abs_tol=2e-4)
        assert again.top[0][0] == decoded.token_id  # greedy: the likeliest token
    for lp in entries:
        assert len(lp.top) == 3
        assert lp.logprob <= lp.top[0][1] + 1e-6
    assert all(o.prompt_logprobs is None for o in outs[1:])
    blocks = engine.scheduler.block_manager
    assert blocks.num_free_blocks == blocks.num_blocks


def test_a_cached_prompt_is_still_scored_in_full_and_siblings_share_it() -> None:
    engine = tiny_llm_engine(seed=4)
    plain = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    _run(engine, GenerationRequest("warm", PROMPT, plain))  # the prompt's blocks are cached
    sampling = SamplingParams(
        max_tokens=2, temperature=1.0, seed=1, n=3, prompt_logprobs=0, ignore_eos=True
    )
    outs = _run(engine, GenerationRequest("p", PROMPT, sampling))
    carried = [o for o in outs if o.prompt_logprobs is not None]
    assert [o.index for o in carried] == [0]
    scored = carried[0].prompt_logprobs
    assert scored is not None
    assert len(scored) == len(PROMPT)
    assert all(lp is not None and lp.top == () for lp in scored[1:])
    fresh = tiny_llm_engine(seed=4)
    again = _run(fresh, GenerationRequest("q", PROMPT, sampling))[0].prompt_logprobs
    assert again is not None
    for a, b in zip(scored[1:], again[1:], strict=True):
        assert a is not None
        assert b is not None
        assert math.isclose(a.logprob, b.logprob, abs_tol=1e-5)


def test_prompt_logprobs_are_validated() -> None:
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)
