"""Running a whole vocabulary through an automaton at once, for next-token masks.

Regex mode, GBNF grammars and the patterns of JSON Schema strings all need, for an automaton
state, the tokens whose characters the automaton takes one after another. Stepping 49K tokens
through Python costs tens of milliseconds a state; here the tokens that are whole characters,
sorted longest first, move one character position at a time, each group of tokens in the same
state by one vectorized lookup in that state's table of code-point intervals.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

__all__ = ["Automaton", "StateTables", "TokenChars", "token_chars"]

_MAX_CODE_POINT = 0x10FFFF
#: Most code points that may come next for which a walk of the sorted vocabulary (which skips
#: every token that fails at its first byte at once) beats running all tokens at once.
NARROW = 16
#: Most automaton states kept numbered with their tables (a grammar with nesting meets new
#: states without end; they are numbered afresh past this many).
STATES_KEPT = 1 << 16


class Automaton(Protocol):
    """What the runs step: `inferno_inference.json_regex.Regex` or
    `inferno_inference.gbnf.Grammar`. States are frozensets; the empty one is dead."""

    pattern: str
    initial: frozenset[Any]

    def step(self, state: frozenset[Any], cp: int) -> frozenset[Any]: ...
    def transitions(self, state: frozenset[Any]) -> list[tuple[int, frozenset[Any]]]: ...
    def can_step(self, state: frozenset[Any], low: int, high: int) -> bool: ...
    def alive(self, state: frozenset[Any]) -> bool: ...
    def accepts(self, state: frozenset[Any]) -> bool: ...
    def final(self, state: frozenset[Any]) -> bool: ...


class TokenChars:
    """A vocabulary's tokens as code points: ``columns[k]`` holds the k-th character of every
    token longer than k (tokens sorted longest first, so those are the first
    ``len(columns[k])`` of ``ids``)."""

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
        #: Token ids in run order (the rows of every result).
        self.ids = torch.from_numpy(np.array(ids, dtype=np.int64)[order])
        flat = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        starts = (np.cumsum(lengths) - lengths)[order]
        lengths = lengths[order]
        self.columns: list[np.ndarray] = []
        for k in range(int(lengths[0]) if len(lengths) else 0):
            n = int(np.searchsorted(-lengths, -k, side="left"))  # tokens longer than k
            self.columns.append(flat[starts[:n] + k])


class _HasBytes(Protocol):
    bytes: list[bytes]


_TOKEN_CHARS: weakref.WeakKeyDictionary[Any, TokenChars] = weakref.WeakKeyDictionary()


def token_chars(vocabulary: _HasBytes) -> TokenChars:
    """The `TokenChars` of ``vocabulary`` (anything with a ``bytes`` list of its tokens),
    built once per vocabulary object."""
    chars = _TOKEN_CHARS.get(vocabulary)
    if chars is None:
        chars = _TOKEN_CHARS[vocabulary] = TokenChars(vocabulary.bytes)
    return chars


class StateTables:
    """An automaton's live states numbered, each with its table of code-point intervals, and
    the vectorized run of a vocabulary over them. Thread-compatible."""

    def __init__(self, automaton: Automaton) -> None:
        self.automaton = automaton
        self._numbers: dict[frozenset[Any], int] = {}
        self._sets: list[frozenset[Any]] = []
        self._tables: list[tuple[np.ndarray, np.ndarray] | None] = []

    def __len__(self) -> int:
        return len(self._sets)

    def number(self, state: frozenset[Any]) -> int:
        """The number of ``state`` (-1: dead, no match can follow)."""
        number = self._numbers.get(state)
        if number is None:
            if not self.automaton.alive(state):
                return -1
            number = self._numbers[state] = len(self._sets)
            self._sets.append(state)
            self._tables.append(None)
        return number

    def table(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """A state's code-point intervals (their first code points) and the number of the
        state after each."""
        table = self._tables[number]
        if table is None:
            steps = self.automaton.transitions(self._sets[number])
            lows = np.array([lo for lo, _ in steps], dtype=np.int64)
            after = np.array([self.number(nxt) for _, nxt in steps], dtype=np.int64)
            table = self._tables[number] = (lows, after)
        return table

    def narrow(self, state: frozenset[Any]) -> bool:
        """Whether at most `NARROW` code points may follow ``state``."""
        number = self.number(state)
        if number < 0:
            return True
        lows, after = self.table(number)
        highs = np.append(lows[1:], _MAX_CODE_POINT + 1)
        return int(((highs - lows) * (after >= 0)).sum()) <= NARROW

    def run(
        self,
        state: frozenset[Any],
        chars: TokenChars,
        keep: Callable[[frozenset[Any], int], bool] | None = None,
    ) -> np.ndarray:
        """Which tokens of ``chars`` (a bool per row of ``chars.ids``) the automaton takes
        whole from ``state``, every prefix leaving a live state. ``keep(state, k)``, when
        given, must also hold of the state after each token's first ``k`` characters."""
        if len(self._sets) > STATES_KEPT:  # numbers live within one run: start afresh
            self._numbers.clear()
            self._sets.clear()
            self._tables.clear()
        count, start = len(chars.ids), self.number(state)
        current = np.full(count, start, dtype=np.int64)
        alive = np.full(count, start >= 0, dtype=bool)
        for k, column in enumerate(chars.columns, start=1):
            n = len(column)
            here, live = current[:n], alive[:n]  # views: the tokens this long or longer
            if not live.any():
                break
            moved = here.copy()  # apart from ``here``: a token moves once per character
            for number in np.unique(here[live]).tolist():
                chosen = live & (here == number)
                lows, after = self.table(number)
                moved[chosen] = after[np.searchsorted(lows, column[chosen], side="right") - 1]
            live &= moved >= 0
            if keep is not None:
                for number in np.unique(moved[live]).tolist():
                    if not keep(self._sets[number], k):
                        live &= moved != number
            here[:] = moved
        return alive
