"""Patterns and formats of JSON Schema strings, as automata over code points."""

from __future__ import annotations

import random
import re

import jsonschema_rs
import pytest
from inferno_inference.json_regex import FORMATS, Regex, RegexError

PATTERNS = [
    "a",
    "^a",
    "a$",
    "^a$",
    "^(ab|c)*$",
    "^[a-c]{2,3}$",
    "b+c",
    r"^\d{2}-\w?$",
    "^[^ab]+$",
    "^(a|b)?c{0,2}$",
    "a.c",
    r"^\s*$",
    r"^[\d-]+$",
    "^a{2}$|^b$",
    "x|^y",
    "^[a-]*$",
    "^(?:a|bc)+?x{1,}$",
    r"^(?<name>[a-c]{1,2})\.1?$",
    r"^\x61\u0062[\-\]]*$",
    "^[A-Za-z0-9_]{1,4}(,[0-9])*$",
    r"^\S\W*$",
    r"^\D+$",
    "^[.][^.]{0}b?$",
]
ALPHABET = "abcx-1,. _]Z"


@pytest.mark.parametrize("pattern", PATTERNS)
def test_patterns_match_as_a_search_like_pythons_re(pattern: str) -> None:
    """The same strings match as with Python's ``re.search`` (whose syntax agrees on these
    patterns, but for its spelling of named groups; strings without a newline, where Python's
    ``$`` differs)."""
    ours, theirs = Regex(pattern), re.compile(pattern.replace("(?<", "(?P<"))
    rng = random.Random(pattern)
    for length in range(7):
        for _ in range(150):
            text = "".join(rng.choice(ALPHABET) for _ in range(length))
            assert ours.matches(text) == bool(theirs.search(text)), (pattern, text)


def test_ecma_semantics_where_python_differs() -> None:
    assert not Regex("^a$").matches("a\n")  # $ is the very end
    assert not Regex("^.$").matches("\n")
    assert not Regex("^.$").matches("\u2028")
    assert Regex("^.$").matches("é")
    assert Regex(r"^\s$").matches("\u00a0")
    assert Regex("^[^a]$").matches("\U0001f600")  # one code point


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        ("(?=a)", "look-around"),
        ("(?<!a)b", "look-around"),
        (r"(a)\1", "back-references"),
        (r"\bx", "word boundaries"),
        (r"\p{L}", "escape"),
        ("a**", "nothing to repeat"),
        ("*a", "nothing to repeat"),
        ("(a", "unexpected end"),
        ("a)", "unexpected"),
        ("[z-a]", "out of order"),
        ("a^b", "ends of the pattern"),
        ("(^a)", "ends of the pattern"),
        ("a{3,2}", "below"),
        ("a{1001}", "over 1000"),
        ("(a{1000}){1000}", "more than"),
    ],
)
def test_what_is_not_a_regular_expression_it_enforces(pattern: str, words: str) -> None:
    with pytest.raises(RegexError, match=words):
        Regex(pattern)


def _sample(regex: Regex, rng: random.Random, alphabet: list[int], limit: int = 80) -> str | None:
    """A random string the automaton accepts, walking through live states."""
    state, out = regex.initial, []
    for _ in range(limit):
        if regex.accepts(state) and rng.random() < 0.15:
            return "".join(map(chr, out))
        live = [cp for cp in alphabet if regex.step(state, cp)]
        if not live:
            return "".join(map(chr, out)) if regex.accepts(state) else None
        cp = rng.choice(live)
        state = regex.step(state, cp)
        out.append(cp)
    return "".join(map(chr, out)) if regex.accepts(state) else None


