"""JSON mode and JSON Schema: per-step token masks that keep a generation inside one JSON value.

A schema (or, for ``response_format={"type": "json_object"}``, "any object") is compiled into a
`JsonProgram`: a small graph of nodes (object with ordered properties, object with free keys,
array, string, number, a set of literals, a choice decided by the first byte, or objects told
apart by the value of their first property). The program drives a byte-level pushdown automaton
whose states are immutable tuples, so a token mask can be cached per state. A token is allowed
in a state when each of its bytes is a legal next byte; end-of-sequence tokens are allowed only
once the root value (an object or an array) is closed, and nothing else then. Optional JSON
(tool calls a model may choose not to make) is plain text unless its first non-whitespace byte
opens the root.

Finding the allowed tokens walks the vocabulary sorted by bytes, reusing the automaton states
of the prefix a token shares with the one before and skipping every token under a prefix that
already failed; outside strings almost every branch fails at its first byte. Inside a string
almost every token is allowed, so tokens made of whole characters that a string takes as they
are pass wholesale, and only those with a quote, a backslash, a control byte or a piece of a
character are checked one by one. Strings are checked to be valid UTF-8 as they grow.

What a schema may say (anything else is refused with `SchemaError`, never ignored): ``type``
(one or a list), ``properties``/``required``/``additionalProperties``, ``items``/``minItems``/
``maxItems``, ``minLength``/``maxLength`` of strings (in characters), ``pattern`` or ``format``
(one of them per string; see `inferno_inference.json_regex`), ``minimum``/``maximum``/
``exclusiveMinimum``/``exclusiveMaximum`` of numbers (a bounded number is written without an
exponent), ``enum``, ``const``, ``anyOf``/``oneOf`` whose branches start differently (an
object or a string, say), or where a string or number without checks allows what the others
starting alike do (``int | float``, ``str | date``), or are objects whose first property,
required in each, has distinct ``const``/``enum`` values (a tagged union), a one-element
``allOf``, local ``$ref``
(``#/$defs/...``), and annotations (``title``, ``description``, ...). Properties are written in
schema order; optional ones may be left out and no others are added; the root must be an object
or an array.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any, TypeVar

import structlog
import torch

from inferno_inference.json_regex import FORMATS, Regex, RegexError
from inferno_inference.token_runs import StateTables, token_chars

__all__ = [
    "JSON_OBJECT",
    "JsonConstraint",
    "JsonGrammar",
    "JsonProgram",
    "JsonState",
    "JsonVocabulary",
    "SchemaError",
    "compile_schema",
]

log = structlog.get_logger(__name__)

#: (mode, container stack, mode detail, whitespace field). A stack frame is (node, progress):
#: the next property index of an object, the items so far of an array.
JsonState = tuple[int, tuple[tuple[int, int], ...], Any, int]

(
    _START,  # before the root value: "{" or "["
    _VALUE,  # detail: the node a value must match
    _ARRAY_FIRST,  # after "[": a value or "]"
    _OBJECT_FIRST,  # after "{": a key or "}"
    _KEY,  # after "," in an object: a key
    _KEY_NAME,  # detail: the bytes of a schema key so far, opening quote included
    _COLON,  # detail: the node of the value that follows
    _AFTER,  # after a value inside a container: "," or its closer
    _STRING,  # detail: 1 for a free key, 0 for a value; + 2 per UTF-8 continuation byte due
    _ESCAPE,  # after a backslash in a string
    _UNICODE,  # detail: key flag * 8 + hex digits still due
    _LITERAL,  # detail: (node, bytes matched)
    _MINUS,  # number modes' detail: 1 for an integer, + 2 per digit of the current part
    _ZERO,
    _INT,
    _DOT,
    _FRACTION,
    _EXP,
    _EXP_SIGN,
    _EXP_DIGITS,
    _DONE,  # the root value is closed
    _MAYBE,  # optional JSON, before the first non-whitespace byte; detail: the root node
    _TEXT,  # optional JSON that turned out to be plain text: anything goes
    # A string with a length bound or a pattern; detail: (node, characters so far, _CHAR_*
    # position within a character, the code point's bits so far, the pattern's state or None).
    _BOUNDED_STRING,
    _BOUNDED_NUMBER,  # detail: (node, the number's bytes so far)
) = range(25)

# Where a bounded string is within a character: between characters, after a backslash, inside
# a UTF-8 character (_UTF8_PARTIAL + 10 * its length in bytes + continuation bytes due), or
# inside a \u escape (_HEX_PARTIAL + hex digits due).
_CHAR_NEXT, _CHAR_ESCAPE, _UTF8_PARTIAL, _HEX_PARTIAL = 0, 1, 100, 200
#: The code points of each UTF-8 length, and the UTF-16 surrogates, which are no characters.
_UTF8_CODE_POINTS = {2: (0x80, 0x7FF), 3: (0x800, 0xFFFF), 4: (0x10000, 0x10FFFF)}
_SURROGATES = (0xD800, 0xDFFF)
#: The code points of the one-character escapes.
_ESCAPED = {
    ord(escape): ord(char) for escape, char in zip('"\\/bfnrt', '"\\/\b\f\n\r\t', strict=True)
}
#: Value bits of a UTF-8 lead byte, by the continuation bytes it announces.
_LEAD_BITS = {1: 0x1F, 2: 0x0F, 3: 0x07}

# Node kinds. _TAGGED: objects told apart by the value of their first property (a "tag" key
# whose value is a literal), until that value is complete; then its frame becomes the chosen
# object's, as if that object had been parsed from the start.
_UNION, _OBJECT, _FREE_OBJECT, _ARRAY, _STRING_NODE, _NUMBER_NODE, _LITERALS, _TAGGED = range(8)
_OBJECTS = frozenset((_OBJECT, _FREE_OBJECT, _TAGGED))

_WHITESPACE = frozenset(b" \t\n\r")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrt')
#: Continuation bytes a UTF-8 lead byte announces, by its high nibble (0xC2..0xF4 only).
_UTF8_LEAD = {0xC: 1, 0xD: 1, 0xE: 2, 0xF: 3}
#: The lead bytes whose first continuation byte has a narrower range than 0x80-0xBF.
_FIRST_CONTINUATION = {
    0xE0: (0xA0, 0xBF),
    0xED: (0x80, 0x9F),
    0xF0: (0x90, 0xBF),
    0xF4: (0x80, 0x8F),
}
_NUMBER_END = frozenset((_ZERO, _INT, _FRACTION, _EXP_DIGITS))  # modes where a number may end
_NUMBER = frozenset((_MINUS, _ZERO, _INT, _DOT, _FRACTION, _EXP, _EXP_SIGN, _EXP_DIGITS))
_STRUCTURAL = frozenset((_VALUE, _ARRAY_FIRST, _OBJECT_FIRST, _KEY, _COLON, _AFTER, _MAYBE))
_QUOTE, _BACKSLASH = 0x22, 0x5C
_FINISHED: JsonState = (_DONE, (), 0, 0)
_FREE_TEXT: JsonState = (_TEXT, (), 0, 0)
_ROOT_OPENERS = frozenset(b"{[")

#: Deepest nesting of objects and arrays.
MAX_DEPTH = 32
#: Whitespace between tokens is one space, or a newline and at most this many spaces and tabs
#: (indentation by two at the deepest nesting): a model that loops on blanks must move on.
MAX_INDENT = 2 * MAX_DEPTH
#: Longest blank run before optional JSON decides; past it, the answer is plain text.
MAX_WHITESPACE = 64
# The whitespace field of a state: 0 for none yet, _SPACED after a single space, _CR after a
# carriage return (a newline must follow), 1 + indentation after a newline.
_SPACED, _CR = -1, -2
_S = TypeVar("_S")
#: Most digits before and after a number's point, and in its exponent: every number then
#: parses as a finite double (a valid "1e999" reads as infinity, which no schema accepts),
#: at the price of numbers past 1e100 or below 1e-99 in exponent form.
MAX_DIGITS = 64
MAX_EXPONENT_DIGITS = 2


class SchemaError(ValueError):
    """A JSON Schema that JSON mode cannot enforce; the message says which part and why."""


_BOUNDED_NUMBER_TEXT = re.compile(rb"-?(?:0|[1-9][0-9]*)?(?:\.[0-9]*)?")


def _without_surrogates(low: int, high: int) -> tuple[tuple[int, int], ...]:
    """``[low, high]`` less the UTF-16 surrogates, as ranges."""
    pieces = ((low, min(high, _SURROGATES[0] - 1)), (max(low, _SURROGATES[1] + 1), high))
    return tuple((lo, hi) for lo, hi in pieces if lo <= hi)


_BMP = _without_surrogates(0, 0xFFFF)  # what an escape may stand for


def _utf8_range(length: int, due: int, bits: int) -> tuple[tuple[int, int], ...]:
    """The characters a UTF-8 sequence of ``length`` bytes can still be, with ``due`` bytes
    to come after the value ``bits`` so far (empty: none; overlong forms are no characters)."""
    low = bits << 6 * due
    first, last = _UTF8_CODE_POINTS[length]
    return _without_surrogates(max(low, first), min(low | ((1 << 6 * due) - 1), last))


def _room(node: _Node, count: int) -> tuple[float, int]:
    """The characters a bounded string may still add after ``count``, and must."""
    room = math.inf if node.max_length is None else node.max_length - count
    return room, max(node.min_length - count, 0)


def _before(end: Fraction | None, end_open: bool, start: Fraction | None, start_open: bool) -> bool:
    """Whether an interval that ends at ``end`` lies wholly before one that starts at ``start``
    (None: unbounded that way)."""
    if end is None or start is None:
        return False
    return end < start or (end == start and (end_open or start_open))


@dataclass(frozen=True, slots=True)
class NumberBounds:
    """The range of a bounded number node: ``low``/``high`` (None: unbounded), each inclusive
    unless ``*_open``; ``integer`` for integers only. Numbers it accepts have no exponent."""

    low: Fraction | None
    high: Fraction | None
    low_open: bool
    high_open: bool
    integer: bool

    def contains(self, value: Fraction) -> bool:
        """Whether ``value`` is in the range."""
        if self.integer and value.denominator != 1:
            return False
        return self._compare(value, False, value, False) == 0

    def reaches(self, text: bytes) -> bool:
        """Whether some number in the range is written starting with ``text``."""
        if not text or _BOUNDED_NUMBER_TEXT.fullmatch(text) is None:
            return False
        negative = text.startswith(b"-")
        whole, dot, fraction = text.lstrip(b"-").partition(b".")
        if dot and (self.integer or not whole):
            return False
        if len(whole) > MAX_DIGITS or len(fraction) > MAX_DIGITS:
            return False

        def side(start: Fraction, stop: Fraction | None) -> int:
            # Magnitudes [start, stop) are values [start, stop) or (-stop, -start].
            if not negative:
                return self._compare(start, False, stop, True)
            return self._compare(None if stop is None else -stop, True, -start, False)

        if not whole:  # just "-"
            return side(Fraction(0), None) == 0
        if dot:
            base = Fraction(int(whole + fraction), 10 ** len(fraction))
            return side(base, base + Fraction(1, 10 ** len(fraction))) == 0
        value = int(whole)
        if side(Fraction(value), Fraction(value + 1)) == 0:  # this number, or its fractions
            return True
        if value == 0:  # no digits may follow a leading zero
            return False
        beyond = -1 if negative else 1  # more digits move the magnitudes that way
        for extra in range(1, MAX_DIGITS - len(whole) + 1):
            scale = 10**extra
            where = side(Fraction(value * scale), Fraction((value + 1) * scale))
            if where == 0:
                return True
            if where == beyond:
                return False
        return False

    def ends(self, text: bytes) -> bool:
        """Whether ``text`` is a whole number in the range."""
        if text[-1:] in (b"", b"-", b".") or not self.reaches(text):
            return False
        return self.contains(Fraction(text.decode()))

    def _compare(
        self, low: Fraction | None, low_open: bool, high: Fraction | None, high_open: bool
    ) -> int:
        """Where the interval from ``low`` to ``high`` (None: unbounded) lies against the
        range: -1 wholly below it, 1 wholly above it, 0 meeting it (at an integer, for
        integer ranges)."""
        if self.integer:
            first = None if low is None else math.floor(low) + 1 if low_open else math.ceil(low)
            last = None if high is None else math.ceil(high) - 1 if high_open else math.floor(high)
            lowest, highest = self.integer_range()
            if last is not None and lowest is not None and last < lowest:
                return -1
            if first is not None and highest is not None and first > highest:
                return 1
            return 0
        if _before(high, high_open, self.low, self.low_open):
            return -1
        if _before(self.high, self.high_open, low, low_open):
            return 1
        return 0

    def integer_range(self) -> tuple[int | None, int | None]:
        """The smallest and largest integers in the range (None: unbounded)."""
        lowest = highest = None
        if self.low is not None:
            lowest = math.floor(self.low) + 1 if self.low_open else math.ceil(self.low)
        if self.high is not None:
            highest = math.ceil(self.high) - 1 if self.high_open else math.floor(self.high)
        return lowest, highest


@dataclass(slots=True)
class _Node:
    kind: int
    # _OBJECT: encoded keys ('"name"' as UTF-8), their value nodes and whether each is required.
    keys: tuple[bytes, ...] = ()
    values: tuple[int, ...] = ()
    required: tuple[bool, ...] = ()
    item: int = -1  # _ARRAY items, _FREE_OBJECT values
    min_items: int = 0
    max_items: int | None = None
    integer: bool = False  # _NUMBER_NODE
    # _STRING_NODE with a length bound: characters (min_length 0 and max_length None: none).
    min_length: int = 0
    max_length: int | None = None
    bounds: NumberBounds | None = None  # _NUMBER_NODE with a range
    pattern: Regex | None = None  # _STRING_NODE: its ``pattern`` or ``format``
    literals: tuple[bytes, ...] = ()  # _LITERALS, JSON-encoded
    branches: dict[int, int] = field(default_factory=dict)  # _UNION: first byte -> node
    tags: dict[bytes, int] = field(default_factory=dict)  # _TAGGED: tag literal -> object node

    def first_bytes(self) -> frozenset[int]:
        """The bytes a value of this node can start with."""
        if self.kind == _UNION:
            return frozenset(self.branches)
        if self.kind in _OBJECTS:
            return frozenset(b"{")
        if self.kind == _ARRAY:
            return frozenset(b"[")
        if self.kind == _STRING_NODE:
            return frozenset(b'"')
        if self.kind == _NUMBER_NODE:
            return frozenset(b"-0123456789")
        return frozenset(lit[0] for lit in self.literals)


class JsonProgram:
    """A compiled schema: the automaton's nodes and its step function."""

    def __init__(self, nodes: list[_Node], root: int) -> None:
        self.nodes = nodes
        self.root = root
        self.initial: JsonState = (_START, (), root, 0)
        #: The start of optional JSON: plain text, unless the first non-whitespace byte opens
        #: the root value.
        self.optional: JsonState = (_MAYBE, (), root, 0)

    # -- the automaton -------------------------------------------------------------------------

    def advance(self, state: JsonState | None, data: bytes) -> JsonState | None:
        """The state after every byte of ``data``, or None as soon as one cannot come next."""
        for b in data:
            if state is None:
                return None
            state = self.step(state, b)
        return state

    def step(self, state: JsonState, b: int) -> JsonState | None:
        """The state after byte ``b``, or None when ``b`` cannot come next."""
        mode, stack, detail, ws = state
        if mode == _TEXT:
            return state
        if mode == _STRING:
            return self._string(state, b)
        if mode == _BOUNDED_STRING:
            return self._bounded_string(stack, detail, b)
        if mode == _BOUNDED_NUMBER:
            node_id, text = detail
            bounds = self.nodes[node_id].bounds
            assert bounds is not None
            grown = text + bytes((b,))
            if bounds.reaches(grown):
                return (_BOUNDED_NUMBER, stack, (node_id, grown), 0)
            # The number may have ended; the byte then belongs to what follows.
            return self.step(self._done(stack), b) if bounds.ends(text) else None
        if mode == _ESCAPE:
            if b in _ESCAPES:
                return (_STRING, stack, detail, 0)
            return (_UNICODE, stack, detail * 8 + 4, 0) if b == 0x75 else None  # u
        if mode == _UNICODE:
            if b not in _HEX:
                return None
            key, due = divmod(detail, 8)
            return (_STRING, stack, key, 0) if due == 1 else (_UNICODE, stack, detail - 1, 0)
        if mode == _LITERAL:
            return self._literal(stack, detail, b)
        if mode == _KEY_NAME:
            return self._key_name(stack, detail, b)
        if mode in _NUMBER:
            return self._number(mode, stack, detail, b)
        if b in _WHITESPACE:
            if mode == _MAYBE:
                return (mode, stack, detail, ws + 1) if ws < MAX_WHITESPACE else _FREE_TEXT
            if mode not in _STRUCTURAL:
                return None
            blank = _blank(ws, b)
            return None if blank is None else (mode, stack, detail, blank)
        if ws == _CR:
            return None
        if mode == _START:
            return self._begin(detail, stack, b) if b in _ROOT_OPENERS else None
        if mode == _MAYBE:
            begun = self._begin(detail, stack, b) if b in _ROOT_OPENERS else None
            return _FREE_TEXT if begun is None else begun
        if mode == _VALUE:
            return self._begin(detail, stack, b)
        if mode == _COLON:
            return (_VALUE, stack, detail, 0) if b == 0x3A else None
        if mode == _DONE:
            return None
        node_id, progress = stack[-1]
        node = self.nodes[node_id]
        if mode == _ARRAY_FIRST:
            if b == 0x5D:  # ]
                return self._done(stack[:-1]) if node.min_items == 0 else None
            if node.max_items == 0:
                return None
            return self._begin(node.item, (*stack[:-1], (node_id, 1)), b)
        if mode in (_OBJECT_FIRST, _KEY):
            if b == _QUOTE:
                if node.kind == _FREE_OBJECT:
                    return (_STRING, stack, 1, 0)
                return (_KEY_NAME, stack, b'"', 0) if progress < len(node.keys) else None
            if b == 0x7D and mode == _OBJECT_FIRST and self._closable(node, progress):  # }
                return self._done(stack[:-1])
            return None
        if mode == _AFTER:
            if node.kind == _ARRAY:
                if b == 0x2C:  # ,
                    if node.max_items is not None and progress >= node.max_items:
                        return None
                    return (_VALUE, (*stack[:-1], (node_id, progress + 1)), node.item, 0)
                if b == 0x5D and progress >= node.min_items:
                    return self._done(stack[:-1])
                return None
            if b == 0x2C:
                if node.kind == _OBJECT and progress >= len(node.keys):
                    return None
                return (_KEY, stack, 0, 0)
            if b == 0x7D and self._closable(node, progress):
                return self._done(stack[:-1])
        return None

    @staticmethod
    def _done(stack: tuple[tuple[int, int], ...]) -> JsonState:
        """The state after a value completes inside ``stack``."""
        return (_AFTER, stack, 0, 0) if stack else _FINISHED

    @staticmethod
    def _closable(node: _Node, progress: int) -> bool:
        return node.kind == _FREE_OBJECT or not any(node.required[progress:])

    def _begin(self, node_id: int, stack: tuple[tuple[int, int], ...], b: int) -> JsonState | None:
        node = self.nodes[node_id]
        kind = node.kind
        if kind == _UNION:
            branch = node.branches.get(b)
            return None if branch is None else self._begin(branch, stack, b)
        if kind in _OBJECTS:
            if b != 0x7B or len(stack) >= MAX_DEPTH:
                return None
            return (_OBJECT_FIRST, (*stack, (node_id, 0)), 0, 0)
        if kind == _ARRAY:
            if b != 0x5B or len(stack) >= MAX_DEPTH:
                return None
            return (_ARRAY_FIRST, (*stack, (node_id, 0)), 0, 0)
        if kind == _STRING_NODE:
            if b != _QUOTE:
                return None
            if node.min_length or node.max_length is not None or node.pattern is not None:
                initial = None if node.pattern is None else node.pattern.initial
                return (_BOUNDED_STRING, stack, (node_id, 0, _CHAR_NEXT, 0, initial), 0)
            return (_STRING, stack, 0, 0)
        if kind == _NUMBER_NODE:
            if node.bounds is not None:
                if not node.bounds.reaches(bytes((b,))):
                    return None
                return (_BOUNDED_NUMBER, stack, (node_id, bytes((b,))), 0)
            integer = int(node.integer)
            if b == 0x2D:  # -
                return (_MINUS, stack, integer, 0)
            if b in _DIGITS:
                return (_ZERO if b == 0x30 else _INT, stack, integer | 2, 0)
            return None
        return self._literal(stack, (node_id, b""), b)

    def _string(self, state: JsonState, b: int) -> JsonState | None:
        _, stack, detail, _ = state
        # due: UTF-8 continuation bytes still to come; lead: the range of the first of them,
        # narrower after the lead bytes whose other continuations would be overlong forms,
        # UTF-16 surrogates or past U+10FFFF.
        key, due, lead = detail & 1, detail >> 1 & 3, detail >> 3
        if due:
            low, high = _FIRST_CONTINUATION.get(lead, (0x80, 0xBF))
            return (_STRING, stack, key | (due - 1) << 1, 0) if low <= b <= high else None
        if b < 0x80:
            if b == _QUOTE:
                if key:  # a free key: its value follows
                    return (_COLON, stack, self.nodes[stack[-1][0]].item, 0)
                return self._done(stack)
            if b == _BACKSLASH:
                return (_ESCAPE, stack, key, 0)
            return state if b >= 0x20 else None
        due = _UTF8_LEAD.get(b >> 4, 0) if 0xC2 <= b <= 0xF4 else 0
        return (_STRING, stack, key | due << 1 | b << 3, 0) if due else None

    def _bounded_string(
        self,
        stack: tuple[tuple[int, int], ...],
        detail: tuple[int, int, int, int, frozenset[int] | None],
        b: int,
    ) -> JsonState | None:
        """A string value with a length bound or a pattern. Lengths count characters, and a
        pattern sees the characters a string means (escapes decoded). A ``\\u`` escape is
        one character, so escapes of UTF-16 surrogates (two escapes for one character) are
        not allowed; the character itself may be written. A character is begun only when
        some way to finish it is valid UTF-8 and keeps every pattern alive."""
        node_id, count, where, bits, matched = detail
        node = self.nodes[node_id]
        if where == _CHAR_NEXT:
            if b == _QUOTE:
                done = count >= node.min_length and (
                    matched is None or node.pattern is None or node.pattern.accepts(matched)
                )
                return self._done(stack) if done else None
            if node.max_length is not None and count >= node.max_length:
                return None
            count += 1
            if b == _BACKSLASH:
                if not self._can_take(node, count, matched, _BMP):
                    return None
                return (_BOUNDED_STRING, stack, (node_id, count, _CHAR_ESCAPE, 0, matched), 0)
            if b >= 0x80:
                due = _UTF8_LEAD.get(b >> 4, 0) if 0xC2 <= b <= 0xF4 else 0
                if not due:
                    return None
                where = _UTF8_PARTIAL + 10 * (due + 1) + due
                return self._partial(stack, (node_id, count, where, b & _LEAD_BITS[due], matched))
            if b < 0x20:
                return None
            return self._char(stack, node_id, count, b, matched)
        if where == _CHAR_ESCAPE:
            if b == 0x75:  # u
                return self._partial(stack, (node_id, count, _HEX_PARTIAL + 4, 0, matched))
            escaped = _ESCAPED.get(b)
            return None if escaped is None else self._char(stack, node_id, count, escaped, matched)
        if where > _HEX_PARTIAL:
            if b not in _HEX:
                return None
            bits = bits << 4 | int(chr(b), 16)
        else:  # UTF-8 continuation bytes due
            if not 0x80 <= b <= 0xBF:
                return None
            bits = bits << 6 | (b & 0x3F)
        if where % 10 > 1:
            return self._partial(stack, (node_id, count, where - 1, bits, matched))
        if where < _HEX_PARTIAL and not _utf8_range(where // 10 % 10, 0, bits):
            return None
        if where > _HEX_PARTIAL and 0xD800 <= bits <= 0xDFFF:
            return None
        return self._char(stack, node_id, count, bits, matched)

    def _partial(
        self,
        stack: tuple[tuple[int, int], ...],
        detail: tuple[int, int, int, int, frozenset[int] | None],
    ) -> JsonState | None:
        """A bounded string inside a character, or None when no way to finish the character
        is both a valid one and one every pattern takes."""
        node_id, _, where, bits, matched = detail
        due = where % 10
        if where > _HEX_PARTIAL:
            low = bits << 4 * due
            ranges = _without_surrogates(low, low | ((1 << 4 * due) - 1))
        else:
            ranges = _utf8_range(where // 10 % 10, due, bits)
        if not ranges or not self._can_take(self.nodes[node_id], detail[1], matched, ranges):
            return None
        return (_BOUNDED_STRING, stack, detail, 0)

    def _char(
        self,
        stack: tuple[tuple[int, int], ...],
        node_id: int,
        count: int,
        cp: int,
        matched: frozenset[int] | None,
    ) -> JsonState | None:
        """A bounded string after its character ``cp``; None when its pattern can no longer
        match."""
        pattern = self.nodes[node_id].pattern
        if pattern is not None and matched is not None:
            matched = pattern.step(matched, cp)
            if not pattern.alive(matched):
                return None
            node = self.nodes[node_id]
            if node.max_length is not None or node.min_length > count:
                room, needed = _room(node, count)
                if not pattern.viable(matched, room, needed):
                    return None
        return (_BOUNDED_STRING, stack, (node_id, count, _CHAR_NEXT, 0, matched), 0)

    @staticmethod
    def _can_take(
        node: _Node,
        count: int,
        matched: frozenset[int] | None,
        ranges: tuple[tuple[int, int], ...],
    ) -> bool:
        """Whether the character being written (the ``count``-th) can be one in ``ranges``
        that keeps the pattern able to match within the length bounds."""
        if node.pattern is None or matched is None:
            return True
        room, needed = _room(node, count)
        return any(node.pattern.can_step(matched, lo, hi, room, needed) for lo, hi in ranges)

    def _literal(
        self, stack: tuple[tuple[int, int], ...], detail: tuple[int, bytes], b: int
    ) -> JsonState | None:
        node_id, matched = detail
        literals = self.nodes[node_id].literals
        grown = matched + bytes((b,))
        longer = [lit for lit in literals if lit.startswith(grown)]
        if longer:
            if longer == [grown]:  # complete, and nothing longer could follow
                return self._done(self._tagged(stack, grown))
            return (_LITERAL, stack, (node_id, grown), 0)
        if matched in literals:  # complete; the byte belongs to what follows
            return self.step(self._done(self._tagged(stack, matched)), b)
        return None

    def _tagged(
        self, stack: tuple[tuple[int, int], ...], literal: bytes
    ) -> tuple[tuple[int, int], ...]:
        """``stack`` after a literal; the tag of a tagged object picks the object it is."""
        if not stack:
            return stack
        node_id, progress = stack[-1]
        node = self.nodes[node_id]
        if node.kind != _TAGGED:
            return stack
        return (*stack[:-1], (node.tags[literal], progress))

    def _key_name(
        self, stack: tuple[tuple[int, int], ...], typed: bytes, b: int
    ) -> JsonState | None:
        node_id, progress = stack[-1]
        node = self.nodes[node_id]
        grown = typed + bytes((b,))
        for index in range(progress, len(node.keys)):
            key = node.keys[index]
            if key == grown:
                frames = (*stack[:-1], (node_id, index + 1))
                return (_COLON, frames, node.values[index], 0)
            if key.startswith(grown):
                return (_KEY_NAME, stack, grown, 0)
            if node.required[index]:
                break  # a required property cannot be skipped
        return None

    def _number(
        self, mode: int, stack: tuple[tuple[int, int], ...], detail: int, b: int
    ) -> JsonState | None:
        # detail: integer flag + 2 * digits so far in the current part (capped, see MAX_DIGITS).
        integer, count = detail & 1, detail >> 1
        digit = b in _DIGITS
        if mode == _MINUS:
            return (_ZERO if b == 0x30 else _INT, stack, integer | 2, 0) if digit else None
        if mode in (_ZERO, _INT):
            if digit and mode == _INT:
                return (_INT, stack, detail + 2, 0) if count < MAX_DIGITS else None
            if not integer:
                if b == 0x2E:  # .
                    return (_DOT, stack, 0, 0)
                if b in (0x65, 0x45):  # e E
                    return (_EXP, stack, 0, 0)
        elif mode in (_DOT, _FRACTION):
            if digit:
                return (_FRACTION, stack, detail + 2, 0) if count < MAX_DIGITS else None
            if mode == _FRACTION and b in (0x65, 0x45):
                return (_EXP, stack, 0, 0)
        elif mode == _EXP:
            if digit:
                return (_EXP_DIGITS, stack, 2, 0)
            if b in (0x2B, 0x2D):  # + -
                return (_EXP_SIGN, stack, 0, 0)
        elif mode in (_EXP_SIGN, _EXP_DIGITS) and digit:
            return (_EXP_DIGITS, stack, detail + 2, 0) if count < MAX_EXPONENT_DIGITS else None
        if mode in _NUMBER_END:  # the number ended; the byte belongs to what follows
            return self.step(self._done(stack), b)
        return None


def _blank(ws: int, b: int) -> int | None:
    """The whitespace field after blank byte ``b``; None when ``b`` may not come next."""
    if ws == 0:
        return {0x20: _SPACED, 0x0D: _CR, 0x0A: 1}.get(b)
    if ws == _CR:
        return 1 if b == 0x0A else None
    if ws > 0 and b in (0x20, 0x09) and ws <= MAX_INDENT:
        return ws + 1
    return None


# -- compiling schemas -------------------------------------------------------------------------

_ANNOTATIONS = frozenset(
    (
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$defs",
        "definitions",
        "discriminator",  # OpenAPI's hint for a tagged union, which anyOf enforces already
    )
)
_KEYWORDS = frozenset(
    (
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
    )
)
_SIMPLE_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
_LENGTHS = frozenset(("minLength", "maxLength", "pattern", "format"))
#: Number formats: the range of each integer one (None: any number, as float and double are).
_NUMBER_FORMATS: dict[Any, tuple[int, int] | None] = {
    **{f"int{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)},
    **{f"uint{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)},
    "float": None,
    "double": None,
}
_RANGE = frozenset(("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"))


class _Compiler:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.nodes: list[_Node] = []
        self.refs: dict[str, int] = {}
        self.any = self._any_value()

    def add(self, node: _Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def _any_value(self) -> int:
        """Nodes for "any JSON value" (and its objects and arrays), built once."""
        union = self.add(_Node(_UNION))
        free = self.add(_Node(_FREE_OBJECT, item=union))
        array = self.add(_Node(_ARRAY, item=union))
        string = self.add(_Node(_STRING_NODE))
        number = self.add(_Node(_NUMBER_NODE))
        literals = self.add(_Node(_LITERALS, literals=(b"true", b"false", b"null")))
        for target in (free, array, string, number, literals):
            for b in self.nodes[target].first_bytes():
                self.nodes[union].branches[b] = target
        return union

    def compile(self, schema: Any, where: str) -> int:
        if schema is True or schema == {}:
            return self.any
        if not isinstance(schema, dict):
            raise SchemaError(f"{where}: a schema must be an object or true, got {schema!r}")
        unknown = sorted(k for k in schema if k not in _KEYWORDS and k not in _ANNOTATIONS)
        if unknown:
            raise SchemaError(f"{where}: JSON mode cannot enforce {', '.join(unknown)}")
        # A combinator or a reference is compiled alone; constraints beside it would be lost.
        lone = [k for k in ("$ref", "anyOf", "oneOf", "allOf", "enum", "const") if k in schema]
        typed_values = {"type"} if lone in (["enum"], ["const"]) else set()  # pydantic's Literal
        beside = sorted(set(schema) - _ANNOTATIONS - set(lone) - typed_values)
        if lone and (len(lone) > 1 or beside):
            raise SchemaError(
                f"{where}: JSON mode cannot combine {', '.join(lone + beside)} in one schema"
            )
        if "$ref" in schema:
            return self._ref(schema["$ref"], where)
        if "const" in schema:
            return self._literals([schema["const"]], where)
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError(f"{where}.enum: must be a non-empty list")
            return self._literals(values, where)
        for word in ("anyOf", "oneOf"):
            if word in schema:
                return self._union(schema[word], f"{where}.{word}")
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1:
                raise SchemaError(f"{where}.allOf: only a single schema is supported")
            return self.compile(parts[0], f"{where}.allOf[0]")
        kind = schema.get("type")
        if kind is None:
            if {"properties", "additionalProperties", "required"} & set(schema):
                kind = "object"
            elif {"items", "minItems", "maxItems"} & set(schema):
                kind = "array"
            elif _LENGTHS & set(schema):
                kind = "string"
            elif _RANGE & set(schema):
                kind = "number"
            else:
                return self.any
        if isinstance(kind, list):
            return self._type_list(schema, kind, where)
        return self._typed(schema, kind, where)

    def _typed(self, schema: dict[str, Any], kind: Any, where: str) -> int:
        if kind == "object":
            return self._object(schema, where)
        if kind == "array":
            return self._array(schema, where)
        if kind == "string":
            return self._string(schema, where)
        if kind in ("integer", "number"):
            integer = kind == "integer"
            return self.add(
                _Node(_NUMBER_NODE, integer=integer, bounds=_bounds(schema, integer, where))
            )
        if kind == "boolean":
            return self.add(_Node(_LITERALS, literals=(b"true", b"false")))
        if kind == "null":
            return self.add(_Node(_LITERALS, literals=(b"null",)))
        raise SchemaError(f"{where}.type: unknown type {kind!r}")

    def _type_list(self, schema: dict[str, Any], kinds: list[Any], where: str) -> int:
        if not kinds or any(k not in _SIMPLE_TYPES for k in kinds):
            raise SchemaError(f"{where}.type: expected types from {_SIMPLE_TYPES}, got {kinds}")
        if "integer" in kinds and "number" in kinds:
            kinds = [k for k in kinds if k != "integer"]
        nodes = [self._typed(schema, k, where) for k in dict.fromkeys(kinds)]
        return self._join(nodes, f"{where}.type")

    def _object(self, schema: dict[str, Any], where: str) -> int:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaError(f"{where}.properties: must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or any(r not in props for r in required):
            raise SchemaError(f"{where}.required: must list names from properties")
        if not props:
            extra = schema.get("additionalProperties", True)
            if extra is False:
                return self.add(_Node(_OBJECT))  # only {}
            node = self.add(_Node(_FREE_OBJECT))
            self.nodes[node].item = self.compile(extra, f"{where}.additionalProperties")
            return node
        node = self.add(_Node(_OBJECT))
        keys = tuple(json.dumps(name, ensure_ascii=False).encode() for name in props)
        values = tuple(self.compile(s, f"{where}.properties.{name}") for name, s in props.items())
        target = self.nodes[node]
        target.keys, target.values = keys, values
        target.required = tuple(name in required for name in props)
        return node

    def _string(self, schema: dict[str, Any], where: str) -> int:
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if not _count(low) or (high is not None and not _count(high)):
            raise SchemaError(f"{where}: minLength and maxLength must be non-negative integers")
        if high is not None and high < low:
            raise SchemaError(f"{where}: maxLength is below minLength")
        patterns = []
        if "pattern" in schema:
            if not isinstance(schema["pattern"], str):
                raise SchemaError(f"{where}.pattern: must be a string")
            patterns.append(_regex(schema["pattern"], f"{where}.pattern"))
        if "format" in schema:
            name = schema["format"]
            if name not in FORMATS:
                known = ", ".join(sorted(FORMATS))
                raise SchemaError(
                    f"{where}: JSON mode cannot enforce format {name!r} (it enforces {known})"
                )
            patterns.append(_regex(FORMATS[name], f"{where}.format"))
        if len(patterns) > 1:
            raise SchemaError(f"{where}: JSON mode cannot enforce a pattern and a format together")
        pattern = patterns[0] if patterns else None
        node = _Node(_STRING_NODE, min_length=low, max_length=high, pattern=pattern)
        room, needed = _room(node, 0)
        if pattern is not None and not pattern.viable(pattern.initial, room, needed):
            raise SchemaError(f"{where}: no string within its length matches its pattern")
        return self.add(node)

    def _array(self, schema: dict[str, Any], where: str) -> int:
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if not isinstance(low, int) or low < 0 or (high is not None and not isinstance(high, int)):
            raise SchemaError(f"{where}: minItems and maxItems must be non-negative integers")
        if high is not None and high < low:
            raise SchemaError(f"{where}: maxItems is below minItems")
        node = self.add(_Node(_ARRAY, min_items=low, max_items=high))
        self.nodes[node].item = self.compile(schema.get("items", True), f"{where}.items")
        return node

    def _literals(self, values: list[Any], where: str) -> int:
        try:
            encoded = tuple(
                dict.fromkeys(
                    json.dumps(
                        v, ensure_ascii=False, separators=(", ", ": "), allow_nan=False
                    ).encode()
                    for v in values
                )
            )
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"{where}: a value is not JSON ({exc})") from None
        return self.add(_Node(_LITERALS, literals=encoded))

    def _union(self, options: Any, where: str) -> int:
        if not isinstance(options, list) or not options:
            raise SchemaError(f"{where}: must be a non-empty list of schemas")
        nodes = [self.compile(s, f"{where}[{i}]") for i, s in enumerate(options)]
        return self._join(nodes, where)

    def _join(self, nodes: list[int], where: str) -> int:
        """One node choosing among ``nodes`` by the first byte of the value (objects: by the
        value of their first property, see `_tag_objects`)."""
        nodes = self._absorb(list(dict.fromkeys(nodes)))
        objects = [n for n in nodes if self.nodes[n].kind in _OBJECTS]
        if len(objects) > 1:
            tagged = self._tag_objects(objects, where)
            nodes = [n for n in nodes if n not in objects] + [tagged]
        if len(nodes) == 1:
            return nodes[0]
        union = self.add(_Node(_UNION))
        branches = self.nodes[union].branches
        for node in nodes:
            for b in self.nodes[node].first_bytes():
                if b in branches and branches[b] != node:
                    raise SchemaError(
                        f"{where}: two alternatives can start with {chr(b)!r}; JSON mode "
                        "needs alternatives that differ in their first character"
                    )
                branches[b] = node
        return union

    def _absorb(self, nodes: list[int]) -> list[int]:
        """``nodes`` less what another of them already allows: every string where a string
        without checks is an alternative, every number where a number without checks is
        (``int | float``, ``str | date``, an enum beside its free type), so that such unions
        need not differ in their first character. The union's instances stay the same."""
        flat: list[int] = []
        for n in nodes:  # alternatives that are unions themselves join this one
            node = self.nodes[n]
            flat.extend(dict.fromkeys(node.branches.values()) if node.kind == _UNION else [n])
        flat = list(dict.fromkeys(flat))
        free_string = any(self._unchecked(n, _STRING_NODE) for n in flat)
        free_number = any(self._unchecked(n, _NUMBER_NODE) for n in flat)
        out: list[int] = []
        for n in flat:
            node = self.nodes[n]
            if free_string and node.kind == _STRING_NODE and not self._unchecked(n, _STRING_NODE):
                continue
            if free_number and node.kind == _NUMBER_NODE and not self._unchecked(n, _NUMBER_NODE):
                continue
            if node.kind == _LITERALS and (free_string or free_number):
                kept = tuple(
                    lit
                    for lit in node.literals
                    if not (free_string and lit[:1] == b'"')
                    and not (free_number and lit[:1] in b"-0123456789")
                )
                if not kept:
                    continue
                if kept != node.literals:
                    n = self.add(_Node(_LITERALS, literals=kept))
            out.append(n)
        return out if out else nodes

    def _unchecked(self, node_id: int, kind: int) -> bool:
        """Whether the node is every string (or every number, integers included)."""
        node = self.nodes[node_id]
        if node.kind != kind:
            return False
        if kind == _STRING_NODE:
            return not node.min_length and node.max_length is None and node.pattern is None
        return not node.integer and node.bounds is None

    def _tag_objects(self, objects: list[int], where: str) -> int:
        """One node for alternative objects that all start with the same required property
        whose values are distinct literals (a tagged union, as ``{"type": "cat", ...}`` or
        ``{"type": "dog", ...}``): the literal decides which object the rest must be."""
        flat: list[int] = []
        for node_id in objects:  # a tagged union among the alternatives joins this one
            node = self.nodes[node_id]
            flat.extend(dict.fromkeys(node.tags.values()) if node.kind == _TAGGED else [node_id])
        key = self.nodes[flat[0]].keys[:1]
        tags: dict[bytes, int] = {}
        for node_id in dict.fromkeys(flat):
            node = self.nodes[node_id]
            if (
                node.kind != _OBJECT
                or not key
                or node.keys[:1] != key
                or not node.required[0]
                or self.nodes[node.values[0]].kind != _LITERALS
            ):
                raise SchemaError(
                    f"{where}: JSON mode tells alternative objects apart only by their first "
                    "property, which each must require, with its own const or enum values"
                )
            for literal in self.nodes[node.values[0]].literals:
                if any(
                    (t.startswith(literal) or literal.startswith(t)) and other != node_id
                    for t, other in tags.items()
                ):
                    raise SchemaError(
                        f"{where}: the alternatives' {key[0].decode()} values overlap "
                        f"({literal.decode()})"
                    )
                tags[literal] = node_id
        tag = self.add(_Node(_LITERALS, literals=tuple(tags)))
        return self.add(_Node(_TAGGED, keys=key, values=(tag,), required=(True,), tags=tags))

    def _ref(self, ref: Any, where: str) -> int:
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise SchemaError(f"{where}.$ref: only local references (#/...) are supported")
        if ref in self.refs:
            return self.refs[ref]
        target: Any = self.root
        for part in ref[2:].split("/") if ref != "#" else ():
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise SchemaError(f"{where}.$ref: {ref} does not resolve")
            target = target[part]
        # Reserve the node first, so that a schema may refer to itself.
        placeholder = self.add(_Node(_UNION))
        self.refs[ref] = placeholder
        compiled = self.compile(target, ref)
        self.nodes[placeholder] = self.nodes[compiled]
        return placeholder


@lru_cache(maxsize=256)
def _compiled_regex(pattern: str) -> Regex:
    return Regex(pattern)


def _regex(pattern: str, where: str) -> Regex:
    try:
        return _compiled_regex(pattern)
    except RegexError as exc:
        raise SchemaError(f"{where}: JSON mode cannot enforce {exc}") from None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bounds(schema: dict[str, Any], integer: bool, where: str) -> NumberBounds | None:
    """The range a number schema sets, the tighter of ``minimum`` and ``exclusiveMinimum``
    (and of the maxima) where both are given, and of an integer ``format`` (OpenAPI's int32 and
    int64, and their kin); None without one."""
    fmt = schema.get("format")
    if fmt is not None and fmt not in _NUMBER_FORMATS:
        known = ", ".join(sorted(_NUMBER_FORMATS))
        raise SchemaError(
            f"{where}: JSON mode cannot enforce format {fmt!r} on numbers (it enforces {known})"
        )
    width = _NUMBER_FORMATS.get(fmt)
    if width is not None:
        low_int, high_int = width
        # The format's range joins the schema's own (which is checked below).
        schema = {**schema}
        for word, limit, tighter in (("minimum", low_int, max), ("maximum", high_int, min)):
            value = schema.get(word)
            if value is None:
                schema[word] = limit
            elif _is_number(value):
                schema[word] = tighter(value, limit)
    if not _RANGE & set(schema):
        return None
    values: dict[str, Fraction] = {}
    for word in sorted(_RANGE & set(schema)):
        value = schema[word]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise SchemaError(f"{where}.{word}: must be a finite number")
        values[word] = Fraction(value) if isinstance(value, int) else Fraction(repr(value))
    low, low_open = values.get("minimum"), False
    if "exclusiveMinimum" in values and (low is None or values["exclusiveMinimum"] >= low):
        low, low_open = values["exclusiveMinimum"], True
    high, high_open = values.get("maximum"), False
    if "exclusiveMaximum" in values and (high is None or values["exclusiveMaximum"] <= high):
        high, high_open = values["exclusiveMaximum"], True
    bounds = NumberBounds(low, high, low_open, high_open, integer)
    empty = False
    if integer:
        lowest, highest = bounds.integer_range()
        empty = lowest is not None and highest is not None and lowest > highest
    elif low is not None and high is not None:
        empty = low > high or (low == high and (low_open or high_open))
    if empty:
        raise SchemaError(f"{where}: no {'integer' if integer else 'number'} is in its range")
    return bounds


@lru_cache(maxsize=64)
def compile_schema(schema_json: str | None) -> JsonProgram:
    """The program for a JSON Schema given as JSON text; None: any JSON object.

    Raises:
        SchemaError: the schema is not JSON, uses what JSON mode cannot enforce, or its root
            is neither an object nor an array (a bare number would have no end).
    """
    if schema_json is None:
        compiler = _Compiler(None)
        return JsonProgram(compiler.nodes, compiler.nodes[compiler.any].branches[0x7B])
    try:
        schema = json.loads(schema_json)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"the schema is not valid JSON: {exc}") from None
    compiler = _Compiler(schema)
    root = compiler.compile(schema, "schema")
    if not compiler.nodes[root].first_bytes() <= _ROOT_OPENERS:
        raise SchemaError("schema: the root must be an object or an array schema")
    return JsonProgram(compiler.nodes, root)


#: The program of ``response_format={"type": "json_object"}``.
JSON_OBJECT: JsonProgram = compile_schema(None)


# -- token masks -------------------------------------------------------------------------------


def _is_plain(data: bytes) -> bool:
    """Whole UTF-8 characters that a string takes as they are and that keep it open."""
    if not data or any(b < 0x20 or b in (_QUOTE, _BACKSLASH) for b in data):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class JsonVocabulary:
    """A tokenizer's vocabulary prepared for mask computation; shared by every grammar.

    ``token_bytes[i]`` is the text of token ``i`` as UTF-8 bytes; empty for special tokens,
    which JSON mode never samples.
    """

    def __init__(self, token_bytes: Sequence[bytes]) -> None:
        self.size = len(token_bytes)
        self.bytes = list(token_bytes)
        self.order = sorted((i for i, t in enumerate(self.bytes) if t), key=self.bytes.__getitem__)
        self.sorted = [self.bytes[i] for i in self.order]
        self.plain = torch.tensor([_is_plain(t) for t in self.bytes], dtype=torch.bool)
        self.special = [i for i, t in enumerate(self.bytes) if t and not _is_plain(t)]
        #: Characters in each plain token (0 for the others), for strings of bounded length.
        self.chars = torch.tensor(
            [len(t.decode()) if _is_plain(t) else 0 for t in self.bytes], dtype=torch.int32
        )
        #: Bytes in the longest token: no token adds more characters than this.
        self.longest = max((len(t) for t in self.bytes), default=0)

    def walk(self, step: Callable[[_S, int], _S | None], start: _S) -> list[int]:
        """Ids of the tokens whose bytes ``step`` takes one by one from ``start`` (None: a
        byte it refuses), in one pass over the sorted vocabulary: tokens that share a prefix
        share its steps, and every token past a refused prefix is skipped at once."""
        ordered, order = self.sorted, self.order
        allowed: list[int] = []
        states: list[_S] = [start]  # states[d]: after the first d bytes of ``previous``
        previous = b""
        k, n = 0, len(ordered)
        while k < n:
            data = ordered[k]
            depth = min(_common_prefix(previous, data), len(states) - 1)
            del states[depth + 1 :]
            while depth < len(data):
                nxt = step(states[depth], data[depth])
                if nxt is None:
                    break
                states.append(nxt)
                depth += 1
            previous = data
            if depth == len(data):
                allowed.append(order[k])
                k += 1
                continue
            # Every token that starts with data[: depth + 1] fails at the same byte.
            k = self.first_after(data[: depth + 1], k + 1)
        return allowed

    def first_after(self, prefix: bytes, lo: int) -> int:
        """Index of the first sorted token that does not start with ``prefix``."""
        end = bytearray(prefix)
        while end and end[-1] == 0xFF:
            end.pop()
        if not end:
            return len(self.sorted)
        end[-1] += 1
        return bisect.bisect_left(self.sorted, bytes(end), lo=lo)


class JsonGrammar:
    """One program over one vocabulary; masks are cached per state.

    ``eos_token_ids`` end the generation once the root value is closed. With ``optional``, a
    generation may be plain text instead: the program applies only when its first non-whitespace
    byte opens the root value (how a model answers or calls a tool, as it chooses).
    Thread-compatible: the engine uses it from its one stepping thread.
    """

    def __init__(
        self,
        vocabulary: JsonVocabulary,
        eos_token_ids: Iterable[int],
        program: JsonProgram = JSON_OBJECT,
        *,
        optional: bool = False,
        cache_size: int = 256,
    ) -> None:
        self.vocab = vocabulary
        self.program = program
        self.initial = program.optional if optional else program.initial
        self._eos = sorted(set(eos_token_ids))
        self._cache: OrderedDict[JsonState, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        #: Per string node with a pattern, its automaton's numbered states.
        self._pattern_tables: dict[int, StateTables] = {}

    @property
    def vocab_size(self) -> int:
        """Number of token ids the masks cover."""
        return self.vocab.size

    def advance(self, state: JsonState, token_id: int) -> JsonState | None:
        """The state after ``token_id``; None when it may not come next (or ends the text)."""
        if not 0 <= token_id < self.vocab.size or not self.vocab.bytes[token_id]:
            return None
        return self.program.advance(state, self.vocab.bytes[token_id])

    @staticmethod
    def is_done(state: JsonState) -> bool:
        """Whether the root value is closed."""
        return state[0] == _DONE

    @staticmethod
    def is_free(state: JsonState) -> bool:
        """Whether an optional generation turned out to be plain text, which nothing limits."""
        return state[0] == _TEXT

    def allowed(self, state: JsonState) -> torch.Tensor:
        """A bool ``[vocab]`` mask of the tokens that may come next (never all false)."""
        key = self._cache_key(state)
        mask = self._cache.get(key)
        if mask is not None:
            self._cache.move_to_end(key)
            return mask
        mask = self._compute(state)
        self._cache[key] = mask
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return mask

    def _cache_key(self, state: JsonState) -> JsonState:
        """``state``, or for a string of bounded length, what its mask depends on: no token
        adds more than `JsonVocabulary.longest` characters, so the characters still allowed
        and still needed matter only up to that many (and every count below the limit by
        more shares one mask); with a pattern, up to that many more than the pattern's
        `Regex.horizon`, since whether the match can still be completed after a token
        depends on the room left after it."""
        mode, stack, detail, ws = state
        if mode != _BOUNDED_STRING:
            return state
        node_id, count, where, bits, matched = detail
        node = self.program.nodes[node_id]
        cap = self.vocab.longest + 1
        if node.pattern is not None and matched is not None:
            cap += node.pattern.horizon
        room = cap if node.max_length is None else min(node.max_length - count, cap)
        needed = min(max(node.min_length - count, 0), cap)
        return (mode, stack, (node_id, room, needed, where, bits, matched, "bounded"), ws)

    def _compute(self, state: JsonState) -> torch.Tensor:
        mask = torch.zeros(self.vocab.size, dtype=torch.bool)
        if state[0] == _DONE:
            mask[self._eos] = True
            return mask
        if state[0] == _TEXT:
            return mask.logical_not_()
        wholesale = self._wholesale(state)
        if wholesale is not None:
            passing, rest = wholesale
            mask |= passing
            advance, vocab_bytes = self.program.advance, self.vocab.bytes
            mask[[i for i in rest if advance(state, vocab_bytes[i])]] = True
        else:
            mask[self.vocab.walk(self.program.step, state)] = True
            if state[0] == _MAYBE:
                mask[self._eos] = True  # an empty answer is plain text too
        if not bool(mask.any()):
            # A vocabulary without the single bytes this state needs: end rather than stall.
            log.warning("json_mode_dead_end", state=repr(state))
            mask[self._eos] = True
        return mask

    def _wholesale(self, state: JsonState) -> tuple[torch.Tensor, list[int]] | None:
        """Inside a string, between characters: the tokens that pass as a whole (a mask) and
        the few to step through one by one; None where one walk of the vocabulary is better.

        A free string takes every plain token (whole characters, no quote or backslash), within
        its length limit. Inside a pattern, the plain tokens are run through the pattern's
        automaton together (`inferno_inference.token_runs`), each character within the length
        bounds and leaving a match possible, and the few others (quotes, escapes, pieces of
        characters) are stepped one by one; where few characters may come next, a walk."""
        vocab = self.vocab
        if state[0] == _STRING:
            return (vocab.plain, vocab.special) if state[2] < 2 else None
        if state[0] != _BOUNDED_STRING:
            return None
        node_id, count, where, _, matched = state[2]
        node = self.program.nodes[node_id]
        pattern = node.pattern
        if where != _CHAR_NEXT:
            return None
        if pattern is None or matched is None or pattern.universal(matched):
            if node.max_length is None:
                return vocab.plain, vocab.special
            return vocab.plain & (vocab.chars <= node.max_length - count), vocab.special
        tables = self._pattern_tables.get(node_id)
        if tables is None:
            tables = self._pattern_tables[node_id] = StateTables(pattern)
        if tables.narrow(matched):
            return None  # few characters may come next: the walk skips the rest at once
        chars = token_chars(vocab)
        runs = tables.run(matched, chars, self._length_check(node, count))
        passing = torch.zeros(vocab.size, dtype=torch.bool)
        ids = chars.ids[torch.from_numpy(runs)]
        passing[ids[vocab.plain[ids]]] = True  # a quote or backslash means something else
        return passing, vocab.special

    def _length_check(
        self, node: _Node, count: int
    ) -> Callable[[frozenset[int], int], bool] | None:
        """What a bounded string with ``count`` characters asks of its pattern's state after
        k more (as `JsonProgram._char` does one character at a time); None: only life."""
        pattern = node.pattern
        assert pattern is not None
        if node.max_length is None and node.min_length <= count:
            return None

        def keep(state: frozenset[int], k: int) -> bool:
            room, needed = _room(node, count + k)
            if room < 0:
                return False
            if node.max_length is None and not needed:
                return True
            return pattern.viable(state, room, needed)

        return keep


class JsonConstraint:
    """One choice's position in a grammar: the mask for its next token, advanced per token."""

    __slots__ = ("grammar", "state")

    def __init__(self, grammar: JsonGrammar) -> None:
        self.grammar = grammar
        self.state: JsonState | None = grammar.initial

    def allowed(self) -> torch.Tensor | None:
        """The tokens that may come next; None when any may (optional JSON became text)."""
        state = self.state
        if state is None:  # only after an end token, after which the choice is over: end again
            return self.grammar.allowed(_FINISHED)
        return None if self.grammar.is_free(state) else self.grammar.allowed(state)

    def advance(self, token_id: int) -> None:
        """Move past ``token_id``."""
        if self.state is not None:
            self.state = self.grammar.advance(self.state, token_id)

    def advance_bytes(self, data: bytes) -> None:
        """Move past ``data`` (part of a token, see `inferno_inference.reasoning`); bytes the
        grammar refuses end the output, as a refused token would."""
        if self.state is not None:
            self.state = self.grammar.program.advance(self.state, data)

    @property
    def done(self) -> bool:
        """Whether the root value is complete."""
        return self.state is not None and self.grammar.is_done(self.state)
