"""The reasoning gate: free tokens until the output spells a closing text (a reasoning block),
that text forced after a budget, then JSON or a choice for the rest."""

from __future__ import annotations

import json

import pytest
import torch
from inferno_inference import InvalidRequestError, SamplingParams
from inferno_inference.choice import ChoiceConstraint, ChoiceGrammar
from inferno_inference.json_mode import JsonConstraint, JsonGrammar, JsonVocabulary
from inferno_inference.reasoning import ReasoningGate, opener_mask
from inferno_inference.tiny import choice_bytes, tiny_llm_engine
from inferno_inference.types import GenerationRequest
from inferno_models.testing import tiny_config

VOCAB = [
    *(bytes([b]) for b in range(32, 127)),  # id = byte - 32
    b"<think>",
    b"\n<think>\n",
    b"</think>",
    b"</",
    b"think",
    b">\n\n",
    b'>\n{"',
    b"</think>\n\nParis",
    b"\n\n",
    b'{"',
    b'":',
    b'"}',
    b"Paris",
    b"Rome",
    b"",  # the end of sequence
]
EOS = len(VOCAB) - 1
ID = {t: i for i, t in enumerate(VOCAB)}
CLOSE = b"</think>"


def _json(vocab: list[bytes] = VOCAB) -> JsonConstraint:
    return JsonConstraint(JsonGrammar(JsonVocabulary(vocab), [EOS]))


def _ids(*pieces: bytes) -> list[int]:
    return [ID[p] for p in pieces]


def test_tokens_are_free_until_the_closing_text_then_json() -> None:
    c = ReasoningGate(_json(), VOCAB, CLOSE)
    fresh = _json().allowed()
    assert fresh is not None
    for token in _ids(b"h", b"m", b"</", b"think"):
        assert c.allowed() is None  # the wait: anything may come
        c.advance(token)
        assert c.waiting
        assert not c.done
    c.advance(ID[b">\n\n"])  # the tag closes across three tokens; whitespace after it is free
    assert not c.waiting
    assert torch.equal(c.allowed(), fresh)
    for token in _ids(b'{"', b"a", b'":', b"1", b"}"):
        mask = c.allowed()
        assert mask is not None
        assert mask[token]
        c.advance(token)
    assert c.done
    assert c.allowed().nonzero().flatten().tolist() == [EOS]


def test_the_answer_may_begin_inside_the_closing_token() -> None:
    c = ReasoningGate(_json(), VOCAB, b">")
    c.advance(ID[b'>\n{"'])  # closes, then opens the object and a key
    opened = _json()
    opened.advance(ID[b'{"'])
    assert torch.equal(c.allowed(), opened.allowed())  # inside the first key
    for token in _ids(b"k", b'":', b"2", b"}"):
        c.advance(token)
    assert c.done


def test_with_an_opener_the_first_token_may_open_the_block_or_begin_the_answer() -> None:
    opener = opener_mask(VOCAB, b"<think>")
    assert set(opener.nonzero().flatten().tolist()) == {ID[b"<think>"], ID[b"\n<think>\n"]}
    fresh = _json().allowed()
    assert fresh is not None

    c = ReasoningGate(_json(), VOCAB, CLOSE, opener)
    first = c.allowed()
    assert first is not None
    assert torch.equal(first, fresh | opener)
    c.advance(ID[b"\n<think>\n"])
    assert c.allowed() is None
    c.advance(ID[b"</think>"])
    assert torch.equal(c.allowed(), fresh)

    answer = ReasoningGate(_json(), VOCAB, CLOSE, opener)
    answer.advance(ID[b"{"])  # no block: the constraint holds from the first token
    assert not answer.waiting
    mask = answer.allowed()
    assert mask is not None
    assert not mask[ID[b"<think>"]]
    assert mask[ID[b'"}']] or mask[ID[b"}"]]


def test_a_choice_follows_the_block_and_text_inside_the_closing_token_ends_it() -> None:
    grammar = ChoiceGrammar([[ID[b"Paris"]], [ID[b"Rome"]]], [EOS], len(VOCAB))
    c = ReasoningGate(ChoiceConstraint(grammar), VOCAB, CLOSE)
    c.advance(ID[b"h"])
    c.advance(ID[b"</think>"])
    mask = c.allowed()
    assert mask is not None
    assert mask.nonzero().flatten().tolist() == sorted(_ids(b"Paris", b"Rome"))
    c.advance(ID[b"Rome"])
    assert c.done

    # A choice is spelled by whole tokens: one cannot start inside the closing token.
    cut = ReasoningGate(ChoiceConstraint(grammar), VOCAB, CLOSE)
    cut.advance(ID[b"</think>\n\nParis"])
    assert cut.allowed().nonzero().flatten().tolist() == [EOS]


def _bias(*pieces: bytes, value: float = 100.0) -> tuple[tuple[int, float], ...]:
    return tuple((ID[p], value) for p in pieces)


def _run(sampling: SamplingParams, prompt: tuple[int, ...]) -> list[tuple[list[int], bytes, str]]:
    """Each choice of ``sampling`` on the tiny engine over `VOCAB`, whose blocks all return."""
    vocab = [*VOCAB, *([b"x"] * (tiny_config().vocab_size - len(VOCAB)))]
    engine = tiny_llm_engine(seed=3, token_bytes=vocab)
    engine.eos_token_ids = frozenset({EOS})
    choices = choice_bytes(engine, GenerationRequest("d", prompt, sampling), vocab)
    blocks = engine.scheduler.block_manager
    assert blocks.num_free_blocks == blocks.num_blocks
    return choices


