"""JSON Schema mode: compiling schemas, accepting their instances, and generating only valid ones.

The strongest check is the last: random generations that follow the token masks (random
choices among the allowed tokens, over a small vocabulary) must always be prefixes of valid
JSON, and once the object closes, an instance of the schema by an independent validator.
"""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema_rs
import pytest
import torch
from inferno_inference import InvalidRequestError, SamplingParams, json_mode
from inferno_inference.json_mode import (
    JsonConstraint,
    JsonGrammar,
    JsonProgram,
    JsonVocabulary,
    SchemaError,
    compile_schema,
)
from inferno_inference.tiny import choice_bytes, tiny_llm_engine
from inferno_inference.types import GenerationRequest
from inferno_models.testing import tiny_config

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "height": {"type": "number"},
        "nickname": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "role": {"enum": ["admin", "user", 7, None]},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city"],
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "value": {"type": "integer"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["value", "children"],
        }
    },
    "$ref": "#/$defs/node",
}
SCORES = {
    "type": "object",
    "additionalProperties": {"type": "number"},
    "title": "Scores",
    "description": "a map of names to scores",
}
CHOICE = {
    "type": "object",
    "properties": {
        "answer": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
        "pair": {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 2},
        "mode": {"const": "fast"},
    },
    "required": ["answer", "pair", "mode"],
}
# A tagged union as pydantic writes one (a discriminated union of two models).
PETS = {
    "$defs": {
        "Cat": {
            "type": "object",
            "properties": {
                "kind": {"const": "cat", "type": "string"},
                "lives": {"type": "integer"},
            },
            "required": ["kind", "lives"],
            "additionalProperties": False,
        },
        "Dog": {
            "type": "object",
            "properties": {
                "kind": {"enum": ["dog", "puppy"], "type": "string"},
                "good": {"type": "boolean"},
            },
            "required": ["kind"],
            "additionalProperties": False,
        },
    },
    "type": "object",
    "properties": {
        "pet": {
            "oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}, {"type": "null"}],
            "discriminator": {"propertyName": "kind"},
        }
    },
    "required": ["pet"],
}


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


# Tool calls: a root array of objects told apart by a name, one name a prefix of another.
CALLS = {
    "type": "array",
    "minItems": 1,
    "maxItems": 2,
    "items": {
        "anyOf": [
            _call(
                "get_weather",
                {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                    "additionalProperties": False,
                },
            ),
            _call("get", {"type": "object", "additionalProperties": False}),
            _call("get_time", {"type": "object", "properties": {"utc": {"type": "boolean"}}}),
        ]
    },
}
# Value checks, as pydantic writes Field(min_length=..., ge=..., lt=...).
BOUNDED = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "minLength": 2, "maxLength": 4},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "ratio": {"type": "number", "exclusiveMinimum": -1.5, "maximum": 0.25},
        "year": {"type": "integer", "minimum": 1900, "exclusiveMaximum": 2100},
        "note": {"type": ["string", "null"], "maxLength": 3},
        "debt": {"type": "number", "maximum": -2},
        "words": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 2},
    },
    "required": ["code", "rating", "ratio", "year", "debt"],
    "additionalProperties": False,
}
# Patterns and formats, as pydantic writes constr(pattern=...), datetime, date and UUID.
PATTERNED = {
    "type": "object",
    "properties": {
        "sku": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "when": {"type": "string", "format": "date-time"},
        "day": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]},
        "tag": {"type": "string", "pattern": "^#", "maxLength": 6},
        "quote": {"type": "string", "pattern": '^a"\\\\?b$'},
        "id": {"format": "uuid"},
        "host": {"type": "string", "format": "hostname", "maxLength": 12},
        "slug": {"type": "string", "pattern": "^[a-z]+(-[a-z]+)*$", "minLength": 3, "maxLength": 5},
    },
    "required": ["sku", "when", "tag", "quote"],
    "additionalProperties": False,
}
# Unions whose alternatives start alike, where one allows all the others do: int | float,
# str | date, an enum beside a free string.
UNIONS = {
    "type": "object",
    "properties": {
        "x": {"anyOf": [{"type": "integer"}, {"type": "number"}]},
        "d": {
            "anyOf": [{"type": "string", "format": "date"}, {"type": "string"}, {"type": "null"}]
        },
        "e": {"anyOf": [{"enum": ["a", "b", 1, True]}, {"type": "string"}]},
    },
    "required": ["x", "d", "e"],
    "additionalProperties": False,
}
# Patterns whose lengths have gaps, under narrow length windows: a character is begun only
# when some completion has a length inside the window.
GAPPY = {
    "type": "object",
    "properties": {
        "a": {"type": "string", "pattern": "^(ab|abcde)+$", "minLength": 3, "maxLength": 7},
        "b": {"type": "string", "pattern": "^x(yy|yyyyy)*$", "minLength": 5, "maxLength": 6},
        "c": {"type": "string", "pattern": "^(aaa)*b?$", "maxLength": 4},
        # Only "yyyy" fits: an "x" would lead to lengths 3 or 6.
        "d": {"type": "string", "pattern": "^(x(aa|aaaaa)|yyyy)$", "minLength": 4, "maxLength": 5},
    },
    "required": ["a", "b", "c", "d"],
    "additionalProperties": False,
}
SCHEMAS = {
    "person": PERSON,
    "gappy": GAPPY,
    "unions": UNIONS,
    "bounded": BOUNDED,
    "patterned": PATTERNED,
    "tree": TREE,
    "scores": SCORES,
    "choice": CHOICE,
    "pets": PETS,
    "calls": CALLS,
}


