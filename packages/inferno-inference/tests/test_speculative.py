"""Prompt-lookup speculation: the proposer, the blocks of drafts, and outputs that equal
plain decoding whatever the sampling parameters."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence as Seq

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inferno_inference.async_engine import AsyncEngine
from inferno_inference.block_manager import BlockManager
from inferno_inference.config import EngineConfig
from inferno_inference.engine import LLMEngine
from inferno_inference.scheduler import Scheduler
from inferno_inference.sequence import Sequence
from inferno_inference.speculative import NgramProposer
from inferno_inference.tiny import choice_bytes, tiny_llm_engine
from inferno_inference.types import GenerationOutput, GenerationRequest, SamplingParams
from inferno_models.testing import tiny_config
from pydantic import ValidationError

# Prompts with repeats in them (drafts from the prompt) and without; a random tiny model's
# greedy text also falls into loops, which drafts from its own output then predict.
PROMPTS: list[list[int]] = [
    [3, 4, 5, 6, 3, 4, 5, 6, 3, 4],
    [10, 11, 12, 13, 14, 15, 10, 11, 12],
    list(range(20, 40)) + list(range(20, 30)),
    [7] * 12,
    [1, 2, 3],
    [50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 50, 51, 52, 53],
]


def _brute_force(tokens: list[int], k: int, min_n: int, max_n: int) -> list[int]:
    """The proposer's contract, by scanning: the longest suffix with an earlier occurrence,
    its latest one, continued (into the draft itself) for ``k`` tokens."""
    length = len(tokens)
    for n in range(max_n, min_n - 1, -1):
        if n >= length:
            continue
        for end in range(length - 1, n - 1, -1):
            if tokens[end - n : end] == tokens[length - n :]:
                draft: list[int] = []
                for i in range(k):
                    at = end + i
                    draft.append(tokens[at] if at < length else draft[at - length])
                return draft
    return []


@settings(max_examples=200, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 4), min_size=1, max_size=60),
    k=st.integers(1, 6),
    sizes=st.tuples(st.integers(1, 4), st.integers(0, 2)),
    chunk=st.integers(1, 5),
)
def test_proposer_equals_a_scan_as_the_text_grows(
    tokens: list[int], k: int, sizes: tuple[int, int], chunk: int
) -> None:
    min_n, extra = sizes
    proposer = NgramProposer(k, min_n=min_n, max_n=min_n + extra)
    index = proposer.new_index()
    for length in range(1, len(tokens) + 1, chunk):
        prefix = tokens[:length]
        assert proposer.propose(prefix, index, k) == _brute_force(prefix, k, min_n, min_n + extra)


def test_proposer_prefers_the_longest_then_the_latest_match() -> None:
    proposer = NgramProposer(3, min_n=1, max_n=3)
    # "9 1 2" occurred once (followed by 5 6 7); "1 2" last occurred followed by 8.
    tokens = [9, 1, 2, 5, 6, 7, 1, 2, 8, 0, 9, 1, 2]
    assert proposer.propose(tokens, proposer.new_index(), 3) == [5, 6, 7]
    assert proposer.propose([4, 1, 2, 8, 3, 1, 2], proposer.new_index(), 3) == [8, 3, 1]
    assert proposer.propose([1, 2, 3, 4], proposer.new_index(), 3) == []
    assert proposer.propose([1, 2, 3, 1, 2], proposer.new_index(), 0) == []


def test_a_short_cycle_is_repeated_through_the_draft() -> None:
    proposer = NgramProposer(5, min_n=2, max_n=2)
    assert proposer.propose([4, 1, 2, 1, 2], proposer.new_index(), 5) == [1, 2, 1, 2, 1]


def test_proposer_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="num_tokens"):
        NgramProposer(0)
    with pytest.raises(ValueError, match="min_n"):
        NgramProposer(2, min_n=3, max_n=2)
    with pytest.raises(ValidationError, match="prompt_lookup_min"):
        EngineConfig(prompt_lookup_min=5, prompt_lookup_max=3)
    with pytest.raises(ValidationError, match="speculative_tokens"):
        EngineConfig(speculative_tokens=-1)


def _decoding(bm: BlockManager, prompt: int) -> Sequence:
    """A sequence whose prompt is computed and whose first token waits to be computed."""
    seq = Sequence(0, "r", 0, list(range(prompt)), prompt, SamplingParams(), 0.0)
    assert bm.allocate(seq, 10**6) == prompt
    seq.num_computed = prompt
    bm.commit(seq)
    seq.token_ids.append(99)
    return seq


def test_drafts_get_what_the_budget_and_the_blocks_allow_and_are_never_cached() -> None:
    bm = BlockManager(4, 4)
    seq = _decoding(bm, 6)  # 6 + 1 tokens: two blocks held, two free
    cached = dict(bm._cached)
    assert bm.allocate(seq, 8) == 1
    seq.draft_ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert bm.allocate_drafts(seq, 3) == 3  # the budget
    assert seq.draft_ids == [1, 2, 3]
    assert len(seq.block_table) == 3  # positions 0..9
    seq.draft_ids = list(range(10))
    assert bm.allocate_drafts(seq, 100) == 16 - 7  # every slot of the four blocks
    assert bm.num_free_blocks == 0
    assert bm._cached == cached  # only the full block of real tokens is registered


def test_drafts_come_after_admission_and_go_in_a_step_that_preempts() -> None:
    bm = BlockManager(64, 4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=8)
    running = Sequence(1, "a", 0, list(range(5)), 5, SamplingParams(), 0.0)
    sched.add(running)
    batch = sched.schedule()
    assert batch.num_tokens == (5,)
    running.num_computed = 5
    running.token_ids.append(9)
    waiting = Sequence(2, "b", 0, list(range(100, 105)), 5, SamplingParams(), 1.0)
    sched.add(waiting)
    running.draft_ids = [1, 2, 3, 4, 5]
    batch = sched.schedule()
    # The new prompt's five tokens first; the decode's drafts get the two left.
    assert batch.seqs == (running, waiting)
    assert batch.num_tokens == (3, 5)
    assert running.draft_ids == [1, 2]

    tight = BlockManager(3, 4)
    sched = Scheduler(tight, max_num_seqs=4, max_num_batched_tokens=32)
    old = Sequence(3, "c", 0, list(range(4)), 4, SamplingParams(), 0.0)
    young = Sequence(4, "d", 0, list(range(200, 207)), 7, SamplingParams(), 1.0)
    sched.add(old)
    sched.add(young)
    assert sched.schedule().num_tokens == (4, 7)  # all three blocks
    old.num_computed, young.num_computed = 4, 7
    old.token_ids.append(5)  # its next token needs a fourth block: young goes
    young.token_ids.append(6)
    old.draft_ids, young.draft_ids = [1, 2], [3]
    batch = sched.schedule()
    assert batch.preempted == (young,)
    assert batch.num_tokens == (1,)
    assert old.draft_ids == []
    assert young.draft_ids == []


def test_drafts_only_fill_a_step_up_to_its_draft_limit() -> None:
    bm = BlockManager(64, 4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64, max_draft_step_tokens=4)
    seqs = [Sequence(i, f"r{i}", 0, [i] * 3, 3, SamplingParams(), float(i)) for i in range(2)]
    for seq in seqs:
        sched.add(seq)
    sched.schedule()
    for seq in seqs:
        seq.num_computed = 3
        seq.token_ids.append(9)
        seq.draft_ids = [1, 2, 3]
    batch = sched.schedule()
    assert batch.num_tokens == (3, 1)  # the oldest takes the two draft slots left
    assert seqs[1].draft_ids == []


def _run(engine: LLMEngine, requests: Seq[GenerationRequest]) -> dict[tuple[str, int], dict]:
    """Every output of every choice, stepped to the end: tokens, text, finish, logprobs."""
    for request in requests:
        engine.add_request(request)
    got: dict[tuple[str, int], dict] = {}
    while engine.has_work():
        for out in engine.step():
            _collect(got, out)
    return got


def _collect(got: dict[tuple[str, int], dict], out: GenerationOutput) -> None:
    entry = got.setdefault(
        (out.request_id, out.index), {"ids": [], "text": "", "finish": None, "lps": []}
    )
    entry["ids"].extend(out.token_ids)
    entry["text"] += out.text
    entry["finish"] = out.finish_reason or entry["finish"]
    for lp in out.logprobs or ():
        entry["lps"].append((lp.token_id, lp.logprob, tuple(t for t, _ in lp.top)))


def _assert_same(plain: dict, spec: dict) -> None:
    assert plain.keys() == spec.keys()
    for key in plain:
        a, b = plain[key], spec[key]
        assert (b["ids"], b["text"], b["finish"]) == (a["ids"], a["text"], a["finish"]), key
        assert [(t, top) for t, _, top in b["lps"]] == [(t, top) for t, _, top in a["lps"]]
        for (_, x, _), (_, y, _) in zip(a["lps"], b["lps"], strict=True):
            assert y == pytest.approx(x, abs=1e-4)


def _requests(sp: SamplingParams, tag: str) -> list[GenerationRequest]:
    return [GenerationRequest(f"{tag}-{i}", tuple(p), sp) for i, p in enumerate(PROMPTS)]


SAMPLINGS = {
    "greedy": SamplingParams(max_tokens=40, temperature=0, ignore_eos=True),
    # Low temperatures: the tiny random model's distributions are nearly flat, and at 0.7 a
    # sampled token meets its draft a few times in a hundred (none, for some seeds).
    "seeded": SamplingParams(max_tokens=40, temperature=0.3, top_p=0.9, seed=5, ignore_eos=True),
    "penalties": SamplingParams(
        max_tokens=40,
        temperature=0,
        repetition_penalty=1.1,
        frequency_penalty=0.3,
        ignore_eos=True,
        logprobs=2,
    ),
    "stops": SamplingParams(max_tokens=40, temperature=0, stop=("dd", "xyz"), ignore_eos=True),
    "choices": SamplingParams(max_tokens=30, temperature=0.3, seed=3, n=3, ignore_eos=True),
}


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("name", list(SAMPLINGS))
def test_outputs_equal_plain_decoding(name: str, native: bool) -> None:
    sp = SAMPLINGS[name]
    plain = tiny_llm_engine(cpu_native_decode=native)
    spec = tiny_llm_engine(
        cpu_native_decode=native,
        speculative_tokens=4,
        prompt_lookup_min=1,
        speculative_step_tokens=64,  # drafts for every sequence of the batch
    )
    _assert_same(_run(plain, _requests(sp, name)), _run(spec, _requests(sp, name)))
    stats = spec.stats()
    assert stats.draft_tokens_total > 0
    assert 0 < stats.accepted_draft_tokens_total <= stats.draft_tokens_total
    assert stats.draft_acceptance_rate == (
        stats.accepted_draft_tokens_total / stats.draft_tokens_total
    )
    assert plain.stats().draft_acceptance_rate == 0.0
    assert stats.kv_blocks_used == 0  # every block back
    assert stats.generation_tokens_total == plain.stats().generation_tokens_total


def test_greedy_speculation_needs_fewer_steps() -> None:
    sp = SAMPLINGS["greedy"]
    counts = []
    for k in (0, 4):
        engine = tiny_llm_engine(speculative_tokens=k, prompt_lookup_min=1)
        for request in _requests(sp, "steps"):
            engine.add_request(request)
        steps = 0
        while engine.has_work():
            engine.step()
            steps += 1
        counts.append(steps)
    assert counts[1] < counts[0]


def test_a_tight_cache_preempts_and_still_gives_the_same_tokens() -> None:
    sp = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
    small = {"kv_cache_bytes": 24 * 1024, "block_size": 4}
    plain = tiny_llm_engine(**small)
    spec = tiny_llm_engine(speculative_tokens=6, prompt_lookup_min=1, **small)
    _assert_same(_run(plain, _requests(sp, "tight")), _run(spec, _requests(sp, "tight")))
    assert spec.stats().preemptions_total > 0
    assert spec.stats().accepted_draft_tokens_total > 0
    assert spec.stats().kv_blocks_used == 0


def test_blocks_filled_through_drafts_serve_the_prefix_cache() -> None:
    # A second request whose prompt is the first one's prompt and output hits the blocks the
    # first one filled (partly with kept drafts); its tokens must be what a cold engine gives.
    sp = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    spec = tiny_llm_engine(speculative_tokens=4, prompt_lookup_min=1)
    first = _run(spec, [GenerationRequest("a", tuple(PROMPTS[0]), sp)])[("a", 0)]["ids"]
    assert spec.stats().accepted_draft_tokens_total > 0
    follow = tuple(PROMPTS[0] + first + [8, 9])
    hits_before = spec.stats().prefix_cache_hits
    warm = _run(spec, [GenerationRequest("b", follow, sp)])
    assert spec.stats().prefix_cache_hits - hits_before >= 32
    cold = _run(tiny_llm_engine(), [GenerationRequest("b", follow, sp)])
    _assert_same(cold, warm)


def test_abort_in_the_middle_frees_the_drafts_blocks() -> None:
    sp = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    engine = tiny_llm_engine(speculative_tokens=4, prompt_lookup_min=1, kv_cache_bytes=1 << 20)
    for request in _requests(sp, "abort"):
        engine.add_request(request)
    for _ in range(12):
        engine.step()
    assert engine.stats().draft_tokens_total > 0
    for rid in engine.request_ids():
        engine.abort(rid)
    stats = engine.stats()
    assert stats.kv_blocks_used == 0
    assert not engine.has_work()


def test_drafts_stop_at_max_tokens_and_at_the_context() -> None:
    engine = tiny_llm_engine(speculative_tokens=8, prompt_lookup_min=1, max_model_len=24)
    sp = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    got = _run(engine, [GenerationRequest("short", (7,) * 12, sp)])
    assert len(got[("short", 0)]["ids"]) == 5
    long_sp = SamplingParams(max_tokens=100, temperature=0, ignore_eos=True)
    got = _run(engine, [GenerationRequest("ctx", (7,) * 12, long_sp)])
    assert len(got[("ctx", 0)]["ids"]) == 24 - 12
    assert got[("ctx", 0)]["finish"] == "length"
    assert engine.stats().kv_blocks_used == 0


def test_streaming_through_the_async_engine_gives_every_token_in_order() -> None:
    sp = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    plain = _run(tiny_llm_engine(), _requests(sp, "async"))

    async def stream() -> dict[tuple[str, int], dict]:
        engine = AsyncEngine(tiny_llm_engine(speculative_tokens=4, prompt_lookup_min=1))
        got: dict[tuple[str, int], dict] = {}

        async def one(request: GenerationRequest) -> None:
            async for out in engine.generate(request):
                _collect(got, out)

        try:
            await asyncio.gather(*(one(r) for r in _requests(sp, "async")))
        finally:
            await engine.shutdown()
        return got

    _assert_same(plain, asyncio.run(stream()))


@pytest.mark.parametrize("temperature", [0.0, 0.3])
def test_json_mode_choices_equal_plain_decoding(temperature: float) -> None:
    # The automaton advances with every kept token, so each drafted position is masked with
    # the state a plain step would have had.
    vocab = [
        *(bytes([b]) for b in range(32, 127)),
        b'{"',
        b'": ',
        b", ",
        b"}",
        b"",  # end of sequence
    ]
    eos = len(vocab) - 1
    vocab += [b"x"] * (tiny_config().vocab_size - len(vocab))
    sampling = SamplingParams(
        max_tokens=120, temperature=temperature, seed=1, n=2, response_format="json_object"
    )
    runs = []
    for k in (0, 4):
        engine = tiny_llm_engine(
            seed=3, token_bytes=vocab, speculative_tokens=k, prompt_lookup_min=1
        )
        engine.eos_token_ids = frozenset({eos})
        runs.append(choice_bytes(engine, GenerationRequest("j", (5, 6, 7, 5, 6), sampling), vocab))
        assert engine.stats().kv_blocks_used == 0
    assert runs[1] == runs[0]
    assert engine.stats().accepted_draft_tokens_total > 0