def test_the_engine_thinks_freely_then_answers_in_json() -> None:
    # "<" and ">" all but forced: the output thinks in them until a ">" closes the wait, and
    # then the JSON mask, which allows neither, takes over.
    sampling = SamplingParams(
        max_tokens=120,
        temperature=1.0,
        seed=4,
        n=3,
        response_format="json_object",
        reasoning_end=">",
        logit_bias=_bias(b"<", b">"),
    )
    for _, data, finish in _run(sampling, (5, 6, 7)):
        head, close, answer = data.partition(b">")
        assert close, data
        assert set(head) <= {ord("<")}
        if finish == "stop":
            assert isinstance(json.loads(answer), dict)
        else:
            assert finish == "length"


def test_the_engine_holds_to_json_from_the_start_when_the_block_is_not_opened() -> None:
    sampling = SamplingParams(
        max_tokens=120,
        temperature=1.0,
        seed=5,
        response_format="json_object",
        reasoning_end="</think>",
        reasoning_start="<think>",
        logit_bias=_bias(b"<think>", b"\n<think>\n", value=-100.0),
    )
    ((_, data, finish),) = _run(sampling, (5, 6))
    assert data.lstrip().startswith(b"{"), data
    if finish == "stop":
        assert isinstance(json.loads(data), dict)


def test_a_budget_forces_the_closing_tokens_then_frees_the_answer() -> None:
    forced = _ids(b"</", b"think", b">")
    gate = ReasoningGate(None, VOCAB, CLOSE, budget=2, forced=forced)
    for token in _ids(b"a", b"b"):
        assert gate.allowed() is None
        gate.advance(token)
    for token in forced:  # the budget is spent: the close, one token per step
        mask = gate.allowed()
        assert mask is not None
        assert mask.nonzero().flatten().tolist() == [token]
        gate.advance(token)
    assert not gate.waiting
    assert gate.allowed() is None  # a free answer
    assert not gate.done


def test_the_opener_is_not_counted_and_an_early_close_ends_the_budget() -> None:
    opener = opener_mask(VOCAB, b"<think>")
    forced = [ID[b"</think>"]]
    gate = ReasoningGate(_json(), VOCAB, CLOSE, opener, budget=1, forced=forced)
    gate.advance(ID[b"<think>"])
    assert gate.allowed() is None  # the opener took none of the one token
    gate.advance(ID[b"x"])
    mask = gate.allowed()
    assert mask is not None
    assert mask.nonzero().flatten().tolist() == forced
    early = ReasoningGate(_json(), VOCAB, CLOSE, budget=3, forced=forced)
    early.advance(ID[b"</think>"])  # the model closed it itself
    assert torch.equal(early.allowed(), _json().allowed())


def test_the_engine_answers_after_the_budget_even_when_the_model_would_not() -> None:
    # Every token that could close the block itself is banned: only the budget ends it.
    sampling = SamplingParams(
        max_tokens=120,
        temperature=1.0,
        seed=6,
        n=2,
        response_format="json_object",
        reasoning_end="</think>",
        reasoning_budget=5,
        logit_bias=_bias(b"<", b"</", b"</think>", b"</think>\n\nParis", value=-100.0),
    )
    for ids, data, finish in _run(sampling, (5, 6, 7)):
        _head, close, answer = data.partition(CLOSE)
        assert close, data
        assert ids[5] == ID[b"</think>"]  # the fewest tokens that spell the close
        assert ID[b"</think>"] not in ids[:5]
        if finish == "stop":
            assert isinstance(json.loads(answer), dict)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_budget_alone_cuts_the_thinking_of_a_free_answer(temperature: float) -> None:
    # Nothing else adjusts the logits (no bias, no JSON): the budget's mask still applies.
    sampling = SamplingParams(
        max_tokens=12,
        temperature=temperature,
        seed=2,
        ignore_eos=True,
        reasoning_end="</think>",
        reasoning_budget=4,
    )
    ((ids, data, finish),) = _run(sampling, (9, 8, 7))
    assert finish == "length"
    assert ids[4] == ID[b"</think>"]
    assert data.find(CLOSE) <= len(data) - len(CLOSE)


def test_reasoning_fields_are_validated() -> None:
    with pytest.raises(ValueError, match="need reasoning_end"):
        SamplingParams(response_format="json_object", reasoning_start="<think>")
    with pytest.raises(ValueError, match="need reasoning_end"):
        SamplingParams(reasoning_budget=10)
    with pytest.raises(ValueError, match="must not be empty"):
        SamplingParams(response_format="json_object", reasoning_end="")
    engine = tiny_llm_engine()  # no vocabulary: nothing to watch the output with
    sampling = SamplingParams(choices=("a", "b"), reasoning_end="</think>")
    with pytest.raises(InvalidRequestError, match="tokenizer") as info:
        engine.validate(GenerationRequest("d", (5,), sampling))
    assert info.value.param == "reasoning_end"
    vocab = [*VOCAB, *([b"x"] * (tiny_config().vocab_size - len(VOCAB)))]
    spelled = tiny_llm_engine(token_bytes=vocab)
    unspellable = SamplingParams(reasoning_end="\t", reasoning_budget=3)  # no token has a tab
    with pytest.raises(InvalidRequestError, match="no tokens spell") as info:
        spelled.validate(GenerationRequest("d", (5,), unspellable))
    assert info.value.param == "reasoning_budget"