def _validator(schema: Any) -> Any:
    """The reference validator, which checks formats too."""
    return jsonschema_rs.validator_for(schema, validate_formats=True)


def _program(schema: dict[str, Any]) -> JsonProgram:
    return compile_schema(json.dumps(schema))


def _accepts(program: JsonProgram, text: str) -> bool:
    state = program.advance(program.initial, text.encode())
    return state is not None and JsonGrammar.is_done(state)


@pytest.mark.parametrize(
    ("name", "instance"),
    [
        ("person", {"name": "Zoë", "age": 41, "tags": []}),
        (
            "person",
            {
                "name": 'A "quoted" \\ name',
                "age": -3,
                "height": 1.8e2,
                "nickname": None,
                "tags": ["a", "b", "c"],
                "role": 7,
                "address": {"city": "Paris"},
                "active": False,
            },
        ),
        ("person", {"name": "x", "age": 0, "nickname": "y", "tags": ["t"], "role": None}),
        ("tree", {"value": 1, "children": [{"value": 2, "children": []}]}),
        ("scores", {}),
        ("scores", {"a": 1, "b": -2.5, "a ": 0}),
        ("choice", {"answer": None, "pair": [True, False], "mode": "fast"}),
        ("choice", {"answer": 12, "pair": [False, False], "mode": "fast"}),
        ("choice", {"answer": "12", "pair": [True, True], "mode": "fast"}),
        ("pets", {"pet": {"kind": "cat", "lives": 9}}),
        ("pets", {"pet": {"kind": "puppy"}}),
        ("pets", {"pet": {"kind": "dog", "good": True}}),
        ("pets", {"pet": None}),
        ("calls", [{"name": "get", "arguments": {}}]),
        ("unions", {"x": 1.5, "d": "hello", "e": True}),
        ("unions", {"x": 3, "d": "2024-01-01", "e": "zz"}),
        ("unions", {"x": -0.25, "d": None, "e": 1}),
        (
            "patterned",
            {"sku": "AB-123", "when": "2024-02-29T10:00:00Z", "tag": "#", "quote": 'a"b'},
        ),
        (
            "patterned",
            {
                "sku": "ZZ-000",
                "when": "1999-12-31T23:59:59.5+01:00",
                "day": "2000-02-29",
                "tag": "#a é!",
                "quote": 'a"\\b',
                "id": "123e4567-e89b-12d3-a456-426614174000",
                "host": "api.ex.io",
                "slug": "a-bc",
            },
        ),
        ("bounded", {"code": "ab", "rating": 1, "ratio": 0.25, "year": 1900, "debt": -2}),
        (
            "bounded",
            {
                "code": "Zoë!",
                "rating": 5,
                "ratio": -1.4999,
                "year": 2099,
                "note": None,
                "debt": -1e6,
                "words": ["a", "é\n"],
            },
        ),
        ("bounded", {"code": "\u00e9\t", "rating": 3, "ratio": -0, "year": 2000, "debt": -2.5}),
        (
            "calls",
            [
                {"name": "get_weather", "arguments": {"city": "Paris"}},
                {"name": "get_time", "arguments": {"utc": True}},
            ],
        ),
    ],
)
@pytest.mark.parametrize("indent", [None, 2])
def test_instances_in_schema_order_are_accepted(
    name: str, instance: dict[str, Any], indent: int | None
) -> None:
    schema = SCHEMAS[name]
    assert _validator(schema).is_valid(instance)
    assert _accepts(_program(schema), json.dumps(instance, indent=indent, ensure_ascii=False))


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("person", '{"age": 41, "name": "x", "tags": []}'),  # out of schema order
        ("person", '{"name": "x", "tags": []}'),  # a required property left out
        ("person", '{"name": "x", "age": 4, "tags": [], "extra": 1}'),  # not in properties
        ("person", '{"name": "x", "age": 4.5, "tags": []}'),  # integer
        ("person", '{"name": 5, "age": 4, "tags": []}'),
        ("person", '{"name": "x", "age": 4, "tags": ["a", "b", "c", "d"]}'),  # maxItems
        ("person", '{"name": "x", "age": 4, "tags": [], "role": "root"}'),  # enum
        ("person", '{"name": "x", "age": 4, "tags": [], "address": {}}'),  # nested required
        ("tree", '{"value": 1, "children": [{"value": 2}]}'),
        ("scores", '{"a": "1"}'),
        ("choice", '{"answer": true, "pair": [true, false], "mode": "fast"}'),
        ("choice", '{"answer": 1, "pair": [true], "mode": "fast"}'),  # minItems
        ("choice", '{"answer": 1, "pair": [true, false], "mode": "slow"}'),  # const
        ("pets", '{"pet": {"kind": "cat", "good": true}}'),  # the dog's property on a cat
        ("pets", '{"pet": {"kind": "cat"}}'),  # the cat's required property
        ("pets", '{"pet": {"kind": "bird"}}'),
        ("pets", '{"pet": {"lives": 9, "kind": "cat"}}'),  # the tag must come first
        ("calls", "[]"),  # minItems
        ("bounded", '{"code": "a", "rating": 1, "ratio": 0, "year": 1900, "debt": -2}'),
        ("bounded", '{"code": "abcde", "rating": 1, "ratio": 0, "year": 1900, "debt": -2}'),
        ("bounded", '{"code": "ab", "rating": 0, "ratio": 0, "year": 1900, "debt": -2}'),
        ("bounded", '{"code": "ab", "rating": 6, "ratio": 0, "year": 1900, "debt": -2}'),
        ("bounded", '{"code": "ab", "rating": 10, "ratio": 0, "year": 1900, "debt": -2}'),
        ("bounded", '{"code": "ab", "rating": 1, "ratio": -1.5, "year": 1900, "debt": -2}'),
        ("bounded", '{"code": "ab", "rating": 1, "ratio": 0.2501, "year": 1900, "debt": -2}'),
        ("bounded", '{"code": "ab", "rating": 1, "ratio": 0, "year": 2100, "debt": -2}'),
        ("bounded", '{"code": "ab", "rating": 1, "ratio": 0, "year": 1899, "debt": -2}'),
        ("bounded", '{"code": "ab", "rating": 1, "ratio": 0, "year": 1900, "debt": -1.99}'),
        ("bounded", '{"code": "ab", "rating": 1, "ratio": 0, "year": 1900, "debt": 2}'),
        (
            "bounded",
            '{"code": "ab", "rating": 1, "ratio": 0, "year": 1900, "debt": -2, "note": "four"}',
        ),
        (
            "bounded",
            '{"code": "ab", "rating": 1, "ratio": 0, "year": 1900, "debt": -2, "words": [""]}',
        ),
        (
            "patterned",
            '{"sku": "AB-12", "when": "2024-02-29T10:00:00Z", "tag": "#", "quote": "a\\"b"}',
        ),
        (
            "patterned",
            '{"sku": "AB-123", "when": "2023-02-29T10:00:00Z", "tag": "#", "quote": "a\\"b"}',
        ),
        (
            "patterned",
            '{"sku": "AB-123", "when": "2024-02-29T10:00:00Z", "tag": "x#", "quote": "a\\"b"}',
        ),
        (
            "patterned",
            '{"sku": "AB-123", "when": "2024-02-29T10:00:00Z", "tag": "#123456", "quote": "a\\"b"}',
        ),
        (
            "patterned",
            '{"sku": "AB-123", "when": "2024-02-29T10:00:00Z", "tag": "#", "quote": "ab"}',
        ),
        (
            "patterned",
            '{"sku": "AB-123", "when": "2024-02-29T10:00:00Z", "tag": "#", "quote": "a\\"b", '
            '"host": "x.example.com"}',
        ),
        (
            "patterned",
            '{"sku": "AB-123", "when": "2024-02-29T10:00:00Z", "tag": "#", "quote": "a\\"b", '
            '"id": "x"}',
        ),
        (
            "patterned",
            '{"sku": "AB-123", "when": "2024-02-29T10:00:00Z", "tag": "#", "quote": "a\\"b", '
            '"slug": "ab"}',
        ),
        (
            "patterned",
            '{"sku": "AB-123", "when": "2024-02-29T10:00:00Z", "tag": "#", "quote": "a\\"b", '
            '"slug": "a--b"}',
        ),
        ("unions", '{"x": "1", "d": null, "e": "a"}'),
        ("unions", '{"x": 1, "d": 5, "e": "a"}'),
        ("unions", '{"x": 1, "d": null, "e": 2}'),
        ("unions", '{"x": 1, "d": null, "e": false}'),
        ("calls", '[{"name": "get", "arguments": {"x": 1}}]'),
        ("calls", '[{"name": "get_time", "arguments": {"utc": "yes"}}]'),
        ("calls", '[{"name": "get_x", "arguments": {}}]'),
        ("calls", "[" + ", ".join(['{"name": "get", "arguments": {}}'] * 3) + "]"),  # maxItems
    ],
)
def test_what_breaks_the_schema_is_rejected(name: str, text: str) -> None:
    assert not _validator(SCHEMAS[name]).is_valid(json.loads(text)) or (
        "extra" in text
        or "age" in text.split("name")[0]  # valid JSON Schema, refused order
        or text.startswith('{"pet": {"lives"')
    )
    assert not _accepts(_program(SCHEMAS[name]), text)


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "string"}, "root must be an object or an array"),
        (
            {"anyOf": [{"type": "object"}, {"properties": {"a": {"const": 1}}, "required": ["a"]}]},
            "first property",
        ),
        (
            {"anyOf": [{"type": "object", "additionalProperties": False}, {"properties": {}}]},
            "first property",
        ),
        ({"anyOf": [_call("a", {}), {"type": "object", "additionalProperties": False}]}, "first"),
        ({"type": "object", "properties": {"a": {"anyOf": [PERSON, SCORES]}}}, "first property"),
        (
            {"type": "array", "items": {"anyOf": [_call("a", {}), _call("b", {}), _call("a", {})]}},
            "overlap",
        ),
        (
            {
                "type": "array",
                "items": {
                    "anyOf": [
                        {"properties": {"n": {"const": 1}}, "required": ["n"]},
                        {"properties": {"n": {"enum": [2, 12]}}, "required": ["n"]},
                    ]
                },
            },
            "overlap",
        ),
        ({"type": "object", "properties": {"a": {"pattern": "(?=x)x"}}}, "pattern: .*look-around"),
        ({"type": "object", "properties": {"a": {"pattern": "(a)\\1"}}}, "back-references"),
        ({"type": "object", "properties": {"a": {"format": "ipv6"}}}, "format 'ipv6'"),
        ({"type": "object", "properties": {"a": {"format": "date", "pattern": "^2"}}}, "together"),
        ({"type": "object", "properties": {"a": {"pattern": "^a{5}$", "maxLength": 3}}}, "length"),
        ({"type": "object", "properties": {"a": {"pattern": "^a?$", "minLength": 2}}}, "length"),
        (
            {
                "type": "object",
                "properties": {"a": {"pattern": "^x(aa|aaaaa)$", "minLength": 4, "maxLength": 5}},
            },
            "length",
        ),
        (
            {"type": "object", "properties": {"n": {"type": "integer", "format": "int128"}}},
            "numbers",
        ),
        ({"type": "object", "properties": {"n": {"multipleOf": 2}}}, "multipleOf"),
        ({"type": "object", "properties": {"n": {"type": "integer", "minimum": True}}}, "finite"),
        ({"type": "object", "properties": {"n": {"minimum": 3, "maximum": 2}}}, "no number"),
        (
            {"type": "object", "properties": {"n": {"minimum": 2, "exclusiveMaximum": 2}}},
            "no number",
        ),
        (
            {
                "type": "object",
                "properties": {"n": {"type": "integer", "exclusiveMinimum": 1, "maximum": 1.5}},
            },
            "no integer",
        ),
        ({"type": "object", "properties": {"s": {"type": "string", "maxLength": -1}}}, "non-neg"),
        ({"type": "object", "properties": {"s": {"minLength": 3, "maxLength": 2}}}, "below"),
        (
            {
                "type": "object",
                "properties": {
                    "a": {"anyOf": [{"format": "date"}, {"type": "string", "maxLength": 3}]}
                },
            },
            "differ in their first character",
        ),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "does not resolve"),
        ({"type": "object", "properties": {"a": {"$ref": "http://x/y"}}}, "local references"),
        ({"type": "object", "required": ["a"]}, "required"),
        ({"type": "object", "properties": {"a": {"type": "decimal"}}}, "unknown type"),
        (
            {"type": "object", "anyOf": [{"required": ["a"]}, {"required": ["b"]}]},
            "cannot combine anyOf, type",
        ),
        ({"type": "object", "properties": {"a": {"$ref": "#", "minItems": 1}}}, "combine"),
        ({"type": "object", "properties": {"a": {"required": ["b"]}}}, "required"),
    ],
)
def test_schemas_it_cannot_enforce_are_refused(schema: dict[str, Any], words: str) -> None:
    with pytest.raises(SchemaError, match=words):
        _program(schema)


