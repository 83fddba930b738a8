"""JSON mode: the byte automaton, the token masks, and constrained generation in the engine."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from inferno_inference import InvalidRequestError, SamplingParams
from inferno_inference.json_mode import JSON_OBJECT, JsonGrammar, JsonVocabulary
from inferno_inference.tiny import choice_bytes, tiny_llm_engine
from inferno_inference.types import GenerationRequest
from inferno_models.testing import tiny_config

START = JSON_OBJECT.initial
advance = JSON_OBJECT.advance

# JSON mode writes exponents of at most two digits (so every number is a finite double).
finite = st.floats(min_value=-1e90, max_value=1e90).filter(lambda x: x == 0 or abs(x) > 1e-90)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=5)


DONE = advance(START, b"{}")


def _complete(data: bytes) -> bool:
    return advance(START, data) == DONE


@settings(max_examples=300, deadline=None)
@given(obj=json_objects, indent=st.sampled_from([None, 2]), ascii_only=st.booleans())
def test_every_serialized_object_is_accepted_and_every_prefix_is_alive(
    obj: dict[str, Any], indent: int | None, ascii_only: bool
) -> None:
    data = json.dumps(obj, indent=indent, ensure_ascii=ascii_only).encode()
    assert _complete(data)
    for cut in range(len(data)):  # a prefix is alive, and not yet a whole object
        state = advance(START, data[:cut])
        assert state is not None, data[:cut]
        assert state != DONE


@pytest.mark.parametrize(
    "text",
    [
        "[1]",  # the top level must be an object
        '"x"',
        ' {"a": 1}',  # nothing before it
        '{"a": 1}}',
        '{"a": 1} ',  # nothing after it
        "{'a': 1}",
        '{"a" 1}',
        '{"a": 01}',
        '{"a": 1.}',
        '{"a": -}',
        '{"a": 1e}',
        '{"a": tru}',
        '{"a": True}',
        '{"a": [1,]}',
        '{"a": 1,}',
        "{a: 1}",
        '{"a": "\\x"}',
        '{"a": "\\u12g4"}',
        '{"a": "line\nbreak"}',  # control characters must be escaped
        '{"a": NaN}',
    ],
)
def test_invalid_json_is_rejected(text: str) -> None:
    assert not _complete(text.encode())


@pytest.mark.parametrize(
    "data",
    [b'{"a": "\xc3(', b'{"a": "\x80', b'{"a": "\xc0\xaf', b'{"a": "\xf5\x80', b'{"\xe2\x82"'],
)
def test_strings_must_be_utf8(data: bytes) -> None:
    assert advance(START, data) is None
    assert advance(START, '{"é€😀": "é"}'.encode()) == DONE


def test_numbers_stay_finite_doubles() -> None:
    assert advance(START, b'{"a": -' + b"9" * 64 + b"." + b"9" * 64 + b"e-99}") == DONE
    assert advance(START, b'{"a": ' + b"9" * 65) is None
    assert advance(START, b'{"a": 1.' + b"0" * 65) is None
    assert advance(START, b'{"a": 1e999') is None


@pytest.mark.parametrize(
    ("blank", "ok"),
    [
        (b" ", True),
        (b"\n", True),
        (b"\r\n", True),
        (b"\n" + b" \t" * 32, True),  # indentation up to MAX_INDENT
        (b"\n" + b" " * 65, False),
        (b"  ", False),  # one space, or a newline and indentation: no loops on blanks
        (b" \t", False),
        (b"\t", False),
        (b"\n\n", False),
        (b" \n", False),
        (b"\r", False),  # a carriage return only before a newline
        (b"\r ", False),
    ],
)
def test_whitespace_between_tokens_is_bounded(blank: bytes, ok: bool) -> None:
    assert _complete(b'{"a":' + blank + b"1" + blank + b"}") is ok


def test_nesting_is_bounded() -> None:
    assert advance(START, b'{"a":' + b"[" * 31) is not None
    assert advance(START, b'{"a":' + b"[" * 32) is None


VOCAB = [
    *(bytes([b]) for b in range(32, 127)),
    b"\n",
    b"  ",
    b'{"',
    b'":',
    b'": "',
    b'", "',
    b'"}',
    b"}\n",
    b"true",
    b" null",
    b"12",
    b"\\u00",
    b"\xc3",
    b"\xa9",
    b"\xc3\xa9",
    b"\xe2\x82",
    b"",  # a special token: never allowed
]
EOS = len(VOCAB) - 1


def _brute(grammar_vocab: list[bytes], state: Any) -> torch.Tensor:
    return torch.tensor([bool(t) and advance(state, t) is not None for t in grammar_vocab])


@pytest.mark.parametrize(
    "prefix",
    [
        b"",
        b"{",
        b'{"k',
        b'{"k":',
        b'{"k": 1',
        b'{"k": -0.5e',
        b'{"k": "a\\',
        b'{"k": "\xe2',
        b'{"k": [t',
        b"{}",
    ],
)
def test_masks_equal_checking_every_token(prefix: bytes) -> None:
    grammar = JsonGrammar(JsonVocabulary(VOCAB), [EOS])
    state = advance(START, prefix)
    assert state is not None
    mask = grammar.allowed(state)
    if prefix == b"{}":
        assert mask.nonzero().flatten().tolist() == [EOS]
    else:
        assert torch.equal(mask, _brute(VOCAB, state))
        assert not mask[EOS]
    assert grammar.allowed(state) is mask  # cached


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_generates_one_json_object_per_choice(temperature: float) -> None:
    vocab = [*VOCAB, *([b"x"] * (tiny_config().vocab_size - len(VOCAB)))]
    engine = tiny_llm_engine(seed=3, token_bytes=vocab)
    engine.eos_token_ids = frozenset({EOS})
    sampling = SamplingParams(
        max_tokens=200, temperature=temperature, seed=1, n=3, response_format="json_object"
    )
    choices = choice_bytes(engine, GenerationRequest("j", (5, 6, 7), sampling), vocab)
    blocks = engine.scheduler.block_manager
    assert blocks.num_free_blocks == blocks.num_blocks  # every choice gave its blocks back
    for ids, data, finish in choices:
        assert advance(START, data) is not None, data  # always a valid JSON prefix
        if finish == "stop":
            assert isinstance(json.loads(data), dict)
            assert EOS not in ids  # the engine stops when the object closes
        else:
            assert finish == "length"
            assert len(ids) == 200


def test_json_mode_is_refused_without_a_vocabulary_or_with_ignore_eos() -> None:
    engine = tiny_llm_engine()
    request = GenerationRequest("j", (5,), SamplingParams(response_format="json_object"))
    with pytest.raises(InvalidRequestError, match="tokenizer") as info:
        engine.add_request(request)
    assert info.value.param == "response_format"
    with pytest.raises(ValueError, match="ignore_eos"):
        SamplingParams(response_format="json_object", ignore_eos=True)
