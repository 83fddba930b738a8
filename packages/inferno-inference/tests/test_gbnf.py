"""GBNF grammars: parsing, matching as a pushdown automaton, and grammar-constrained output."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from inferno_inference import InvalidRequestError, SamplingParams
from inferno_inference.gbnf import MAX_DEPTH, MAX_STACKS, Grammar, GrammarError, compile_grammar
from inferno_inference.json_mode import JsonVocabulary
from inferno_inference.regex_mode import RegexConstraint, RegexGrammar
from inferno_inference.tiny import choice_bytes, tiny_llm_engine
from inferno_inference.types import GenerationRequest
from inferno_models.testing import tiny_config

# JSON in llama.cpp's notation, spread over lines the way its grammars are written.
JSON_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= "-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]+)? ([eE] [-+]? [0-9]{1,3})? ws
ws ::= | " " | "\n" [ \t]{0,20}
"""

ARITHMETIC = """
root ::= expr
expr ::= term (("+" | "-") term)*
term ::= [0-9]{1,3} | "(" expr ")"
"""

finite = st.floats(min_value=-1e90, max_value=1e90).filter(lambda x: x == 0 or abs(x) > 1e-90)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**15), 10**15) | finite | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(obj=st.dictionaries(st.text(max_size=6), json_values, max_size=4))
def test_every_serialized_object_is_a_derivation_and_every_prefix_is_alive(
    obj: dict[str, Any],
) -> None:
    grammar = compile_grammar(JSON_GBNF)
    text = json.dumps(obj)  # ASCII, one space after ":" and ","
    assert grammar.matches(text), text
    state = grammar.initial
    for ch in text[:-1]:
        state = grammar.step(state, ord(ch))
        assert state, text
        assert not grammar.accepts(state) or text.startswith("{}")


@pytest.mark.parametrize(
    "text", ["[1]", '{"a" 1}', '{"a": 01}', '{"a": 1,}', "{'a': 1}", '{"a": tru}', '{"a":1}}']
)
def test_what_is_not_json_is_no_derivation(text: str) -> None:
    assert not compile_grammar(JSON_GBNF).matches(text)


@pytest.mark.parametrize(
    ("gbnf", "regex"),
    [
        ('root ::= "yes" | "no"', "yes|no"),
        ('root ::= [a-c]+ ("x" | "yz")?', "[a-c]+(x|yz)?"),
        ('root ::= item ("," item){1,2}\nitem ::= [a-z]{1,2}', "[a-z]{1,2}(,[a-z]{1,2}){1,2}"),
        ('root ::= ("ab" | "a")* "c"', "(ab|a)*c"),
        ("root ::= [^a-y]{2,}  # a comment", "[^a-y]{2,}"),
        ('root ::= . "\\n" "\\x41\\u00e9"', ".\nAé"),
        ('root ::= "" | "z"', "|z"),
    ],
)
def test_regular_grammars_match_what_the_same_regex_matches(gbnf: str, regex: str) -> None:
    grammar = compile_grammar(gbnf)
    alphabet = "abcxyz,\nAé"
    words = [""] + [a + b for a in alphabet for b in alphabet] + list(alphabet)
    words += ["abc", "aac", "abab", "a,b", "a,b,c", "ab,cd,e", "a,b,c,d", "xyz", "yes", "no"]
    for word in words:
        assert grammar.matches(word) == bool(re.fullmatch(regex, word, re.DOTALL)), (gbnf, word)


def test_nesting_is_counted_as_a_pushdown_automaton_counts_it() -> None:
    grammar = compile_grammar(ARITHMETIC)
    assert grammar.matches("1+(2-(3+45))")
    assert grammar.matches("((((((7))))))")
    assert not grammar.matches("((((((7)))))")
    assert not grammar.matches("(1+2))")
    assert not grammar.matches("1234")
    deep = "(" * (MAX_DEPTH + 5)
    state = grammar.initial
    for ch in deep:
        state = grammar.step(state, ord(ch))
    assert not state  # nesting past MAX_DEPTH cannot be written


def test_repetition_keeps_stacks_short() -> None:
    # A rule called last replaces its caller's frame: a long list does not deepen the stack.
    grammar = compile_grammar('root ::= ("a" | "b")* "."')
    state = grammar.initial
    for ch in "ab" * 500:
        state = grammar.step(state, ord(ch))
        assert max(len(stack) for stack in state) <= 3  # root, the repetition, the group
    assert grammar.final(grammar.step(state, ord(".")))


def test_an_ambiguous_grammar_keeps_some_parses_and_stays_sound() -> None:
    # Each "(" may close with ")" or "]": the parses double per character. Past MAX_STACKS
    # some are dropped, so a state stays bounded, and what it still allows is a derivation.
    grammar = Grammar('root ::= s\ns ::= "(" s ")" | "(" s "]" | "x"')
    state = grammar.initial
    for _ in range(14):
        state = grammar.step(state, ord("("))
    assert 0 < len(state) <= MAX_STACKS
    assert grammar.matches("(" * 14 + "x" + ")" * 14)
    for ch in "x" + ")" * 14:
        state = grammar.step(state, ord(ch))
    assert grammar.final(state)