# A vocabulary of single bytes plus longer pieces (keys, literals, digits, a split character).
VOCAB = [
    *(bytes([b]) for b in range(32, 127)),
    b"\n",
    b"\n  ",
    b'{"',
    b'": "',
    b'", "',
    b'"}',
    b"true",
    b"null",
    b"12",
    b"-0.5",
    b"\xc3",
    b"\xa9",
    b"\xc3\xa9",
    b'"name": "',
    b'"age": ',
    b'"children": [',
    b'"value": ',
    b"[]",
    b"]}",
    b"",  # the end token
]
EOS = len(VOCAB) - 1
CLOSERS = frozenset(i for i, t in enumerate(VOCAB) if t and t[-1:] in (b'"', b"}", b"]"))


def _random_generation(grammar: JsonGrammar, rng: random.Random, limit: int) -> bytes | None:
    """Random allowed tokens, closers favoured so that most generations finish."""
    state = grammar.initial
    out = b""
    for _ in range(limit):
        allowed = grammar.allowed(state).nonzero().flatten().tolist()
        assert allowed, state
        if allowed == [EOS]:
            return out
        weights = [8 if t in CLOSERS else 1 for t in allowed]
        token = rng.choices(allowed, weights)[0]
        assert token != EOS  # the end comes only when the object is closed
        nxt = grammar.advance(state, token)
        assert nxt is not None
        state, out = nxt, out + VOCAB[token]
    return None


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_random_generations_under_the_masks_are_schema_instances(name: str) -> None:
    schema = SCHEMAS[name]
    grammar = JsonGrammar(JsonVocabulary(VOCAB), [EOS], _program(schema))
    validator = _validator(schema)
    rng = random.Random(name)
    finished = 0
    for _ in range(60):
        data = _random_generation(grammar, rng, limit=300)
        if data is None:
            continue
        finished += 1
        instance = json.loads(data)
        assert validator.is_valid(instance), data
    assert finished >= 20  # the check above ran on many instances, not a lucky few


