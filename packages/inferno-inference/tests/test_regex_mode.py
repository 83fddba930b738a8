"""Regex mode: whole-output patterns, their token masks, and constrained generation."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from inferno_inference import InvalidRequestError, SamplingParams
from inferno_inference.json_mode import JsonVocabulary
from inferno_inference.json_regex import RegexError, whole_match
from inferno_inference.regex_mode import RegexConstraint, RegexGrammar
from inferno_inference.tiny import choice_bytes, tiny_llm_engine
from inferno_inference.types import GenerationRequest
from inferno_models.testing import tiny_config

# Printable ASCII (id = byte - 32), merges, the two bytes of "é" apart and together, a quote
# and a newline (which JSON's wholesale masks leave out), and the end of sequence.
VOCAB = [
    *(bytes([b]) for b in range(32, 127)),
    b"yes",
    b"no",
    b", because",
    b"12",
    b"-1",
    b"ab",
    b"\xc3",
    b"\xa9",
    "é".encode(),
    "café".encode(),
    b"\xe0",  # leads of 3- and 4-byte characters, and one no character starts with
    b"\xf0",
    b"\xc0",
    b'"',
    b"\n",
    b"",  # the end of sequence
]
EOS = len(VOCAB) - 1
ID = {t: i for i, t in enumerate(VOCAB)}
VOCABULARY = JsonVocabulary(VOCAB)


def _grammar(pattern: str) -> RegexGrammar:
    return RegexGrammar(VOCABULARY, [EOS], whole_match(pattern))


def _allowed(mask: torch.Tensor) -> set[bytes]:
    return {VOCAB[i] for i in mask.nonzero().flatten().tolist()}


def test_masks_follow_the_pattern_token_by_token() -> None:
    c = RegexConstraint(_grammar(r"(yes|no)-\d{2}"))
    assert _allowed(c.allowed()) == {b"y", b"n", b"yes", b"no"}
    c.advance(ID[b"yes"])
    assert _allowed(c.allowed()) == {b"-", b"-1"}
    c.advance(ID[b"-1"])
    assert _allowed(c.allowed()) == {bytes([d]) for d in b"0123456789"}
    assert not c.done
    c.advance(ID[b"7"])
    assert c.done  # a whole match that nothing extends: the engine ends the output here
    assert _allowed(c.allowed()) == {b""}


def test_the_end_is_allowed_once_the_output_matches() -> None:
    c = RegexConstraint(_grammar(r"a[b-d]*"))
    assert EOS not in c.allowed().nonzero().flatten().tolist()
    c.advance(ID[b"ab"])
    mask = c.allowed()
    assert bool(mask[EOS])
    assert not c.done  # more may come
    assert _allowed(mask) == {b"b", b"c", b"d", b""}


def test_anchors_add_nothing_and_the_whole_output_must_match() -> None:
    for pattern in ("ab", "^ab$", "^ab", "ab$"):
        g = _grammar(pattern)
        assert _allowed(g.allowed(g.initial)) == {b"a", b"ab"}
        after = g.advance(g.initial, ID[b"ab"])
        assert after is not None
        assert g.is_done(after)
        assert g.advance(after, ID[b"a"]) is None


def test_a_character_may_be_split_across_tokens() -> None:
    g = _grammar("caf[ée]!")
    state = g.advance_bytes(g.initial, b"caf")
    assert state is not None
    # Both halves of "é" as tokens: the lead byte is allowed (an "é" can follow), and then
    # only the continuation byte that completes it.
    assert _allowed(g.allowed(state)) == {b"e", b"\xc3", "é".encode()}
    half = g.advance(state, ID[b"\xc3"])
    assert half is not None
    assert half[1] == b"\xc3"
    assert _allowed(g.allowed(half)) == {b"\xa9"}
    whole = g.advance(half, ID[b"\xa9"])
    assert whole is not None
    assert not whole[1]
    assert _allowed(g.allowed(whole)) == {b"!"}
    # Only ASCII after "caf": a lead byte would start a character the pattern refuses.
    ascii_only = _grammar("caf[a-z]")
    state = ascii_only.advance_bytes(ascii_only.initial, b"caf")
    assert state is not None
    assert b"\xc3" not in _allowed(ascii_only.allowed(state))


def _first(pattern: str) -> set[bytes]:
    g = _grammar(pattern)
    return _allowed(g.allowed(g.initial))


def test_a_lead_byte_is_allowed_only_when_a_character_it_starts_can_follow() -> None:
    # "\xe0" starts U+0800..U+0FFF (shorter forms are overlong), "\xf0" U+10000 and up,
    # "\xc0" nothing at all.
    leads = {b"\xe0", b"\xf0", b"\xc0"}
    assert not leads & _first("[a-z]+")
    assert leads & _first("[\u0800-\u0fff]") == {b"\xe0"}
    assert leads & _first(".") == {b"\xe0", b"\xf0"}


def test_a_loop_takes_every_token_of_its_characters() -> None:
    # [^x]* keeps its state for every character but "x": quotes and newlines pass too.
    g = _grammar(r"[^x]*x")
    allowed = _allowed(g.allowed(g.initial))
    assert {b'"', b"\n", b"yes", "café".encode(), b"x", b"\xc3"} <= allowed
    assert b"" not in allowed  # no match yet
    state = g.advance(g.initial, ID[b"x"])
    assert state is not None
    assert g.is_done(state)


@settings(max_examples=60, deadline=None)
@given(
    pattern=st.sampled_from(
        [
            r"(yes|no), because [a-z ]{3,12}\.",
            r"-?\d{1,4}(\.\d\d)?",
            r"[A-Z][a-z]+( [A-Z][a-z]+)?",
            r'"[^"\n]{0,8}"',
            "caf(é|e)+",
            r"(ab|a|b)*c",
        ]
    ),
    picks=st.lists(st.integers(min_value=0, max_value=10_000), min_size=40, max_size=40),
)
def test_following_any_allowed_tokens_always_spells_a_match(pattern: str, picks: list[int]) -> None:
    c = RegexConstraint(_grammar(pattern))
    text = b""
    for pick in picks:
        options = c.allowed().nonzero().flatten().tolist()
        assert options
        token = options[pick % len(options)]
        if token == EOS:
            break
        c.advance(token)
        assert c.state is not None
        text += VOCAB[token]
        if c.done:
            break
    else:
        # Still open after 40 tokens: what was written is a prefix of some match.
        assert c.state is not None
        return
    assert re.fullmatch(pattern, text.decode()), (pattern, text)


@settings(max_examples=40, deadline=None)
@given(
    pattern=st.sampled_from(
        [r"[^\n.]{2,30}\.", r"(ab|a)*(c|é)+", r"\d{1,3}(,\d{3})*", r'"[a-z ]{0,5}"', "caf.?"]
    ),
    picks=st.lists(st.integers(min_value=0, max_value=10_000), min_size=12, max_size=12),
)
def test_masks_equal_those_of_a_byte_by_byte_walk(pattern: str, picks: list[int]) -> None:
    # The vectorized run of whole-character tokens, plus the pieces of characters, against
    # the plain walk of the sorted vocabulary that steps every token byte by byte.
    g = _grammar(pattern)
    state = g.initial
    for pick in picks:
        walked = torch.zeros(len(VOCAB), dtype=torch.bool)
        walked[VOCABULARY.walk(g.step, state)] = True
        walked[EOS] = g.accepts(state)
        mask = g.allowed(state)
        assert torch.equal(mask, walked) or not walked.any(), (pattern, state)
        options = [t for t in mask.nonzero().flatten().tolist() if t != EOS]
        if not options:
            break
        after = g.advance(state, options[pick % len(options)])
        assert after is not None
        state = after


def test_patterns_it_cannot_enforce_are_refused() -> None:
    for bad in (r"(?=a)b", r"(a)\1", r"\bword", "(ab", "[^\\s\\S]", "a{5,2}"):
        with pytest.raises(RegexError):
            whole_match(bad)
    assert whole_match("(?P<year>\\d{4})").matches("2026")  # Python's named groups


def _engine_vocab() -> list[bytes]:
    return [*VOCAB, *([b"~"] * (tiny_config().vocab_size - len(VOCAB)))]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_outputs_match_the_pattern(temperature: float) -> None:
    vocab = _engine_vocab()
    engine = tiny_llm_engine(seed=4, token_bytes=vocab)
    engine.eos_token_ids = frozenset({EOS})
    pattern = r"(yes|no), because [a-z]{1,6}( [a-z]{1,6}){0,2}\."
    sampling = SamplingParams(max_tokens=60, temperature=temperature, seed=3, n=4, regex=pattern)
    outputs = choice_bytes(engine, GenerationRequest("r", (5, 6, 7), sampling), vocab)
    blocks = engine.scheduler.block_manager
    assert blocks.num_free_blocks == blocks.num_blocks
    for ids, data, finish in outputs:
        assert finish == "stop", (ids, data)
        assert re.fullmatch(pattern, data.decode()), data


def test_regex_holds_after_a_reasoning_block() -> None:
    vocab = [*VOCAB[:-1], b"</think>", b""]
    vocab += [b"~"] * (tiny_config().vocab_size - len(vocab))
    eos = len(VOCAB)  # after "</think>"
    engine = tiny_llm_engine(seed=5, token_bytes=vocab)
    engine.eos_token_ids = frozenset({eos})
    sampling = SamplingParams(
        max_tokens=40,
        temperature=1.0,
        seed=1,
        n=3,
        regex=r"\d{3}",
        reasoning_end="</think>",
        reasoning_budget=4,
        logit_bias=((eos, -100.0),),  # the block ends by its budget, not by an end token
    )
    for _, data, finish in choice_bytes(engine, GenerationRequest("g", (5, 6), sampling), vocab):
        _, close, answer = data.partition(b"</think>")
        assert close, data
        assert finish == "stop"
        assert re.fullmatch(rb"\d{3}", answer), data


def test_regex_requests_are_validated() -> None:
    without_tokenizer = tiny_llm_engine()
    with pytest.raises(InvalidRequestError, match="tokenizer") as info:
        without_tokenizer.add_request(GenerationRequest("a", (5,), SamplingParams(regex="a")))
    assert info.value.param == "regex"
    engine = tiny_llm_engine(token_bytes=_engine_vocab())
    with pytest.raises(InvalidRequestError, match="look-around") as info:
        engine.add_request(GenerationRequest("b", (5,), SamplingParams(regex="(?!a)b")))
    assert info.value.param == "regex"
    for bad in (
        {"regex": "a", "choices": ("a",)},
        {"regex": "a", "response_format": "json_object"},
        {"regex": "a", "ignore_eos": True},
        {"regex": "a" * 5000},
    ):
        with pytest.raises(ValueError, match=r"regex|ignore_eos|at most"):
            SamplingParams.model_validate(bad)


def test_masks_stay_right_when_the_numbered_states_are_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import inferno_inference.token_runs as token_runs

    monkeypatch.setattr(token_runs, "STATES_KEPT", 2)  # renumbered at almost every mask
    g = _grammar(r"[a-z ]{0,40}\.")
    state = g.initial
    for token in (b"ab", b" ", b"12", b"yes"):
        expected = torch.zeros(len(VOCAB), dtype=torch.bool)
        expected[VOCABULARY.walk(g.step, state)] = True
        assert torch.equal(g.allowed(state), expected)
        assert len(g._tables) <= 40
        if token == b"12":
            assert not bool(g.allowed(state)[ID[token]])
            continue
        after = g.advance(state, ID[token])
        assert after is not None
        state = after