@pytest.mark.parametrize(
    ("gbnf", "problem"),
    [
        ('root ::= a "x"', "rule 'a' is used but never defined"),
        ('item ::= "x"', "no rule 'root'"),
        ('root ::= "x" root', "can never end"),
        ('root ::= root "x" | "y"', "left recursion through rule 'root'"),
        ('root ::= a\na ::= b? a "x" | "y"\nb ::= "z"', "left recursion through rule 'a'"),
        ('root ::= "x"\nroot ::= "y"', "defined twice"),
        ('root ::= ("x"', "an unclosed '('"),
        ('root ::= "x', "an unterminated string"),
        ("root ::= [a-", "an unterminated character class"),
        ("root ::= [z-a]", "out of order"),
        ('root ::= "\\q"', "the escape \\q"),
        ('root ::= "a"{3,1}', "n below m"),
        ('root ::= "a"{2000}', "a count over"),
        ('root ::= "a"*+', "a quantifier on a quantifier"),
        ('root ::= "a" )', "an unopened ')'"),
        ("root = x", "expected '::='"),
        (
            "root ::= r0\n"
            + "".join(f'r{i} ::= r{i + 1} "x"\n' for i in range(300))
            + 'r300 ::= "y"',
            "more than 256 deep",
        ),
    ],
)
def test_grammars_it_cannot_enforce_are_refused(gbnf: str, problem: str) -> None:
    with pytest.raises(GrammarError, match=re.escape(problem)):
        Grammar(gbnf)


def test_errors_say_where() -> None:
    with pytest.raises(GrammarError, match=r"range out of order \(line 3, column 14\)"):
        Grammar('root ::= a\na ::= "x"\nb ::= "y" | [z-a]')


# -- masks and the engine --------------------------------------------------------------------

VOCAB = [
    *(bytes([b]) for b in range(32, 127)),
    b"12",
    b"+(",
    b"))",
    b'{"',
    b'":',
    b'"}',
    b"true",
    b"\xc3",
    b"\xa9",
    b"\n",
    b"",  # the end of sequence
]
EOS = len(VOCAB) - 1


def _grammar(text: str) -> RegexGrammar:
    return RegexGrammar(JsonVocabulary(VOCAB), [EOS], compile_grammar(text))


@settings(max_examples=40, deadline=None)
@given(
    text=st.sampled_from([ARITHMETIC, JSON_GBNF, 'root ::= "caf" ([a-z] | "\\u00e9")+']),
    picks=st.lists(st.integers(min_value=0, max_value=10_000), min_size=30, max_size=30),
)
def test_following_any_allowed_tokens_always_spells_a_derivation(
    text: str, picks: list[int]
) -> None:
    g = _grammar(text)
    c = RegexConstraint(g)
    out = b""
    for pick in picks:
        mask = c.allowed()
        assert c.state is not None
        walked = torch.zeros(len(VOCAB), dtype=torch.bool)  # the byte walk agrees
        walked[g.vocab.walk(g.step, c.state)] = True
        walked[EOS] = g.accepts(c.state)
        assert torch.equal(mask, walked)
        options = mask.nonzero().flatten().tolist()
        token = options[pick % len(options)]
        if token == EOS:
            assert g.regex.accepts(c.state[0])
            break
        c.advance(token)
        out += VOCAB[token]
        if c.done:
            break
    else:
        return
    assert compile_grammar(text).matches(out.decode()), out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_outputs_are_derivations(temperature: float) -> None:
    vocab = [*VOCAB, *([b"~"] * (tiny_config().vocab_size - len(VOCAB)))]
    engine = tiny_llm_engine(seed=4, token_bytes=vocab)
    engine.eos_token_ids = frozenset({EOS})
    grammar = (
        'root ::= "= " expr\nexpr ::= term (("+" | "-") term){0,3}\nterm ::= [0-9] | "(" expr ")"'
    )
    sampling = SamplingParams(max_tokens=80, temperature=temperature, seed=3, n=4, grammar=grammar)
    outputs = choice_bytes(engine, GenerationRequest("g", (5, 6, 7), sampling), vocab)
    blocks = engine.scheduler.block_manager
    assert blocks.num_free_blocks == blocks.num_blocks
    for ids, data, finish in outputs:
        text = data.decode()
        assert text.startswith("= "), (ids, text)
        if finish == "stop":
            assert compile_grammar(grammar).matches(text)
            ast.parse(text[2:], mode="eval")  # Python reads it as the same arithmetic
        else:
            assert finish == "length"


def test_grammar_requests_are_validated() -> None:
    without_tokenizer = tiny_llm_engine()
    ok = 'root ::= "a"'
    with pytest.raises(InvalidRequestError, match="tokenizer") as info:
        without_tokenizer.add_request(GenerationRequest("a", (5,), SamplingParams(grammar=ok)))
    assert info.value.param == "grammar"
    engine = tiny_llm_engine(token_bytes=[*VOCAB, *([b"~"] * 300)])
    bad = SamplingParams(grammar='root ::= root "a" | "b"')
    with pytest.raises(InvalidRequestError, match="left recursion") as info:
        engine.add_request(GenerationRequest("b", (5,), bad))
    assert info.value.param == "grammar"
    for fields in (
        {"grammar": ok, "regex": "a"},
        {"grammar": ok, "choices": ("a",)},
        {"grammar": ok, "response_format": "json_object"},
        {"grammar": ok, "ignore_eos": True},
    ):
        with pytest.raises(ValueError, match=r"grammar|regex|ignore_eos"):
            SamplingParams.model_validate(fields)