def _brute_force_mask(program: JsonProgram, state: Any, vocab: list[bytes]) -> torch.Tensor:
    """The tokens that may come next, by stepping through every one."""
    return torch.tensor([bool(t) and program.advance(state, t) is not None for t in vocab])


def _check_masks(schema: dict[str, Any], vocab: list[bytes], prefixes: list[bytes]) -> None:
    """The grammar's mask after each prefix is the brute-force one, and never empty."""
    program = _program(schema)
    grammar = JsonGrammar(JsonVocabulary(vocab), [len(vocab) - 1], program)
    for prefix in prefixes:
        state = program.advance(program.initial, prefix)
        assert state is not None, prefix
        brute = _brute_force_mask(program, state, vocab)
        assert torch.equal(grammar.allowed(state), brute), prefix
        assert bool(brute.any()), prefix


def test_masks_equal_checking_every_token() -> None:
    prefixes = [b"", b"{", b'{"na', b'{"name": "x", "age": 1', b'{"name": "\xc3', b'{"name": ""']
    _check_masks(PERSON, VOCAB, prefixes)


def test_engine_follows_a_schema_and_refuses_a_bad_one() -> None:
    vocab = [*VOCAB, *([b"x"] * (tiny_config().vocab_size - len(VOCAB)))]
    engine = tiny_llm_engine(seed=5, token_bytes=vocab)
    engine.eos_token_ids = frozenset({EOS})
    schema = json.dumps(TREE)
    sampling = SamplingParams(
        max_tokens=120,
        temperature=1.0,
        seed=2,
        n=4,
        response_format="json_schema",
        json_schema=schema,
    )
    choices = choice_bytes(engine, GenerationRequest("s", (5, 6, 7), sampling), vocab)
    assert len(choices) == 4
    program = _program(TREE)
    for _, data, finish in choices:
        assert program.advance(program.initial, data) is not None, data
        if finish == "stop":
            assert jsonschema_rs.validator_for(TREE).is_valid(json.loads(data))
    bad = SamplingParams(response_format="json_schema", json_schema=json.dumps({"type": "string"}))
    with pytest.raises(InvalidRequestError, match="root must be an object") as info:
        engine.add_request(GenerationRequest("bad", (5,), bad))
    assert info.value.param == "response_format"
    with pytest.raises(ValueError, match="json_schema is given exactly"):
        SamplingParams(response_format="json_object", json_schema="{}")