VALID = {
    "date": ["2024-02-29", "1999-12-31", "2000-02-29", "0001-01-01"],
    "time": ["23:59:59Z", "00:00:00.123456+05:30", "12:30:00-08:00"],
    "date-time": ["2024-02-29T10:00:00Z", "1985-04-12T23:20:50.52Z", "1996-12-19T16:39:57-08:00"],
    "uuid": ["123e4567-e89b-12d3-a456-426614174000", "00000000-0000-0000-0000-000000000000"],
    "ipv4": ["192.168.0.1", "0.0.0.0", "255.255.255.255"],
    "hostname": ["a", "example.com", "a-b.c1", "mail-01.eu-west-2.example"],
    "email": ["a@b.c", "first.last+tag@example.co.uk", "x_y%z@host"],
    "uri": [
        "https://example.com",
        "http://a.b:8080/x/y?q=1&r=%20#top",
        "https://api.example.io/v1/items/42/",
    ],
}
INVALID = {
    "date": ["2023-02-29", "1900-02-29", "2024-13-01", "2024-04-31", "24-01-01"],
    "time": ["24:00:00Z", "12:60:00Z", "12:00:00", "12:00:00+5:00"],
    "date-time": ["2024-02-29 10:00:00Z", "2024-02-30T10:00:00Z", "2024-02-29T10:00Z"],
    "uuid": ["123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-42661417400g"],
    "ipv4": ["256.1.1.1", "1.2.3", "01.2.3.4", "1.2.3.4.5"],
    # Not all invalid: IDNA labels ("xn--") are valid names this subset leaves out.
    "hostname": ["-a.b", "a-.b", "a..b", "a" * 64, ".".join(["a"] * 6), "xn--bcher-kva.ch"],
    "email": [".a@b.c", "a..b@c.d", "a@-b.c", "a@", "@b.c"],
    # Not all invalid: other schemes and hosts are URIs this subset leaves out.
    "uri": ["example.com", "https://", "https://a b.c", "https://a.c/%zz", "ftp://a.b/c"],
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_formats_accept_only_what_a_format_validator_accepts(name: str) -> None:
    regex = Regex(FORMATS[name])
    validator = jsonschema_rs.validator_for(
        {"type": "string", "format": name}, validate_formats=True
    )
    for text in VALID[name]:
        assert validator.is_valid(text), text
        assert regex.matches(text), text
    for text in INVALID[name]:
        assert not regex.matches(text), text
    # Every string the automaton accepts is valid: random ones, from every live branch.
    alphabet = sorted({ord(c) for text in VALID[name] + INVALID[name] for c in text} | {0x54})
    rng = random.Random(name)
    samples = [s for _ in range(300) if (s := _sample(regex, rng, alphabet)) is not None]
    assert len(samples) >= 100
    for text in samples:
        assert validator.is_valid(text), (name, text)


def test_viable_knows_every_length_a_match_can_take() -> None:
    even = Regex("^(aa)*$")
    assert even.viable(even.initial, 4, 3)  # "aaaa"
    assert not even.viable(even.initial, 3, 3)  # only even lengths match
    assert even.viable(even.initial, 0, 0)  # the empty string
    twos_and_fives = Regex("^x(aa|aaaaa)$")
    assert not twos_and_fives.viable(twos_and_fives.initial, 5, 4)  # lengths 3 and 6 only
    assert twos_and_fives.viable(twos_and_fives.initial, 6, 4)
    assert twos_and_fives.viable(twos_and_fives.initial, 10**6, 6)  # beyond the exact range


@pytest.mark.parametrize(
    ("pattern", "longest"),
    [
        ("^a{5,280}$", 280),
        ("^(ab|c){0,150}d$", 301),
        ("^(a|bc)?x{300}$", 302),
        ("^(()){2,}$", 0),
        ("^(a|b)+c$", None),  # no limit
        ("(()){2,}", None),  # a search: anything may follow
        ("^x(a*)*$", None),
    ],
)
def test_the_longest_match_is_known_beyond_the_exact_range(
    pattern: str, longest: int | None
) -> None:
    # Past 256 characters of room `viable` reads the longest match from each state.
    regex = Regex(pattern)
    if longest is None:
        assert regex.viable(regex.initial, 10**6, 10**6 - 1)
        return
    assert regex.viable(regex.initial, 10**6, longest)
    assert not regex.viable(regex.initial, 10**6, longest + 1)


def test_a_pattern_of_many_optional_parts_is_refused_not_compiled_for_minutes() -> None:
    # Each "?" may be skipped, so every state reaches all later ones without a character:
    # the automaton would be quadratic in the pattern, and so would each step of a match.
    for pattern in ("(a?b?c?d?e?f?g?h?i?){1000}", "(((a|b)?){50}){50}x"):
        with pytest.raises(RegexError, match="too many optional parts"):
            Regex(pattern)
    assert Regex(".{0,1000}").matches("x" * 1000)  # a bounded repeat stays small
    assert Regex("^(a|b|c|d){1000}x{1000}$").matches("ab" * 500 + "x" * 1000)
