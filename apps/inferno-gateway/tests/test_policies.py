"""Routing policies over hand-built workers: affinity, the load bound, least-load, round-robin."""

from __future__ import annotations

import pytest
from inferno_discovery import LoadSignals
from inferno_gateway import (
    LeastLoadPolicy,
    PrefixAffinityPolicy,
    RoundRobinPolicy,
    RouteRequest,
    Worker,
    affinity_key,
    build_policy,
)


def _worker(worker_id: str, in_flight: int = 0, **load: float) -> Worker:
    signals = LoadSignals(**load)  # type: ignore[arg-type]
    return Worker(
        id=worker_id,
        address=f"http://{worker_id}",
        models=frozenset({"m"}),
        load=signals,
        ready=True,
        in_flight=in_flight,
    )


def test_least_load_prefers_fewest_requests_then_kv_then_fewest_routed() -> None:
    a, b, c = _worker("a", 3), _worker("b", 1), _worker("c", 1, kv_usage=0.5)
    assert LeastLoadPolicy().choose([a, b, c], RouteRequest("m")).worker is b
    b.load = LoadSignals(kv_usage=0.9)
    assert LeastLoadPolicy().choose([a, b, c], RouteRequest("m")).worker is c
    idle = [_worker("x"), _worker("y")]
    idle[0].routed = 5
    assert LeastLoadPolicy().choose(idle, RouteRequest("m")).worker.id == "y"


def test_load_score_sees_pushed_signals_and_fresh_in_flight() -> None:
    busy_elsewhere = _worker("a", 0, running_requests=4, queue_depth=2)
    ours = _worker("b", 3)
    assert busy_elsewhere.load_score == 6
    assert ours.load_score == 3
    assert LeastLoadPolicy().choose([busy_elsewhere, ours], RouteRequest("m")).worker is ours


def test_round_robin_cycles_in_id_order() -> None:
    policy = RoundRobinPolicy()
    workers = [_worker("b"), _worker("a"), _worker("c")]
    picks = [policy.choose(workers, RouteRequest("m")).worker.id for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_affinity_sends_a_prefix_to_one_worker_and_spreads_prefixes() -> None:
    policy = PrefixAffinityPolicy()
    workers = [_worker(f"w{i}") for i in range(4)]
    owners = {policy.choose(workers, RouteRequest("m", "prompt 7")).worker.id for _ in range(5)}
    assert len(owners) == 1
    spread = {policy.choose(workers, RouteRequest("m", f"prompt {k}")).worker.id for k in range(64)}
    assert spread == {"w0", "w1", "w2", "w3"}


def test_affinity_survives_another_worker_leaving() -> None:
    policy = PrefixAffinityPolicy()
    workers = [_worker(f"w{i}") for i in range(4)]
    before = {k: policy.choose(workers, RouteRequest("m", f"p{k}")).worker.id for k in range(100)}
    remaining = [w for w in workers if w.id != "w3"]
    for k, owner in before.items():
        after = policy.choose(remaining, RouteRequest("m", f"p{k}")).worker.id
        if owner != "w3":
            assert after == owner  # rendezvous hashing moves only the leaver's prefixes


def test_affinity_overflows_to_least_load_at_the_bound() -> None:
    policy = PrefixAffinityPolicy(epsilon=0.25, slack=2.0)
    workers = [_worker(f"w{i}") for i in range(3)]
    owner = policy.choose(workers, RouteRequest("m", "hot")).worker
    owner.in_flight = 2  # average 2/3: bound (1.25 * 0.667) + 2 = 2.83 > 2
    assert policy.choose(workers, RouteRequest("m", "hot")).reason == "affinity"
    owner.in_flight = 3  # average 1: bound 3.25 > 3, still within
    assert policy.choose(workers, RouteRequest("m", "hot")).worker is owner
    owner.in_flight = 4  # average 4/3: bound 3.67 <= 4: overflow
    decision = policy.choose(workers, RouteRequest("m", "hot"))
    assert decision.reason == "overflow"
    assert decision.worker is not owner
    assert decision.worker.load_score == 0


def test_affinity_without_prefix_uses_least_load() -> None:
    workers = [_worker("a", 2), _worker("b", 0)]
    decision = PrefixAffinityPolicy().choose(workers, RouteRequest("m", None))
    assert (decision.worker.id, decision.reason) == ("b", "no_prefix")


def test_a_single_candidate_never_overflows() -> None:
    only = _worker("a", 50)
    assert PrefixAffinityPolicy().choose([only], RouteRequest("m", "x")).reason == "affinity"


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"prompt": "Hello there, general"}, "Hello ther"),
        ({"prompt": ["first prompt", "second"]}, "first prom"),
        ({"prompt": [1, 2, 3]}, "1 2 3"),
        ({"prompt": ""}, None),
        ({"messages": [{"role": "system", "content": "Be brief"}]}, "system:Be "),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
            "user:hi\n",
        ),
        ({"model": "m"}, None),
        # Responses API: instructions first, then the input; embeddings: the first input.
        ({"instructions": "Be brief", "input": "hi"}, "system:Be "),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}]}]},
            "user:x\n",
        ),
        ({"input": "Hello there, general"}, "Hello ther"),
        ({"input": ["first input", "second"]}, "first inpu"),
        ({"input": [5, 6]}, "5 6"),
    ],
)
def test_affinity_key(body: dict[str, object], key: str | None) -> None:
    assert affinity_key(body, 10) == key


def test_chat_prefix_covers_several_messages() -> None:
    body = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]}
    assert affinity_key(body, 100) == "system:S\nuser:Q\n"


def test_build_policy_by_name() -> None:
    assert build_policy("round-robin").name == "round-robin"
    assert build_policy("least-load").name == "least-load"
    affinity = build_policy("prefix-affinity", epsilon=1.0, slack=0.0)
    assert isinstance(affinity, PrefixAffinityPolicy)
    assert (affinity.epsilon, affinity.slack) == (1.0, 0.0)
    with pytest.raises(ValueError, match="unknown routing policy"):
        build_policy("random")  # type: ignore[arg-type]
