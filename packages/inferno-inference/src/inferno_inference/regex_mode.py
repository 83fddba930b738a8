"""Regex mode: the output is one whole match of a regular expression.

A phone number, a date, an identifier of a known shape, a short answer from a pattern such as
``(yes|no), because .{1,80}``. The pattern is the syntax `inferno_inference.json_regex`
parses (characters, classes, groups, alternation, quantifiers), matched against the whole
output as vLLM's ``guided_regex`` is: ``^`` and ``$`` add nothing.

A state is the set of live NFA states and the bytes of a character not yet complete (a token
may end inside a multi-byte character, as byte-fallback tokens do). A mask is computed for all
tokens at once: the tokens that are whole characters are run through the automaton together
(`inferno_inference.token_runs`); the few tokens that end or begin inside a character are
stepped byte by byte. Masks are cached per state and the
grammar is kept per pattern, so requests that share a pattern share masks. An end of sequence
is allowed once the output matches; once no longer match is possible the output ends there.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import structlog
import torch

from inferno_inference.json_mode import JsonVocabulary
from inferno_inference.token_runs import Automaton, StateTables, token_chars

__all__ = ["Automaton", "RegexConstraint", "RegexGrammar", "RegexState"]

log = structlog.get_logger(__name__)

#: The automaton's state (live NFA states, or a grammar's parse stacks), and the leading
#: bytes of an unfinished character.
RegexState = tuple[frozenset[Any], bytes]

_MAX_CODE_POINT = 0x10FFFF


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
        self._tables = StateTables(regex)

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
        if state[1] or self._tables.narrow(state[0]):
            # Inside a character, or where few characters may come next: few tokens start
            # that way, and the walk skips every other token at its first byte.
            mask[self.vocab.walk(self.step, state)] = True
        else:
            chars = token_chars(self.vocab)
            mask[chars.ids[torch.from_numpy(self._tables.run(state[0], chars))]] = True
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