def test_optional_json_is_plain_text_or_an_instance() -> None:
    """Optional JSON (tool calls a model may skip): the first non-whitespace byte decides."""
    program = _program(CALLS)
    grammar = JsonGrammar(JsonVocabulary(VOCAB), [EOS], program, optional=True)
    validator = jsonschema_rs.validator_for(CALLS)
    start = grammar.initial
    # Before the decision: every token, and the end (an empty answer is text too).
    brute = _brute_force_mask(program, start, VOCAB)
    brute[EOS] = True
    assert torch.equal(grammar.allowed(start), brute)
    # Only tokens that open the array are checked: "[]" breaks minItems.
    assert [VOCAB[i] for i in (~brute).nonzero().flatten().tolist()] == [b"[]"]
    rng = random.Random(7)
    outcomes = {"text": 0, "json": 0}
    for _ in range(80):
        constraint = JsonConstraint(grammar)
        out = b""
        for _ in range(300):
            allowed = constraint.allowed()
            if allowed is None:  # plain text: no mask at all
                assert out.strip()[:1] not in (b"", b"[")
                outcomes["text"] += 1
                break
            ids = allowed.nonzero().flatten().tolist()
            if ids == [EOS]:
                assert constraint.done
                assert validator.is_valid(json.loads(out)), out
                outcomes["json"] += 1
                break
            # Open the array often enough to test both outcomes; favour closers inside it.
            weights = [
                40 if not out.strip() and VOCAB[t][:1] == b"[" else 8 if t in CLOSERS else 1
                for t in ids
            ]
            token = rng.choices(ids, weights)[0]
            if token == EOS:  # only allowed before the decision
                assert not out.strip()
                break
            constraint.advance(token)
            out += VOCAB[token]
    assert outcomes["text"] >= 10, outcomes
    assert outcomes["json"] >= 10, outcomes


