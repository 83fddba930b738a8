"""Sampler: per-row parameters in one batch, seeds, filters, penalties and logprobs."""

from __future__ import annotations

import math

import pytest
import torch
from inferno_inference import sampler as sampler_module
from inferno_inference.sampler import Sampler
from inferno_inference.sequence import Sequence
from inferno_inference.types import SamplingParams

_ids = iter(range(10**9))


def _seq(seed: int | None = None, tokens: tuple[int, ...] = (0,), **kw: object) -> Sequence:
    sp = SamplingParams.model_validate({"seed": seed, **kw})
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return Sequence(next(_ids), "r", 0, list(tokens), 1, sp, 0.0, generator=gen)


def _logits(rows: int, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_and_degenerate_filters_pick_the_argmax() -> None:
    logits = _logits(4)
    seqs = [
        _seq(temperature=0),
        _seq(top_k=1),
        _seq(top_p=1e-6),
        _seq(min_p=1.0),
    ]
    out = Sampler(seed=0)(logits, seqs)
    assert out.token_ids == logits.argmax(-1).tolist()


def test_seeded_row_ignores_the_rest_of_the_batch() -> None:
    logits = _logits(1)
    alone = [
        Sampler(seed=1)(logits, [_seq(seed=42, temperature=1.0)]).token_ids[0] for _ in range(3)
    ]
    mixed = []
    for other in range(3):
        batch = torch.cat([_logits(2, seed=10 + other), logits])
        seqs = [_seq(temperature=0.7), _seq(temperature=0), _seq(seed=42, temperature=1.0)]
        mixed.append(Sampler(seed=other)(batch, seqs).token_ids[2])
    assert alone == mixed


def test_seeded_sequences_reproduce_over_many_steps() -> None:
    logits = _logits(1, vocab=1000)
    a, b = _seq(seed=7, temperature=1.0), _seq(seed=7, temperature=1.0)
    ta = [Sampler()(logits, [a]).token_ids[0] for _ in range(20)]
    tb = [Sampler()(logits, [b]).token_ids[0] for _ in range(20)]
    assert ta == tb
    assert len(set(ta)) > 1  # the generator advances: not the same token every time


def test_temperature_sampling_follows_the_distribution() -> None:
    logits = torch.tensor([[math.log(0.7), math.log(0.3)]]).repeat(4000, 1)
    seqs = [_seq(temperature=1.0) for _ in range(4000)]
    tokens = torch.tensor(Sampler(seed=0)(logits, seqs).token_ids)
    assert abs((tokens == 0).float().mean().item() - 0.7) < 0.03


def test_top_k_and_top_p_restrict_the_support() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(3000, 1)
    top_k = torch.tensor(Sampler(seed=0)(logits, [_seq(top_k=2) for _ in range(3000)]).token_ids)
    assert set(top_k.tolist()) == {0, 1}
    top_p = torch.tensor(Sampler(seed=0)(logits, [_seq(top_p=0.7) for _ in range(3000)]).token_ids)
    assert set(top_p.tolist()) == {0, 1}  # 0.5 < 0.7 needs the second token, not the third
    min_p = torch.tensor(Sampler(seed=0)(logits, [_seq(min_p=0.5) for _ in range(3000)]).token_ids)
    assert set(min_p.tolist()) == {0, 1}  # 0.15 < 0.5 * 0.5


def _reference_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then top-p by a full sort of one row: what the tiered filter must equal."""
    values, order = logits.sort(descending=True)
    if top_k > 0:
        values[top_k:] = float("-inf")
    probs = torch.softmax(values, dim=-1)
    if top_p < 1:
        values[probs.cumsum(-1) - probs >= top_p] = float("-inf")
    return torch.empty_like(logits).scatter_(0, order, values)


@pytest.mark.parametrize("scale", [8.0, 1.0, 0.05])  # nuclei of a few, hundreds, most tokens
def test_top_k_top_p_tiers_equal_a_full_sort(scale: float) -> None:
    vocab = 20_000
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(3)) * scale
    settings = [(0, 0.9), (0, 0.99), (40, 0.95), (300, 1.0), (5000, 0.999), (0, 0.5)]
    top_k = [k for k, _ in settings]
    top_p = torch.tensor([p for _, p in settings])
    got = sampler_module._top_k_top_p(logits, top_k, top_p)
    for row, (k, p) in enumerate(settings):
        want = _reference_filter(logits[row].clone(), k, p)
        assert torch.equal(got[row].isinf(), want.isinf()), (scale, k, p)
        kept = ~want.isinf()
        assert torch.equal(got[row][kept], want[kept])


def test_a_draw_at_the_very_top_picks_the_last_token_with_mass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logits = torch.tensor([[0.0, 0.0, float("-inf"), float("-inf")]])
    monkeypatch.setattr(
        sampler_module.torch, "rand", lambda *a, **k: torch.tensor(1.0, dtype=torch.float64)
    )
    assert Sampler(seed=0)(logits, [_seq(temperature=1.0)]).token_ids == [1]


def test_repetition_penalty_demotes_seen_tokens() -> None:
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    plain = Sampler()(logits, [_seq(temperature=0, tokens=(0,))]).token_ids
    penalized = Sampler()(logits, [_seq(temperature=0, tokens=(0,), repetition_penalty=1.5)])
    assert plain == [0]
    assert penalized.token_ids == [1]


def test_presence_and_frequency_penalties_use_output_tokens() -> None:
    logits = torch.tensor([[2.0, 1.5, 0.0]])
    seq = _seq(temperature=0, tokens=(0, 0, 0), frequency_penalty=0.3)
    seq.prompt_len = 1  # two generated zeros: 2.0 - 2 * 0.3 = 1.4 < 1.5
    assert Sampler()(logits, [seq]).token_ids == [1]
    seq = _seq(temperature=0, tokens=(0, 0), presence_penalty=0.6)
    assert Sampler()(logits, [seq]).token_ids == [1]
    seq = _seq(temperature=0, tokens=(0, 0), presence_penalty=0.6)
    seq.prompt_len = 2  # no output yet: prompt tokens are not penalized
    assert Sampler()(logits, [seq]).token_ids == [0]


def test_penalty_tallies_follow_the_tokens_as_they_are_appended() -> None:
    """The sampler keeps each sequence's seen tokens and output counts between steps; after
    every appended token they must give what a fresh count of the whole context gives."""
    vocab = 64
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(1)) * 2
    penalties = {"repetition_penalty": 1.4, "frequency_penalty": 0.3, "presence_penalty": 0.2}
    kept = _seq(temperature=0, tokens=(3, 5, 5), **penalties)
    kept.prompt_len = 2
    rng = torch.Generator().manual_seed(2)
    for step in range(12):
        adjusted = Sampler._apply_penalties(logits, [kept])
        fresh = _seq(temperature=0, tokens=tuple(kept.token_ids), **penalties)
        fresh.prompt_len = kept.prompt_len
        assert torch.equal(adjusted, Sampler._apply_penalties(logits, [fresh])), step
        assert kept.tally is not None
        assert kept.tally.upto == len(kept.token_ids)
        # Some steps add several tokens at once (kept drafts), some repeat earlier ones.
        kept.token_ids.extend(torch.randint(0, 12, (1 + step % 3,), generator=rng).tolist())
    seen = kept.tally.seen
    assert seen is not None
    assert seen.nonzero().flatten().tolist() == sorted(set(kept.token_ids[: kept.tally.upto]))


def test_logprobs_report_the_model_distribution() -> None:
    logits = _logits(2)
    out = Sampler()(logits, [_seq(temperature=0, logprobs=3), _seq(temperature=0)])
    record = out.logprobs[0]
    assert record is not None
    assert out.logprobs[1] is None
    expected = torch.log_softmax(logits[0], -1)
    assert record.token_id == out.token_ids[0]
    assert math.isclose(record.logprob, expected.max().item(), rel_tol=1e-5)
    assert [t for t, _ in record.top] == expected.topk(3).indices.tolist()


def test_logit_bias_bans_and_forces_tokens_after_penalties() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    banned = _seq(temperature=0, logit_bias=((0, -100.0),))
    assert Sampler()(logits, [banned]).token_ids == [1]
    forced = [_seq(temperature=1.0, logit_bias=((3, 100.0),)) for _ in range(200)]
    assert set(Sampler(seed=0)(logits.repeat(200, 1), forced).token_ids) == {3}
    # Added after the penalties: the penalty shrinks 3.0 to 1.5, and +0.6 lifts it above 2.0.
    both = _seq(temperature=0, tokens=(0,), repetition_penalty=2.0, logit_bias=((0, 0.6),))
    assert Sampler()(logits, [both]).token_ids == [0]
    without = _seq(temperature=0, tokens=(0,), repetition_penalty=2.0)
    assert Sampler()(logits, [without]).token_ids == [1]


def test_logit_bias_leaves_logprobs_and_other_rows_alone() -> None:
    logits = _logits(2)
    top = int(logits[0].argmax())
    out = Sampler()(
        logits,
        [_seq(temperature=0, logprobs=1, logit_bias=((top, -100.0),)), _seq(temperature=0)],
    )
    assert out.token_ids[0] != top
    assert out.token_ids[1] == int(logits[1].argmax())
    record = out.logprobs[0]
    assert record is not None
    expected = torch.log_softmax(logits[0], -1)
    assert math.isclose(record.logprob, expected[out.token_ids[0]].item(), rel_tol=1e-5)
    assert record.top[0][0] == top  # the model's favourite, even though it was banned


@pytest.mark.parametrize(
    ("bias", "message"),
    [
        (((1, 101.0),), r"\[-100, 100\]"),
        (((1, float("nan")),), r"\[-100, 100\]"),
        (((1, 1.0), (1, 2.0)), "more than once"),
    ],
)
def test_logit_bias_values_are_validated(bias: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams.model_validate({"logit_bias": bias})
