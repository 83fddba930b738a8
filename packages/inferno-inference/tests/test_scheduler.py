"""Scheduler: chunked prefill, token budget, max_num_seqs, FIFO and preemption (no model)."""

from __future__ import annotations

from inferno_inference.block_manager import BlockManager
from inferno_inference.scheduler import ScheduledBatch, Scheduler
from inferno_inference.sequence import Sequence, SequenceStatus
from inferno_inference.types import SamplingParams

_ids = iter(range(10**9))


def _seq(
    n_prompt: int, arrival: float = 0.0, leader: Sequence | None = None, priority: int = 0
) -> Sequence:
    tokens = [next(_ids) % 1000 + 10 for _ in range(n_prompt)]
    if leader is not None:
        tokens = list(leader.token_ids[: leader.prompt_len])
    return Sequence(
        next(_ids),
        "r",
        0,
        tokens,
        len(tokens),
        SamplingParams(),
        arrival,
        priority=priority,
        leader=leader,
    )


def _sched(blocks: int = 64, block_size: int = 4, seqs: int = 4, tokens: int = 16) -> Scheduler:
    bm = BlockManager(blocks, block_size)
    return Scheduler(bm, max_num_seqs=seqs, max_num_batched_tokens=tokens)


def _advance(s: Scheduler, batch: ScheduledBatch) -> None:
    """Pretend the model ran: count the tokens, sample one where a sequence caught up."""
    for seq, n in zip(batch.seqs, batch.num_tokens, strict=True):
        seq.num_computed += n
        s.block_manager.commit(seq)
        if seq.num_computed == seq.num_tokens:
            seq.token_ids.append(7)


def test_long_prompt_is_chunked_and_decodes_keep_running() -> None:
    s = _sched(tokens=8)
    short = _seq(3)
    s.add(short)
    b = s.schedule()
    assert b.num_tokens == (3,)
    _advance(s, b)
    long = _seq(20, arrival=1.0)
    s.add(long)
    seen = []
    for _ in range(3):
        b = s.schedule()
        assert b.total_tokens <= 8
        assert b.seqs[0] is short
        assert b.num_tokens[0] == 1  # the decode is never stalled by the prefill
        seen.append(b.num_tokens[1])
        _advance(s, b)
    assert seen == [7, 7, 6]
    assert long.num_computed == 20


def test_max_num_seqs_and_fifo_admission() -> None:
    s = _sched(seqs=2, tokens=64)
    seqs = [_seq(3, arrival=float(i)) for i in range(4)]
    for q in seqs:
        s.add(q)
    b = s.schedule()
    assert list(b.seqs) == seqs[:2]
    _advance(s, b)
    s.finish(seqs[0])
    b = s.schedule()
    assert seqs[2] in b.seqs
    assert seqs[3] not in b.seqs
    assert list(s.waiting) == [seqs[3]]


def test_head_of_line_that_does_not_fit_blocks_later_requests() -> None:
    s = _sched(blocks=4, block_size=4, tokens=64)
    a = _seq(10)
    s.add(a)
    _advance(s, s.schedule())  # a holds 3 blocks, 1 free
    big, small = _seq(8, 1.0), _seq(2, 2.0)
    s.add(big)
    s.add(small)
    b = s.schedule()
    assert b.seqs == (a,)  # small would fit but must not overtake big
    assert list(s.waiting) == [big, small]


def test_preempts_youngest_when_blocks_run_out_and_recomputes_it() -> None:
    s = _sched(blocks=4, block_size=4, tokens=64)
    old, young = _seq(4, 0.0), _seq(4, 1.0)
    s.add(old)
    s.add(young)
    _advance(s, s.schedule())  # each holds 1 full block + needs a 2nd for its next token
    b = s.schedule()
    _advance(s, b)
    assert s.block_manager.num_free_blocks == 0
    # Grow old until it needs a third block: young must be preempted.
    for _ in range(10):
        b = s.schedule()
        if b.preempted:
            break
        _advance(s, b)
    assert b.preempted == (young,)
    assert young.status is SequenceStatus.WAITING
    assert young.block_table == []
    assert young.num_computed == 0
    assert s.waiting[0] is young
    assert s.num_preemptions == 1
    assert b.seqs == (old,)
    out_before = young.output_len
    s.finish(old)
    b = s.schedule()
    assert b.seqs == (young,)
    # Its own first block was cached before preemption, so only the rest is recomputed.
    assert young.num_computed == 4
    assert b.num_tokens == (young.num_tokens - 4,)
    _advance(s, b)
    assert young.output_len == out_before + 1
    s.finish(young)
    assert s.block_manager.num_free_blocks == 4