def test_engine_leaves_optional_json_unconstrained_once_it_is_text() -> None:
    vocab = [*VOCAB, *([b"x"] * (tiny_config().vocab_size - len(VOCAB)))]
    engine = tiny_llm_engine(seed=5, token_bytes=vocab)
    engine.eos_token_ids = frozenset({EOS})
    sampling = SamplingParams(
        max_tokens=12,
        temperature=1.0,
        seed=3,
        n=4,
        response_format="json_schema",
        json_schema=json.dumps(CALLS),
        json_optional=True,
    )
    choices = choice_bytes(engine, GenerationRequest("o", (5, 6, 7), sampling), vocab)
    program = _program(CALLS)
    texts = 0
    for _, data, finish in choices:
        if data.strip()[:1] == b"[":
            assert program.advance(program.initial, data.strip()) is not None, data
        else:
            texts += 1
            assert finish in ("length", "stop")
    # The padded vocabulary is mostly "x": a masked choice could never write "xx".
    assert texts
    assert any(b"xx" in data for _, data, _ in choices)
    with pytest.raises(ValueError, match="json_optional needs JSON output"):
        SamplingParams(json_optional=True)


def _number_texts() -> list[bytes]:
    """Numbers as JSON writes them: -99 to 99 with up to one fraction digit, and -30 to 30
    with two (every bound below sits well inside that grid, and a side left unbounded is
    reached within two whole digits)."""
    texts = []
    for whole in range(100):
        for sign in ("", "-"):
            texts.append(f"{sign}{whole}".encode())
            for digits in (1, 2) if whole <= 30 else (1,):
                for fraction in range(10**digits):
                    texts.append(f"{sign}{whole}.{fraction:0{digits}d}".encode())
    return texts


