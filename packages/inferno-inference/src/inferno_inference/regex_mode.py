"""Regex mode: the output is one whole match of a regular expression.

A phone number, a date, an identifier of a known shape, a short answer from a pattern such as
``(yes|no), because .{1,80}``. The pattern is the syntax `inferno_inference.json_regex`
parses (characters, classes, groups, alternation, quantifiers), matched against the whole
output as vLLM's ``guided_regex`` is: ``^`` and ``$`` add nothing.

A state is the set of live NFA states and the bytes of a character not yet complete (a token
may end inside a multi-byte character, as byte-fallback tokens do). A mask is computed for all
tokens at once: the tokens that are whole characters, sorted longest first, are run through
the automaton one character position at a time, each group of tokens in the same state moved
by a vectorized lookup in that state's table of code-point intervals; the few tokens that end
or begin inside a character are stepped byte by byte. Masks are cached per state and the
grammar is kept per pattern, so requests that share a pattern share masks. An end of sequence
is allowed once the output matches; once no longer match is possible the output ends there.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import structlog
import torch

from inferno_inference.json_mode import JsonVocabulary

__all__ = ["Automaton", "RegexConstraint", "RegexGrammar", "RegexState"]

log = structlog.get_logger(__name__)

#: The automaton's state (live NFA states, or a grammar's parse stacks), and the leading
#: bytes of an unfinished character.
RegexState = tuple[frozenset[Any], bytes]


class Automaton(Protocol):
    """What the masks run: `inferno_inference.json_regex.Regex` (a whole-output pattern) or
    `inferno_inference.gbnf.Grammar`. States are frozensets; the empty one is dead."""

    pattern: str
    initial: frozenset[Any]

    def step(self, state: frozenset[Any], cp: int) -> frozenset[Any]: ...
    def transitions(self, state: frozenset[Any]) -> list[tuple[int, frozenset[Any]]]: ...
    def can_step(self, state: frozenset[Any], low: int, high: int) -> bool: ...
    def alive(self, state: frozenset[Any]) -> bool: ...
    def accepts(self, state: frozenset[Any]) -> bool: ...
    def final(self, state: frozenset[Any]) -> bool: ...


#: Most code points that may come next for which a walk of the sorted vocabulary (which skips
#: every token that fails at its first byte at once) beats running all tokens at once.
_NARROW = 16
_MAX_CODE_POINT = 0x10FFFF
#: Most automaton states a grammar keeps numbered with their tables (a grammar with nesting
#: meets new states without end; they are numbered afresh past this many).
_STATES_KEPT = 1 << 16


def _utf8_length(lead: int) -> int:
    """Bytes in the character ``lead`` starts (0: not a lead byte)."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


#: The fewest code point a character of 1, 2, 3 and 4 bytes encodes (shorter is overlong).
_SMALLEST = (0, 0, 0x80, 0x800, 0x10000)


def _code_point_span(prefix: bytes, length: int) -> tuple[int, int]:
    """The lowest and highest code points a character of ``length`` bytes that starts with
    ``prefix`` can be, without overlong forms (empty, low above high, when it can be none;
    surrogates included: decoding refuses those)."""
    value = prefix[0] & (0x7F >> length)
    for b in prefix[1:]:
        value = (value << 6) | (b & 0x3F)
    missing = 6 * (length - len(prefix))
    low = max(value << missing, _SMALLEST[length])
    return low, min((value << missing) | ((1 << missing) - 1), _MAX_CODE_POINT)


