"""Choice mode: masks, spellability, and the engine's outputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from inferno_inference import InvalidRequestError, SamplingParams
from inferno_inference.choice import (
    ChoiceConstraint,
    ChoiceGrammar,
    NoSpellableChoiceError,
    spell,
)
from inferno_inference.tiny import choice_bytes, tiny_llm_engine
from inferno_inference.types import GenerationRequest
from inferno_models.testing import tiny_config

# Single letters, a few merges, a multi-byte character and a special token (empty bytes).
VOCAB = [b"", *(bytes([c]) for c in b"abcdeopsty "), b"ye", b"yes", b"no", b"po", b"pos",
         "é".encode(), b"<end>"]  # fmt: skip
EOS = len(VOCAB) - 1


def _allowed(mask: torch.Tensor) -> set[int]:
    return set(mask.nonzero().flatten().tolist())


def _id(text: bytes) -> int:
    return VOCAB.index(text)


def _spelled(*choices: str) -> list[list[int]]:
    return [spell(c, VOCAB) or [] for c in choices]


def test_spell_uses_the_fewest_tokens() -> None:
    assert spell("yes", VOCAB) == [_id(b"yes")]
    assert spell("posy", VOCAB) == [_id(b"pos"), _id(b"y")]
    assert spell("café", [b"", b"caf", b"\xc3", b"\xa9", "é".encode()]) == [1, 4]
    assert spell("kiwi", VOCAB) is None  # no "k" token
    assert spell("", VOCAB) is None


def test_masks_follow_the_choices_token_by_token() -> None:
    grammar = ChoiceGrammar([[1, 2], [3], [1, 2, 4]], [EOS], len(VOCAB))
    assert _allowed(grammar.allowed(())) == {1, 3}
    assert _allowed(grammar.allowed((1,))) == {2}
    # [1, 2] is whole, and [1, 2, 4] goes on from it: the end and 4 both fit.
    assert _allowed(grammar.allowed((1, 2))) == {EOS, 4}
    assert not grammar.is_done((1, 2))
    assert grammar.is_done((1, 2, 4))
    assert grammar.is_done((3,))
    assert _allowed(grammar.allowed((3,))) == {EOS}
    assert _allowed(grammar.allowed(None)) == {EOS}  # after the end: the end again
    assert grammar.allowed(()) is grammar.allowed(())  # cached
    assert grammar.advance((1,), EOS) is None


def test_choices_without_tokens_are_left_out() -> None:
    grammar = ChoiceGrammar([[], [5, 99_999], [6]], [EOS], len(VOCAB))
    assert _allowed(grammar.allowed(())) == {6}
    with pytest.raises(NoSpellableChoiceError):
        ChoiceGrammar([[], [99_999]], [EOS], len(VOCAB))


def test_without_end_tokens_a_whole_choice_is_done() -> None:
    grammar = ChoiceGrammar([[1]], [], len(VOCAB))
    constraint = ChoiceConstraint(grammar)
    constraint.advance(1)
    assert constraint.done
    assert bool(constraint.allowed().all())  # never an empty mask


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="abcdeopsty é", min_size=1, max_size=6), min_size=1, max_size=5))
def test_following_any_allowed_tokens_always_spells_a_choice(choices: list[str]) -> None:
    grammar = ChoiceGrammar(_spelled(*choices), [EOS], len(VOCAB))
    constraint = ChoiceConstraint(grammar)
    generator = torch.Generator().manual_seed(len(choices))

    def text(prefix: tuple[int, ...]) -> str:
        return b"".join(VOCAB[t] for t in prefix).decode()

    for _ in range(40):
        allowed = sorted(_allowed(constraint.allowed()))
        assert allowed
        token = allowed[int(torch.randint(len(allowed), (1,), generator=generator))]
        before = constraint.prefix
        constraint.advance(token)
        if token == EOS:
            assert before is not None
            assert text(before) in choices
            return
        if constraint.done:
            assert constraint.prefix is not None
            assert text(constraint.prefix) in choices
            return
    pytest.fail("no choice was finished in 40 tokens")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_outputs_are_one_of_the_choices(temperature: float) -> None:
    vocab = [*VOCAB, *([b"x"] * (tiny_config().vocab_size - len(VOCAB)))]
    engine = tiny_llm_engine(seed=3, token_bytes=vocab)
    engine.eos_token_ids = frozenset({EOS})
    options = ("yes", "no", "possibly")
    sampling = SamplingParams(max_tokens=30, temperature=temperature, seed=2, n=4, choices=options)
    outputs = choice_bytes(engine, GenerationRequest("c", (5, 6, 7), sampling), vocab)
    blocks = engine.scheduler.block_manager
    assert blocks.num_free_blocks == blocks.num_blocks
    for ids, data, finish in outputs:
        assert finish == "stop"
        assert data.removesuffix(b"<end>").decode() in options, (ids, data)


def test_choices_are_validated() -> None:
    engine = tiny_llm_engine()
    request = GenerationRequest("c", (5,), SamplingParams(choices=("a",)))
    with pytest.raises(InvalidRequestError, match="tokenizer") as info:
        engine.add_request(request)
    assert info.value.param == "choices"
    spelled = tiny_llm_engine(token_bytes=[*VOCAB, *([b"x"] * 300)])
    with pytest.raises(InvalidRequestError, match="no choice") as info:
        spelled.add_request(GenerationRequest("k", (5,), SamplingParams(choices=("kiwi",))))
    assert info.value.param == "choices"
    for bad in (
        {"choices": ("",)},
        {"choices": ("a",), "ignore_eos": True},
        {"choices": ("a",), "response_format": "json_object"},
        {"choices": ("a",) * 257},
    ):
        with pytest.raises(ValueError, match=r"choices|ignore_eos|at most"):
            SamplingParams.model_validate(bad)