def test_sibling_waits_for_leader_prefill_then_hits_its_blocks() -> None:
    s = _sched(tokens=8)
    leader = _seq(14)
    sibling = _seq(0, leader=leader)
    s.add(leader)
    s.add(sibling)
    b = s.schedule()
    assert b.seqs == (leader,)  # the sibling is held back while the leader prefills
    _advance(s, b)
    b = s.schedule()
    assert b.seqs == (leader,)
    _advance(s, b)
    b = s.schedule()
    assert sibling in b.seqs
    assert sibling.num_cached_prompt == 12
    assert sibling.block_table[:3] == leader.block_table[:3]


def test_finish_from_waiting_and_running_frees_everything() -> None:
    s = _sched(tokens=4)
    a, c = _seq(10), _seq(5, 1.0)
    s.add(a)
    s.add(c)
    _advance(s, s.schedule())  # a mid-prefill (abort mid-prefill)
    assert a.is_prefilling
    s.finish(a)
    s.finish(c)
    assert not s.has_work()
    assert s.block_manager.num_free_blocks == s.block_manager.num_blocks


def test_priority_orders_admission_and_fifo_holds_within_a_priority() -> None:
    s = _sched(seqs=1, tokens=64)
    late_urgent = _seq(3, arrival=3.0, priority=-1)
    order = [_seq(3, arrival=0.0), _seq(3, arrival=1.0, priority=1), _seq(3, arrival=2.0)]
    for q in [*order, late_urgent]:
        s.add(q)
    assert list(s.waiting) == [late_urgent, order[0], order[2], order[1]]
    admitted = []
    while s.has_work():
        b = s.schedule()
        admitted.extend(q for q in b.seqs if q not in admitted)
        _advance(s, b)
        for q in list(b.seqs):
            if q.output_len >= 1:
                s.finish(q)
    assert admitted == [late_urgent, order[0], order[2], order[1]]


def test_a_more_urgent_request_preempts_a_less_urgent_one_when_full() -> None:
    s = _sched(seqs=2, tokens=64)
    background = [_seq(4, arrival=0.0, priority=5), _seq(4, arrival=1.0, priority=5)]
    for q in background:
        s.add(q)
    _advance(s, s.schedule())
    assert s.running == background
    urgent = _seq(4, arrival=2.0, priority=0)
    s.add(urgent)
    b = s.schedule()
    # The youngest of the lower priority makes room, and loses its place in this step.
    assert b.preempted == (background[1],)
    assert urgent in b.seqs
    assert background[1] not in b.seqs
    assert background[1].status is SequenceStatus.WAITING
    assert background[1].block_table == []
    assert set(s.running) == {background[0], urgent}
    _advance(s, b)
    peer = _seq(4, arrival=3.0, priority=0)  # the other background one makes room too
    s.add(peer)
    b = s.schedule()
    assert b.preempted == (background[0],)
    assert peer in b.seqs
    _advance(s, b)
    # Equal priorities never preempt each other: this one waits for a free slot.
    later = _seq(4, arrival=4.0, priority=0)
    s.add(later)
    b = s.schedule()
    assert b.preempted == ()
    assert later not in b.seqs
    assert set(s.running) == {urgent, peer}
    assert list(s.waiting) == [later, *background]


def test_the_lowest_priority_is_preempted_first_when_blocks_run_out() -> None:
    # 4 blocks of 4 tokens: two sequences of 7 prompt tokens each fill 2 blocks once decoding.
    s = _sched(blocks=4, block_size=4, seqs=4, tokens=64)
    keep = _seq(7, arrival=1.0, priority=0)  # younger, but more urgent
    drop = _seq(7, arrival=0.0, priority=3)
    s.add(keep)
    s.add(drop)
    _advance(s, s.schedule())
    _advance(s, s.schedule())  # both decode into their second block
    preempted: list[Sequence] = []
    for _ in range(4):
        b = s.schedule()
        preempted.extend(b.preempted)
        _advance(s, b)
    assert preempted
    assert all(q is drop for q in preempted)