@pytest.mark.parametrize(
    "bounds",
    [
        {"minimum": 1, "maximum": 5},
        {"minimum": -2.5, "exclusiveMaximum": 3},
        {"exclusiveMinimum": -20, "exclusiveMaximum": -19.9},
        {"exclusiveMinimum": 0},
        {"maximum": -7.5},
        {"minimum": 0, "maximum": 0},
        {"minimum": 12, "maximum": 25.5},
        {"exclusiveMinimum": 2.5, "maximum": 2.6},
    ],
)
@pytest.mark.parametrize("kind", ["integer", "number"])
def test_number_bounds_match_enumerating_every_number(bounds: dict[str, float], kind: str) -> None:
    """`reaches` is true for exactly the prefixes of numbers in range, and `ends` for exactly
    the numbers in range (checked over a grid whose spacing the bounds need)."""
    validator = jsonschema_rs.validator_for({"type": kind, **bounds})
    texts = _number_texts()
    inside = [
        t
        for t in texts
        if (kind == "number" or b"." not in t) and validator.is_valid(json.loads(t))
    ]
    schema = {"type": "object", "properties": {"n": {"type": kind, **bounds}}}
    if not inside:  # an integer range with no integer in it
        with pytest.raises(SchemaError, match="no integer is in its range"):
            _program(schema)
        return
    node = next(n for n in _program(schema).nodes if n.bounds is not None)
    assert node.bounds is not None
    prefixes = {t[:i] for t in inside for i in range(1, len(t) + 1)}
    # A prefix is checked when the grid holds its one-digit-longer continuations.
    for text in texts:
        whole, _, fraction = text.lstrip(b"-").partition(b".")
        if len(fraction) >= (2 if int(whole) <= 30 else 1):
            assert node.bounds.ends(text) == (text in inside), (text, bounds)
            continue
        for i in range(1, len(text) + 1):
            prefix = text[:i]
            assert node.bounds.reaches(prefix) == (prefix in prefixes), (prefix, bounds)
        assert node.bounds.ends(text) == (text in inside), (text, bounds)


def test_masks_of_bounded_strings_equal_checking_every_token() -> None:
    """Masks are cached by what a bounded string's state needs of its count; states that share
    a cached mask must each get exactly the tokens that fit."""
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string", "minLength": 3, "maxLength": 40},
            "t": {"type": "string", "maxLength": 2},
        },
        "required": ["s", "t"],
    }
    program = _program(schema)
    vocab = [*VOCAB[:-1], b"abcdefghij", b'xyz", "t": "', VOCAB[-1]]
    grammar = JsonGrammar(JsonVocabulary(vocab), [len(vocab) - 1], program)
    cached = 0
    for body in ("", "a", "ab", "abc", "a" * 10, "a" * 20, "a" * 29, "a" * 30, "a" * 35, "a" * 40):
        for tail in ("", ', "t": "', ', "t": "x', ', "t": "xy'):
            if tail and len(body) < 3:
                continue
            prefix = ('{"s": "' + body + ('"' if tail else "") + tail).encode()
            state = program.advance(program.initial, prefix)
            assert state is not None, prefix
            before = len(grammar._cache)
            mask = grammar.allowed(state)
            cached += len(grammar._cache) == before
            assert torch.equal(mask, _brute_force_mask(program, state, vocab)), prefix
    assert cached >= 3  # some states above did share a mask with an earlier one


SLUG = b'{"sku": "AB-123", "when": "2024-02-29T10:00:00Z", "tag": "#", "quote": "a\\"b", "slug": "'


def test_masks_of_patterned_strings_equal_checking_every_token() -> None:
    vocab = [*VOCAB[:-1], b"2024", b"-02-", b"29T", b"\\u00", b"\\u0041", b"\xe2\x82", VOCAB[-1]]
    prefixes = [
        b'{"sku": "',
        b'{"sku": "A',
        b'{"sku": "AB-1',
        b'{"sku": "AB-123", "when": "',
        b'{"sku": "AB-123", "when": "2024-02-2',
        b'{"sku": "AB-123", "when": "2023-02-2',
        b'{"sku": "AB-123", "when": "2024-02-29T10:00:00',
        b'{"sku": "AB-123", "when": "2024-02-29T10:00:00Z", "tag": "',
        b'{"sku": "AB-123", "when": "2024-02-29T10:00:00Z", "tag": "#ab',
        b'{"sku": "AB-123", "when": "2024-02-29T10:00:00Z", "tag": "#abcd',
        b'{"sku": "AB-123", "when": "2024-02-29T10:00:00Z", "tag": "#\xe2',
        b'{"sku": "AB-123", "when": "2024-02-29T10:00:00Z", "tag": "#\\u00',
        *(SLUG + tail for tail in (b"a", b"ab", b"abcd", b"ab-", b"ab-c", b"abcde")),
    ]
    _check_masks(PATTERNED, vocab, prefixes)


