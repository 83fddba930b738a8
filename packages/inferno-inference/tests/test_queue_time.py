"""The engine reports how long each request waited before it was first scheduled."""

from __future__ import annotations

import asyncio

from inferno_inference.testing import FakeEngine
from inferno_inference.tiny import tiny_llm_engine
from inferno_inference.types import GenerationOutput, GenerationRequest, SamplingParams


def test_queue_time_grows_for_a_request_that_waits() -> None:
    engine = tiny_llm_engine(max_num_seqs=1)
    sp = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    engine.add_request(GenerationRequest("first", (5, 6, 7), sp))
    engine.add_request(GenerationRequest("second", (5, 6, 8), sp))
    usages = {}
    while engine.has_work():
        for out in engine.step():
            if out.usage is not None:
                usages[out.request_id] = out.usage
    first, second = usages["first"].queue_time_s, usages["second"].queue_time_s
    assert first is not None
    assert second is not None
    assert 0 <= first < second  # the second waited for the whole first request


async def test_fake_engine_reports_queue_time_too() -> None:
    engine = FakeEngine(["a", "b"], max_num_seqs=1, token_delay=0.01)
    sp = SamplingParams(max_tokens=2)

    async def run(rid: str) -> list[GenerationOutput]:
        return [o async for o in engine.generate(GenerationRequest(rid, (1, 2), sp))]

    outs = await asyncio.gather(run("x"), run("y"))
    usages = [o[-1].usage for o in outs]
    waits = sorted(u.queue_time_s for u in usages if u is not None and u.queue_time_s is not None)
    assert len(waits) == 2
    assert waits[1] > waits[0] + 0.005