class _TokenChars:
    """A vocabulary's tokens as code points, for running many tokens through an automaton
    at once: ``columns[k]`` holds the k-th character of every token longer than k (tokens
    sorted longest first, so those are the first ``len(columns[k])``)."""

    def __init__(self, token_bytes: Sequence[bytes]) -> None:
        ids: list[int] = []
        texts: list[str] = []
        #: Tokens that are not whole characters (a piece of one, or invalid UTF-8).
        self.partial: list[int] = []
        for i, data in enumerate(token_bytes):
            if not data:
                continue
            try:
                texts.append(data.decode("utf-8"))
                ids.append(i)
            except UnicodeDecodeError:
                self.partial.append(i)
        lengths = np.array([len(t) for t in texts], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        self.ids = torch.from_numpy(np.array(ids, dtype=np.int64)[order])
        flat = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        starts = (np.cumsum(lengths) - lengths)[order]
        lengths = lengths[order]
        self.columns: list[np.ndarray] = []
        for k in range(int(lengths[0]) if len(lengths) else 0):
            n = int(np.searchsorted(-lengths, -k, side="left"))  # tokens longer than k
            self.columns.append(flat[starts[:n] + k])


_TOKEN_CHARS: weakref.WeakKeyDictionary[JsonVocabulary, _TokenChars] = weakref.WeakKeyDictionary()


def _token_chars(vocabulary: JsonVocabulary) -> _TokenChars:
    """The vocabulary's `_TokenChars`, built once per vocabulary."""
    chars = _TOKEN_CHARS.get(vocabulary)
    if chars is None:
        chars = _TOKEN_CHARS[vocabulary] = _TokenChars(vocabulary.bytes)
    return chars


class RegexGrammar:
    """One pattern over one vocabulary; masks are cached per state.

    Thread-compatible: the engine uses it from its one stepping thread.
    """

    def __init__(
        self,
        vocabulary: JsonVocabulary,
        eos_token_ids: Iterable[int],
        regex: Automaton,
        *,
        cache_size: int = 256,
    ) -> None:
        self.vocab = vocabulary
        self.regex = regex
        self.initial: RegexState = (regex.initial, b"")
        self._eos = sorted(set(eos_token_ids))
        self._cache: OrderedDict[RegexState | None, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        # Live NFA state sets met while computing masks, numbered, with their tables.
        self._numbers: dict[frozenset[Any], int] = {}
        self._sets: list[frozenset[Any]] = []
        self._tables: list[tuple[np.ndarray, np.ndarray] | None] = []

    @property
    def vocab_size(self) -> int:
        """Number of token ids the masks cover."""
        return self.vocab.size

    def step(self, state: RegexState, byte: int) -> RegexState | None:
        """The state after one more byte; None when no match can follow it."""
        nfa, pending = state
        data = pending + bytes((byte,))
        length = _utf8_length(data[0])
        if length == 0 or (pending and not 0x80 <= byte <= 0xBF):
            return None
        if len(data) < length:
            low, high = _code_point_span(data, length)
            if low > high or not self.regex.can_step(nfa, low, high):
                return None
            return (nfa, data)
        try:
            cp = ord(data.decode("utf-8"))
        except UnicodeDecodeError:
            return None
        after = self.regex.step(nfa, cp)
        return (after, b"") if self.regex.alive(after) else None

    def advance_bytes(self, state: RegexState, data: bytes) -> RegexState | None:
        """The state after ``data``; None when no match can follow it."""
        current: RegexState | None = state
        for byte in data:
            if current is None:
                return None
            current = self.step(current, byte)
        return current

    def advance(self, state: RegexState, token_id: int) -> RegexState | None:
        """The state after ``token_id``; None when it may not come next (or ends the text)."""
        if not 0 <= token_id < self.vocab.size or not self.vocab.bytes[token_id]:
            return None
        return self.advance_bytes(state, self.vocab.bytes[token_id])

    def accepts(self, state: RegexState) -> bool:
        """Whether the output so far is a whole match."""
        return not state[1] and self.regex.accepts(state[0])

    def is_done(self, state: RegexState) -> bool:
        """Whether the output is a match that no longer one extends."""
        return not state[1] and self.regex.final(state[0])

    def allowed(self, state: RegexState | None) -> torch.Tensor:
        """A bool ``[vocab]`` mask of the tokens that may come next (never all false; after
        the end, the end tokens again)."""
        mask = self._cache.get(state)
        if mask is not None:
            self._cache.move_to_end(state)
            return mask
        mask = self._compute(state)
        self._cache[state] = mask
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return mask

    def _compute(self, state: RegexState | None) -> torch.Tensor:
        mask = torch.zeros(self.vocab.size, dtype=torch.bool)
        if state is None:
            mask[self._eos] = True
            return mask
        if state[1] or self._narrow(state[0]):
            # Inside a character, or where few characters may come next: few tokens start
            # that way, and the walk skips every other token at its first byte.
            mask[self.vocab.walk(self.step, state)] = True
        else:
            chars = _token_chars(self.vocab)
            mask[chars.ids[torch.from_numpy(self._run_whole(state[0], chars))]] = True
            data = self.vocab.bytes
            pieces = [i for i in chars.partial if self.advance_bytes(state, data[i]) is not None]
            mask[pieces] = True
        if self.accepts(state):
            mask[self._eos] = True
        if not bool(mask.any()):
            # A vocabulary without the characters the pattern needs here: end, not stall.
            log.warning("regex_mode_dead_end", pattern=self.regex.pattern)
            mask[self._eos] = True
            if not self._eos:
                mask[:] = True
        return mask

    def _narrow(self, nfa: frozenset[Any]) -> bool:
        """Whether at most `_NARROW` code points may come next."""
        number = self._number(nfa)
        if number < 0:
            return True
        lows, after = self._table(number)
        highs = np.append(lows[1:], _MAX_CODE_POINT + 1)
        return int(((highs - lows) * (after >= 0)).sum()) <= _NARROW

    def _number(self, nfa: frozenset[Any]) -> int:
        """The number of a state set (-1: dead, no match can follow)."""
        number = self._numbers.get(nfa)
        if number is None:
            if not self.regex.alive(nfa):
                return -1
            number = self._numbers[nfa] = len(self._sets)
            self._sets.append(nfa)
            self._tables.append(None)
        return number

    def _table(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """A state's code-point intervals (their first code points) and the number of the
        state after each."""
        table = self._tables[number]
        if table is None:
            steps = self.regex.transitions(self._sets[number])
            lows = np.array([lo for lo, _ in steps], dtype=np.int64)
            after = np.array([self._number(nxt) for _, nxt in steps], dtype=np.int64)
            table = self._tables[number] = (lows, after)
        return table

    def _run_whole(self, nfa: frozenset[Any], chars: _TokenChars) -> np.ndarray:
        """Which whole-character tokens (in ``chars.ids`` order) may follow ``nfa``."""
        if len(self._sets) > _STATES_KEPT:  # numbers live within one run: start afresh
            self._numbers.clear()
            self._sets.clear()
            self._tables.clear()
        count, start = len(chars.ids), self._number(nfa)
        current = np.full(count, start, dtype=np.int64)
        alive = np.full(count, start >= 0, dtype=bool)
        for column in chars.columns:
            n = len(column)
            here, live = current[:n], alive[:n]  # views: the tokens this long or longer
            if not live.any():
                break
            moved = here.copy()  # apart from ``here``: a token moves once per character
            for number in np.unique(here[live]).tolist():
                chosen = live & (here == number)
                lows, after = self._table(number)
                moved[chosen] = after[np.searchsorted(lows, column[chosen], side="right") - 1]
            live &= moved >= 0
            here[:] = moved
        return alive


class RegexConstraint:
    """One output's position in a `RegexGrammar`: its next-token mask, advanced per token."""

    __slots__ = ("grammar", "state")

    def __init__(self, grammar: RegexGrammar) -> None:
        self.grammar = grammar
        self.state: RegexState | None = grammar.initial

    def allowed(self) -> torch.Tensor:
        """The tokens that may come next."""
        return self.grammar.allowed(self.state)

    def advance(self, token_id: int) -> None:
        """Move past ``token_id``."""
        if self.state is not None:
            self.state = self.grammar.advance(self.state, token_id)

    def advance_bytes(self, data: bytes) -> None:
        """Move past ``data`` (part of a token, see `inferno_inference.reasoning`); bytes the
        pattern refuses end the output, as a refused token would."""
        if self.state is not None:
            self.state = self.grammar.advance_bytes(self.state, data)

    @property
    def done(self) -> bool:
        """Whether the output is a match that nothing may extend."""
        return self.state is not None and self.grammar.is_done(self.state)
