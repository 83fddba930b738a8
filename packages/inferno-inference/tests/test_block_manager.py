"""Block manager: allocation, freeing, prefix caching and LRU reuse, with tiny shapes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from inferno_inference.block_manager import RELEASED, BlockManager
from inferno_inference.sequence import Sequence
from inferno_inference.types import SamplingParams

_ids = iter(range(10**9))


def _seq(tokens: list[int]) -> Sequence:
    return Sequence(next(_ids), "r", 0, list(tokens), len(tokens), SamplingParams(), 0.0)


def _compute(bm: BlockManager, seq: Sequence, budget: int = 10**6) -> int:
    n = bm.allocate(seq, budget)
    seq.num_computed += n
    bm.commit(seq)
    return n


def test_allocates_blocks_for_tokens_and_frees_them() -> None:
    bm = BlockManager(8, 4)
    seq = _seq(list(range(10)))
    assert _compute(bm, seq) == 10
    assert len(seq.block_table) == 3
    assert bm.num_free_blocks == 5
    seq.token_ids.append(99)  # a decode step crossing into no new block (11 <= 12)
    assert _compute(bm, seq) == 1
    assert len(seq.block_table) == 3
    seq.token_ids.extend([1, 2])
    seq.num_computed = 12
    seq.token_ids.append(5)
    assert bm.allocate(seq, 1) == 1
    assert len(seq.block_table) == 4
    bm.free(seq)
    assert bm.num_free_blocks == 8
    assert seq.block_table == []


def test_a_window_gives_back_the_blocks_behind_it_and_keeps_them_cached() -> None:
    bm = BlockManager(8, 4, window=6)
    seq = _seq(list(range(13)))
    assert _compute(bm, seq) == 13
    # The next token (position 13) sees positions 8 on: blocks 0 and 1 (0-7) are behind it.
    assert bm.release_outside_window(seq) == 2
    assert seq.block_table[:2] == [RELEASED, RELEASED]
    assert (seq.num_released, bm.num_free_blocks) == (2, 6)
    assert bm.release_outside_window(seq) == 0  # idempotent
    # A second sequence with the same prompt still finds the released blocks cached.
    twin = _seq(list(range(13)))
    assert bm.allocate(twin, 100) == 1
    assert bm.prefix_hits == 12
    bm.free(seq)
    bm.free(twin)
    assert bm.num_free_blocks == 8
    assert (seq.num_released, seq.block_table) == (0, [])
    # Without a window nothing is given back.
    full = BlockManager(8, 4)
    long = _seq(list(range(30)))
    _compute(full, long)
    assert full.release_outside_window(long) == 0


def test_token_budget_chunks_the_prompt() -> None:
    bm = BlockManager(8, 4)
    seq = _seq(list(range(10)))
    assert _compute(bm, seq, budget=4) == 4
    assert len(seq.block_table) == 1
    assert _compute(bm, seq, budget=4) == 4
    assert _compute(bm, seq, budget=4) == 2
    assert seq.num_computed == 10


def test_refuses_without_side_effects_when_full() -> None:
    bm = BlockManager(2, 4)
    a = _seq(list(range(8)))
    assert _compute(bm, a) == 8
    b = _seq(list(range(100, 105)))
    assert bm.allocate(b, 100) == 0
    assert b.block_table == []
    assert bm.num_free_blocks == 0


def test_shared_prefix_reuses_blocks_and_counts_hits() -> None:
    bm = BlockManager(16, 4)
    a = _seq(list(range(13)))
    _compute(bm, a)
    b = _seq([*range(8), 50, 51, 52, 53, 54])
    n = bm.allocate(b, 100)
    assert n == 5  # two cached blocks (8 tokens) skipped
    assert b.block_table[:2] == a.block_table[:2]
    assert b.num_cached_prompt == 8
    assert bm.prefix_hits == 8
    assert bm.prefix_queries == 26
    b.num_computed += n
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 16


def test_last_token_is_never_served_from_cache() -> None:
    bm = BlockManager(16, 4)
    a = _seq(list(range(8)))
    _compute(bm, a)
    b = _seq(list(range(8)))
    assert bm.allocate(b, 100) == 4  # only the first block hits; the second holds the last token
    assert b.num_computed == 4


def test_freed_cached_blocks_are_revived_then_evicted_lru() -> None:
    bm = BlockManager(4, 4)
    a = _seq(list(range(9)))
    _compute(bm, a)
    bm.free(a)
    assert bm.num_free_blocks == 4
    b = _seq(list(range(9)))
    assert bm.allocate(b, 100) == 1  # both full blocks revived from the free list
    assert bm.num_free_blocks == 1
    bm.free(b)
    # A different prompt needs all four blocks: the cached ones are evicted.
    c = _seq(list(range(100, 116)))
    assert _compute(bm, c) == 16
    bm.free(c)
    d = _seq(list(range(9)))
    assert bm.allocate(d, 100) == 9
    assert bm.prefix_hits == 8


def test_prefix_caching_can_be_disabled() -> None:
    bm = BlockManager(16, 4, enable_prefix_caching=False)
    a = _seq(list(range(13)))
    _compute(bm, a)
    b = _seq(list(range(13)))
    assert bm.allocate(b, 100) == 13
    assert bm.prefix_hits == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.integers(0, 3), st.booleans()), max_size=25))
def test_free_blocks_return_to_total(ops: list[tuple[int, int, bool]]) -> None:
    bm = BlockManager(12, 4)
    live: list[Sequence] = []
    for length, prefix, release in ops:
        seq = _seq([prefix] * 4 + list(range(length)))
        if _compute(bm, seq) == 0:
            bm.free(seq)
        else:
            live.append(seq)
        assert bm.num_used_blocks <= bm.num_blocks
        held = {b for s in live for b in s.block_table}
        assert bm.num_used_blocks == len(held)
        if release and live:
            bm.free(live.pop(0))
    for seq in live:
        bm.free(seq)
    assert bm.num_free_blocks == bm.num_blocks


def test_blocks_scheduled_in_this_step_are_shared_at_once() -> None:
    bm = BlockManager(16, 4)
    a = _seq(list(range(10)))
    b = _seq([*range(8), 70, 71])
    assert bm.allocate(a, 100) == 10  # not yet computed: the step is only scheduled
    assert bm.allocate(b, 100) == 2
    assert b.block_table[:2] == a.block_table[:2]
    # The step failed: its blocks must not be served to anyone later.
    bm.free(a, uncache=True)
    bm.free(b, uncache=True)
    c = _seq(list(range(10)))
    assert bm.allocate(c, 100) == 10
