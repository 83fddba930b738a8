"""Request priority through the engine: a more urgent request preempts a running one."""

from __future__ import annotations

from inferno_inference import SamplingParams
from inferno_inference.tiny import tiny_llm_engine
from inferno_inference.types import GenerationRequest


def test_an_urgent_request_runs_ahead_of_a_running_one() -> None:
    engine = tiny_llm_engine(seed=2, max_num_seqs=8)
    engine.scheduler.max_num_seqs = 1  # one slot: the urgent request must take it
    slow = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    quick = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    engine.add_request(GenerationRequest("background", (5, 6, 7, 8), slow, priority=10))
    tokens: dict[str, int] = {"background": 0, "urgent": 0}
    for _ in range(5):
        tokens["background"] += sum(len(o.token_ids) for o in engine.step())
    engine.add_request(GenerationRequest("urgent", (9, 10, 11), quick))
    finished: list[str] = []
    while engine.has_work():
        for out in engine.step():
            tokens[out.request_id] += len(out.token_ids)
            if out.finished:
                finished.append(out.request_id)
    assert finished == ["urgent", "background"]
    assert tokens == {"background": 40, "urgent": 3}
    assert engine.stats().preemptions_total >= 1
    blocks = engine.scheduler.block_manager
    assert blocks.num_free_blocks == blocks.num_blocks


def test_equal_priorities_keep_arrival_order() -> None:
    engine = tiny_llm_engine(seed=2, max_num_seqs=8)
    engine.scheduler.max_num_seqs = 1
    sampling = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    for name in ("first", "second", "third"):
        engine.add_request(GenerationRequest(name, (5, 6), sampling, priority=1))
    finished = []
    while engine.has_work():
        finished.extend(o.request_id for o in engine.step() if o.finished)
    assert finished == ["first", "second", "third"]
    assert engine.stats().preemptions_total == 0
