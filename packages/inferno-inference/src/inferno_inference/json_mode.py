"""JSON mode: per-step token masks that keep a generation inside one JSON object.

`JsonGrammar` is a byte-level pushdown automaton for RFC 8259 JSON whose top-level value must
be an object (what OpenAI's ``response_format={"type": "json_object"}`` promises). States are
small immutable tuples, so a mask can be cached per state and shared by every request of a
vocabulary. A token is allowed in a state when each of its bytes is a legal next byte; the
end-of-sequence tokens are allowed only once the object is closed, and nothing else then.

Finding the allowed tokens walks the vocabulary sorted by bytes, reusing the automaton states
of the prefix a token shares with the one before and skipping every token under a prefix that
already failed; outside strings almost every branch fails at its first byte. Inside a string
almost every token is allowed, so tokens made of whole characters that a string takes as they
are pass wholesale, and only those with a quote, a backslash, a control byte or a piece of a
character are checked one by one. Strings are checked to be valid UTF-8 as they grow.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import structlog
import torch

__all__ = ["JsonConstraint", "JsonGrammar", "JsonState"]

log = structlog.get_logger(__name__)

#: (mode, container stack, mode detail, whitespace run). Stack entries: 0 object, 1 array.
JsonState = tuple[int, tuple[int, ...], int, int]

(
    _START,  # before the top-level object: only "{"
    _VALUE,  # a value must come (after ":" or "," in an array)
    _ARRAY_FIRST,  # after "[": a value or "]"
    _OBJECT_FIRST,  # after "{": a key or "}"
    _KEY,  # after "," in an object: a key
    _COLON,  # after a key
    _AFTER,  # after a value inside a container: "," or its closer
    _STRING,  # detail: 1 for a key, 0 for a value; + 2 per UTF-8 continuation byte due
    _ESCAPE,  # after a backslash in a string
    _UNICODE,  # detail: key flag * 8 + hex digits still due
    _LITERAL,  # detail: literal index * 8 + bytes matched
    _MINUS,  # after "-": a digit
    _ZERO,  # a leading 0: ".", "e" or the end
    _INT,  # integer digits
    _DOT,  # after ".": a digit
    _FRACTION,  # fraction digits
    _EXP,  # after "e": sign or digit
    _EXP_SIGN,  # after the exponent's sign: a digit
    _EXP_DIGITS,  # exponent digits
    _DONE,  # the object is closed
) = range(20)

_LITERALS = (b"true", b"false", b"null")
#: Continuation bytes a UTF-8 lead byte announces, by its high nibble (0xC2..0xF4 only).
_UTF8_LEAD = {0xC: 1, 0xD: 1, 0xE: 2, 0xF: 3}
_WHITESPACE = frozenset(b" \t\n\r")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrt')
_NUMBER_END = frozenset((_ZERO, _INT, _FRACTION, _EXP_DIGITS))  # modes where a number may end
_NUMBER = frozenset((_MINUS, _ZERO, _INT, _DOT, _FRACTION, _EXP, _EXP_SIGN, _EXP_DIGITS))
_STRUCTURAL = frozenset((_VALUE, _ARRAY_FIRST, _OBJECT_FIRST, _KEY, _COLON, _AFTER))

#: Longest run of whitespace between tokens: a model that loops on newlines must move on.
MAX_WHITESPACE = 64
#: Deepest nesting of objects and arrays.
MAX_DEPTH = 32
_OBJECT, _ARRAY = 0, 1
_FINISHED: JsonState = (_DONE, (), 0, 0)
_QUOTE, _BACKSLASH = 0x22, 0x5C


def _done(stack: tuple[int, ...]) -> JsonState:
    """The state after a value completes inside ``stack``."""
    return (_AFTER, stack, 0, 0) if stack else _FINISHED


def _begin_value(stack: tuple[int, ...], b: int) -> JsonState | None:
    if b == 0x7B:  # {
        return (_OBJECT_FIRST, (*stack, _OBJECT), 0, 0) if len(stack) < MAX_DEPTH else None
    if b == 0x5B:  # [
        return (_ARRAY_FIRST, (*stack, _ARRAY), 0, 0) if len(stack) < MAX_DEPTH else None
    if b == _QUOTE:
        return (_STRING, stack, 0, 0)
    if b == 0x2D:  # -
        return (_MINUS, stack, 0, 0)
    if b == 0x30:  # 0
        return (_ZERO, stack, 0, 0)
    if b in _DIGITS:
        return (_INT, stack, 0, 0)
    for index, literal in enumerate(_LITERALS):
        if b == literal[0]:
            return (_LITERAL, stack, index * 8 + 1, 0)
    return None


def _number(mode: int, stack: tuple[int, ...], b: int) -> JsonState | None:
    digit = b in _DIGITS
    if mode == _MINUS:
        return (_ZERO if b == 0x30 else _INT, stack, 0, 0) if digit else None
    if mode in (_ZERO, _INT):
        if digit and mode == _INT:
            return (_INT, stack, 0, 0)
        if b == 0x2E:  # .
            return (_DOT, stack, 0, 0)
        if b in (0x65, 0x45):  # e E
            return (_EXP, stack, 0, 0)
    elif mode in (_DOT, _FRACTION):
        if digit:
            return (_FRACTION, stack, 0, 0)
        if mode == _FRACTION and b in (0x65, 0x45):
            return (_EXP, stack, 0, 0)
    elif mode == _EXP:
        if digit:
            return (_EXP_DIGITS, stack, 0, 0)
        if b in (0x2B, 0x2D):  # + -
            return (_EXP_SIGN, stack, 0, 0)
    elif mode in (_EXP_SIGN, _EXP_DIGITS) and digit:
        return (_EXP_DIGITS, stack, 0, 0)
    if mode in _NUMBER_END:  # the number ended; the byte belongs to what follows
        return step(_done(stack), b)
    return None


def step(state: JsonState, b: int) -> JsonState | None:
    """The state after byte ``b``, or None when ``b`` cannot come next."""
    mode, stack, detail, ws = state
    if mode == _STRING:
        key, due = detail & 1, detail >> 1  # due: UTF-8 continuation bytes still to come
        if due:
            return (_STRING, stack, detail - 2, 0) if 0x80 <= b <= 0xBF else None
        if b < 0x80:
            if b == _QUOTE:
                return (_COLON, stack, 0, 0) if key else _done(stack)
            if b == _BACKSLASH:
                return (_ESCAPE, stack, key, 0)
            return state if b >= 0x20 else None
        due = _UTF8_LEAD.get(b >> 4, 0) if b >= 0xC2 and b <= 0xF4 else 0
        return (_STRING, stack, key | due << 1, 0) if due else None
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
        index, matched = divmod(detail, 8)
        literal = _LITERALS[index]
        if b != literal[matched]:
            return None
        return _done(stack) if matched + 1 == len(literal) else (mode, stack, detail + 1, 0)
    if mode in _NUMBER:
        return _number(mode, stack, b)
    if b in _WHITESPACE:
        if mode not in _STRUCTURAL or ws >= MAX_WHITESPACE:
            return None
        return (mode, stack, detail, ws + 1)
    if mode == _START:
        return (_OBJECT_FIRST, (_OBJECT,), 0, 0) if b == 0x7B else None
    if mode == _VALUE:
        return _begin_value(stack, b)
    if mode == _ARRAY_FIRST:
        return _done(stack[:-1]) if b == 0x5D else _begin_value(stack, b)
    if mode in (_OBJECT_FIRST, _KEY):
        if b == _QUOTE:
            return (_STRING, stack, 1, 0)
        return _done(stack[:-1]) if b == 0x7D and mode == _OBJECT_FIRST else None
    if mode == _COLON:
        return (_VALUE, stack, 0, 0) if b == 0x3A else None
    if mode == _AFTER:
        top = stack[-1]
        if b == 0x2C:  # ,
            return (_KEY if top == _OBJECT else _VALUE, stack, 0, 0)
        if b == (0x7D if top == _OBJECT else 0x5D):
            return _done(stack[:-1])
    return None


def advance(state: JsonState | None, data: bytes) -> JsonState | None:
    """The state after every byte of ``data``, or None as soon as one cannot come next."""
    for b in data:
        if state is None:
            return None
        state = step(state, b)
    return state


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


class JsonGrammar:
    """The JSON-object automaton over one vocabulary; masks are cached per state.

    ``token_bytes[i]`` is the text of token ``i`` as UTF-8 bytes; empty for special tokens,
    which JSON mode never samples. ``eos_token_ids`` end the generation once the object is
    closed. Thread-compatible: the engine uses it from its one stepping thread.
    """

    INITIAL: JsonState = (_START, (), 0, 0)

    def __init__(
        self,
        token_bytes: Sequence[bytes],
        eos_token_ids: Iterable[int],
        *,
        cache_size: int = 512,
    ) -> None:
        self.vocab_size = len(token_bytes)
        self._bytes = list(token_bytes)
        self._eos = sorted(set(eos_token_ids))
        self._order = sorted(
            (i for i, t in enumerate(self._bytes) if t), key=self._bytes.__getitem__
        )
        self._sorted = [self._bytes[i] for i in self._order]
        self._plain = torch.tensor([_is_plain(t) for t in self._bytes], dtype=torch.bool)
        self._special = [i for i, t in enumerate(self._bytes) if t and not _is_plain(t)]
        self._cache: OrderedDict[JsonState, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size

    def advance(self, state: JsonState, token_id: int) -> JsonState | None:
        """The state after ``token_id``; None when it may not come next (or ends the text)."""
        if not 0 <= token_id < self.vocab_size:
            return None
        return advance(state, self._bytes[token_id]) if self._bytes[token_id] else None

    def is_done(self, state: JsonState) -> bool:
        """Whether the top-level object is closed."""
        return state[0] == _DONE

    def allowed(self, state: JsonState) -> torch.Tensor:
        """A bool ``[vocab]`` mask of the tokens that may come next (never all false)."""
        mask = self._cache.get(state)
        if mask is not None:
            self._cache.move_to_end(state)
            return mask
        mask = self._compute(state)
        self._cache[state] = mask
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return mask

    def _compute(self, state: JsonState) -> torch.Tensor:
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        if state[0] == _DONE:
            mask[self._eos] = True
            return mask
        if state[0] == _STRING and state[2] < 2:  # in a string, between characters
            mask |= self._plain
            candidates = [i for i in self._special if advance(state, self._bytes[i]) is not None]
            mask[candidates] = True
        else:
            mask[self._walk(state)] = True
        if not bool(mask.any()):
            # A vocabulary without the single bytes this state needs: end rather than stall.
            log.warning("json_mode_dead_end", state=state)
            mask[self._eos] = True
        return mask

    def _walk(self, start: JsonState) -> list[int]:
        """Ids of the tokens valid from ``start``, in one pass over the sorted vocabulary."""
        allowed: list[int] = []
        states: list[JsonState] = [start]  # states[d]: after the first d bytes of ``previous``
        previous = b""
        k, n = 0, len(self._sorted)
        while k < n:
            data = self._sorted[k]
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
                allowed.append(self._order[k])
                k += 1
                continue
            # Every token that starts with data[: depth + 1] fails at the same byte.
            k = self._first_after(data[: depth + 1], k + 1)
        return allowed

    def _first_after(self, prefix: bytes, lo: int) -> int:
        """Index of the first sorted token that does not start with ``prefix``."""
        end = bytearray(prefix)
        while end and end[-1] == 0xFF:
            end.pop()
        if not end:
            return len(self._sorted)
        end[-1] += 1
        return bisect.bisect_left(self._sorted, bytes(end), lo=lo)


class JsonConstraint:
    """One choice's position in the grammar: the mask for its next token, advanced per token."""

    __slots__ = ("grammar", "state")

    def __init__(self, grammar: JsonGrammar, state: JsonState = JsonGrammar.INITIAL) -> None:
        self.grammar = grammar
        self.state: JsonState | None = state

    def allowed(self) -> torch.Tensor:
        """The tokens that may come next."""
        # None only follows an end token, after which the choice is over: end again.
        return self.grammar.allowed(self.state if self.state is not None else _FINISHED)

    def advance(self, token_id: int) -> None:
        """Move past ``token_id``."""
        if self.state is not None:
            self.state = self.grammar.advance(self.state, token_id)

    @property
    def done(self) -> bool:
        """Whether the object is complete."""
        return self.state is not None and self.grammar.is_done(self.state)