@pytest.mark.parametrize("schema", [PERSON, BOUNDED])
def test_strings_are_valid_utf8_without_overlong_forms_or_surrogates(
    schema: dict[str, Any],
) -> None:
    program = _program(schema)
    key = b'{"name": "' if schema is PERSON else b'{"code": "ab'  # minLength 2
    for char in ("é", "€", "\u0800", "\ud7ff", "\ue000", "\U00010000", "\U0010ffff", "😀"):
        data = key + char.encode() + b'"'
        assert program.advance(program.initial, data) is not None, char
    for raw in (
        b"\xc0\xaf",  # overlong "/"
        b"\xc1\xbf",
        b"\xe0\x80\xaf",  # overlong, three bytes
        b"\xe0\x9f\xbf",
        b"\xed\xa0\x80",  # a UTF-16 surrogate
        b"\xed\xbf\xbf",
        b"\xf0\x80\x80\xaf",  # overlong, four bytes
        b"\xf0\x8f\xbf\xbf",
        b"\xf4\x90\x80\x80",  # past U+10FFFF
        b"\xf5\x80\x80\x80",
        b"\xe2\x82",  # cut short by the quote
    ):
        data = key + raw + b'"'
        with pytest.raises(UnicodeDecodeError):
            data.decode()
        assert program.advance(program.initial, data) is None, raw


def test_integer_formats_are_ranges() -> None:
    """OpenAPI's int32/int64 (and their kin) bound integers; float and double are any number."""
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "format": "int32"},
            "b": {"type": "integer", "format": "uint8", "maximum": 100},
            "c": {"type": "number", "format": "double"},
        },
        "required": ["a", "b", "c"],
    }
    program = _program(schema)
    for a, b, c, ok in (
        ("2147483647", "0", "1e5", True),
        ("-2147483648", "100", "-0.5", True),
        ("2147483648", "0", "1", False),
        ("-2147483649", "0", "1", False),
        ("0", "-1", "1", False),
        ("0", "101", "1", False),
    ):
        assert _accepts(program, f'{{"a": {a}, "b": {b}, "c": {c}}}') is ok, (a, b, c)


RUN_VOCAB = [
    *VOCAB[:-1],
    *(w.encode() for w in ("john", "doe", ".doe", "@ex", "ample", ".com", "https", "://")),
    *(w.encode() for w in ("the quick", " brown", " fox", "abcdefghijklmnop", "ABC-12")),
    "é".encode(),
    "€uro".encode(),
    "日本".encode(),
    b'ab"',
    b'x", "',
    b"\\n",
    b"a\\u0041",
    b"\xe2\x82",
    VOCAB[-1],
]


@pytest.mark.parametrize(
    "string",
    [
        {"format": "email"},
        {"format": "uri"},
        {"pattern": "^([a-z]+ ){2,5}[a-z]+$", "maxLength": 30},
        {"pattern": "^[A-Za-z ]+$", "minLength": 5, "maxLength": 12},
        {"pattern": "^[^0-9]{3,}x$", "maxLength": 20},
        {"pattern": "[a-z]{4}", "minLength": 6},
    ],
    ids=["email", "uri", "words", "letters", "negated", "unanchored"],
)
def test_masks_of_patterns_run_in_one_pass_equal_checking_every_token(
    string: dict[str, Any],
) -> None:
    """Masks inside patterned strings run every plain token through the pattern together;
    along random generations, each must be the brute-force one."""
    schema = {
        "type": "object",
        "properties": {"v": {"type": "string", **string}},
        "required": ["v"],
    }
    program = _program(schema)
    vocab = RUN_VOCAB
    grammar = JsonGrammar(JsonVocabulary(vocab), [len(vocab) - 1], program)
    rng = random.Random(str(string))
    checked = 0
    for _ in range(6):
        state = program.advance(program.initial, b'{"v": "')
        assert state is not None
        for _ in range(24):
            if state[0] != json_mode._BOUNDED_STRING:
                break  # the string is closed
            mask = grammar.allowed(state)
            assert torch.equal(mask, _brute_force_mask(program, state, vocab))
            checked += 1
            allowed = [t for t in mask.nonzero().flatten().tolist() if t != len(vocab) - 1]
            if not allowed:
                break
            nxt = program.advance(state, vocab[rng.choice(allowed)])
            assert nxt is not None
            state = nxt
    assert checked >= 30
