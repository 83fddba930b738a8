"""JSON Schema ``pattern`` and ``format``: regular expressions as automata over code points.

A pattern is an ECMA-262 regular expression that must match somewhere in the string (a search,
so an unanchored side may be followed or preceded by anything). This module parses the part of
the syntax that describes a regular language: characters, escapes (``\\d \\w \\s`` and their
negations, ``\\t \\n \\xHH \\uHHHH``, escaped punctuation), classes with ranges and negation,
``.``, groups (capturing, ``(?:``, named), alternation, the quantifiers ``* + ? {n} {n,}
{n,m}`` (lazy ones too: they match the same strings), and ``^``/``$`` at the ends of the
top-level alternatives. Anything else (look-around, back-references, word boundaries,
``\\p{...}``) raises `RegexError`.

The expression becomes a Thompson NFA whose edges carry sets of code-point ranges; its state
during a match is the frozenset of live NFA states, which the JSON automaton keeps in its own
(hashable) state, so token masks stay cacheable. `FORMATS` maps the ``format`` names JSON mode
enforces to patterns.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["FORMATS", "Regex", "RegexError", "whole_match"]

_MAX = 0x10FFFF
#: Largest automaton a pattern may build (``{n,m}`` copies its operand).
MAX_STATES = 20_000
#: Most NFA states, summed over all states, that one reaches without a character.
MAX_CLOSURE = 400_000
#: Largest count in a ``{n,m}`` quantifier.
MAX_REPEAT = 1_000
#: Most characters of room for which `Regex.viable` knows every length a match can take.
EXACT_ROOM = 256

Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint, inclusive code-point ranges


class RegexError(ValueError):
    """A pattern that is not a regular expression this module can enforce."""


def _ranges(pairs: list[tuple[int, int]]) -> Ranges:
    """``pairs`` sorted and merged."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(pairs):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _negate(ranges: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    start = 0
    for lo, hi in ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= _MAX:
        out.append((start, _MAX))
    return tuple(out)


def interval_starts(range_sets: Iterable[Ranges]) -> list[int]:
    """The first code points of the intervals that split 0..U+10FFFF where membership in any
    of ``range_sets`` changes (every code point of an interval is in the same sets)."""
    cuts = {0, _MAX + 1}
    for ranges in range_sets:
        for lo, hi in ranges:
            cuts.update((lo, hi + 1))
    return sorted(cuts)[:-1]


def _contains(ranges: Ranges, cp: int) -> bool:
    i = bisect.bisect_right(ranges, (cp, _MAX + 1)) - 1
    return i >= 0 and ranges[i][0] <= cp <= ranges[i][1]


_DIGIT: Ranges = ((0x30, 0x39),)
_WORD: Ranges = _ranges([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
_SPACE: Ranges = _ranges(
    [
        (0x09, 0x0D),
        (0x20, 0x20),
        (0xA0, 0xA0),
        (0x1680, 0x1680),
        (0x2000, 0x200A),
        (0x2028, 0x2029),
        (0x202F, 0x202F),
        (0x205F, 0x205F),
        (0x3000, 0x3000),
        (0xFEFF, 0xFEFF),
    ]
)
_CLASSES = {
    "d": _DIGIT,
    "D": _negate(_DIGIT),
    "w": _WORD,
    "W": _negate(_WORD),
    "s": _SPACE,
    "S": _negate(_SPACE),
}
_ANY: Ranges = ((0, _MAX),)
#: What ``.`` matches: everything but the line terminators.
_DOT: Ranges = _negate(_ranges([(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]))
_CONTROL_ESCAPES = {"t": 0x09, "n": 0x0A, "r": 0x0D, "f": 0x0C, "v": 0x0B}
_SYNTAX = frozenset("^$\\.*+?()[]{}|/-")


@dataclass(frozen=True, slots=True)
class _Chars:
    ranges: Ranges


@dataclass(frozen=True, slots=True)
class _Cat:
    items: tuple[_Ast, ...]


@dataclass(frozen=True, slots=True)
class _Alt:
    options: tuple[_Ast, ...]


@dataclass(frozen=True, slots=True)
class _Repeat:
    inner: _Ast
    low: int
    high: int | None


@dataclass(frozen=True, slots=True)
class _Anchor:
    end: bool  # $ (else ^)


_Ast = _Chars | _Cat | _Alt | _Repeat | _Anchor


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.pos = 0

    def error(self, what: str) -> RegexError:
        return RegexError(f"pattern {self.text!r}: {what} (at offset {self.pos})")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        if self.pos >= len(self.text):
            raise self.error("unexpected end")
        ch = self.text[self.pos]
        self.pos += 1
        return ch

    def parse(self) -> _Ast:
        node = self.alternation()
        if self.pos != len(self.text):
            raise self.error(f"unexpected {self.peek()!r}")
        return node

    def alternation(self) -> _Ast:
        options = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            options.append(self.sequence())
        return options[0] if len(options) == 1 else _Alt(tuple(options))

    def sequence(self) -> _Ast:
        items: list[_Ast] = []
        while self.peek() not in ("", "|", ")"):
            items.append(self.quantified())
        return _Cat(tuple(items))

    def quantified(self) -> _Ast:
        atom = self.atom()
        ch = self.peek()
        if ch in ("*", "+", "?"):
            self.pos += 1
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
        elif ch == "{" and (bounds := self.braces()) is not None:
            low, high = bounds
        else:
            return atom
        if isinstance(atom, _Anchor):
            raise self.error("a quantifier on an anchor")
        if self.peek() == "?":  # lazy: the same strings match
            self.pos += 1
        if self.peek() in ("*", "+", "?") or (self.peek() == "{" and self.braces() is not None):
            raise self.error("nothing to repeat")
        return _Repeat(atom, low, high)

    def braces(self) -> tuple[int, int | None] | None:
        """``{n}``, ``{n,}`` or ``{n,m}`` at the position; None (a literal brace) otherwise."""
        end = self.text.find("}", self.pos)
        if end < 0:
            return None
        body = self.text[self.pos + 1 : end]
        low_text, comma, high_text = body.partition(",")
        if not low_text.isdigit() or (high_text and not high_text.isdigit()):
            return None
        low = int(low_text)
        high = low if not comma else int(high_text) if high_text else None
        if high is not None and high < low:
            raise self.error("a {n,m} quantifier with m below n")
        if max(low, high or 0) > MAX_REPEAT:
            raise self.error(f"a count over {MAX_REPEAT}")
        self.pos = end + 1
        return low, high

    def atom(self) -> _Ast:
        ch = self.take()
        if ch == "(":
            if self.peek() == "?":
                self.pos += 1
                kind = self.take()
                if kind == "P" and self.peek() == "<":  # Python's spelling of a named group
                    kind = self.take()
                if kind == "<" and self.peek() not in ("=", "!"):
                    name_end = self.text.find(">", self.pos)
                    if name_end < 0:
                        raise self.error("an unterminated group name")
                    self.pos = name_end + 1
                elif kind != ":":
                    raise self.error("look-around is not supported")
            inner = self.alternation()
            if self.take() != ")":
                raise self.error("an unclosed group")
            return inner
        if ch == "[":
            return _Chars(self.char_class())
        if ch == ".":
            return _Chars(_DOT)
        if ch in "^$":
            return _Anchor(end=ch == "$")
        if ch == "\\":
            return _Chars(self.escape(in_class=False))
        if ch in "*+?":
            raise self.error("nothing to repeat")
        if ch == ")":
            raise self.error("an unopened group")
        return _Chars(((ord(ch), ord(ch)),))

    def escape(self, *, in_class: bool) -> Ranges:
        ch = self.take()
        if ch in _CLASSES:
            return _CLASSES[ch]
        if ch in _CONTROL_ESCAPES:
            return ((_CONTROL_ESCAPES[ch],) * 2,)
        if ch == "b" and in_class:
            return ((0x08, 0x08),)
        if ch == "0" and not self.peek().isdigit():
            return ((0, 0),)
        if ch in ("x", "u"):
            if ch == "u" and self.peek() == "{":
                end = self.text.find("}", self.pos)
                digits = self.text[self.pos + 1 : end] if end > 0 else ""
                self.pos = end + 1
            else:
                width = 2 if ch == "x" else 4
                digits = self.text[self.pos : self.pos + width]
                if len(digits) < width:
                    digits = ""
                self.pos += width
            try:
                cp = int(digits, 16)
            except ValueError:
                raise self.error(f"a malformed \\{ch} escape") from None
            if cp > _MAX:
                raise self.error("a code point past U+10FFFF")
            return ((cp, cp),)
        if ch in "bB":
            raise self.error("word boundaries are not supported")
        if ch.isdigit() or ch == "k":
            raise self.error("back-references are not supported")
        if ch in _SYNTAX or not ch.isalnum():
            return ((ord(ch), ord(ch)),)
        raise self.error(f"the escape \\{ch} is not supported")

    def char_class(self) -> Ranges:
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        pairs: list[tuple[int, int]] = []
        first = True
        while True:
            ch = self.take()
            if ch == "]" and not first:
                break
            first = False
            lo = self.class_atom(ch)
            if self.peek() == "-" and self.text[self.pos + 1 : self.pos + 2] not in ("]", ""):
                self.pos += 1
                hi = self.class_atom(self.take())
                if len(lo) != 1 or len(hi) != 1 or lo[0][0] != lo[0][1] or hi[0][0] != hi[0][1]:
                    raise self.error("a range whose end is a class")
                if hi[0][0] < lo[0][0]:
                    raise self.error("a range out of order")
                pairs.append((lo[0][0], hi[0][0]))
            else:
                pairs.extend(lo)
        ranges = _ranges(pairs)
        return _negate(ranges) if negated else ranges

    def class_atom(self, ch: str) -> Ranges:
        if ch == "\\":
            return self.escape(in_class=True)
        return ((ord(ch), ord(ch)),)


@dataclass(slots=True)
class _Nfa:
    edges: list[list[tuple[Ranges, int]]]
    epsilon: list[list[int]]

    def add(self) -> int:
        self.edges.append([])
        self.epsilon.append([])
        if len(self.edges) > MAX_STATES:
            raise RegexError(f"the pattern builds more than {MAX_STATES} states")
        return len(self.edges) - 1

    def build(self, node: _Ast, start: int) -> int:
        """Add ``node`` from ``start``; returns the state it ends in."""
        if isinstance(node, _Chars):
            end = self.add()
            if node.ranges:  # an empty class matches nothing: no edge, so no way on
                self.edges[start].append((node.ranges, end))
            return end
        if isinstance(node, _Cat):
            for item in node.items:
                start = self.build(item, start)
            return start
        if isinstance(node, _Alt):
            end = self.add()
            for option in node.options:
                branch = self.add()
                self.epsilon[start].append(branch)
                self.epsilon[self.build(option, branch)].append(end)
            return end
        if isinstance(node, _Repeat):
            for _ in range(node.low):
                start = self.build(node.inner, start)
            if node.high is None:
                loop = self.add()
                self.epsilon[start].append(loop)
                self.epsilon[self.build(node.inner, loop)].append(loop)
                return loop
            end = self.add()
            for _ in range(node.high - node.low):
                self.epsilon[start].append(end)
                start = self.build(node.inner, start)
            self.epsilon[start].append(end)
            return end
        raise RegexError("^ and $ are supported only at the ends of the pattern")


def _strip_anchors(option: _Ast) -> tuple[_Ast, bool, bool]:
    """A top-level alternative without its leading ``^`` and trailing ``$``, and whether each
    was there."""
    items = list(option.items) if isinstance(option, _Cat) else [option]
    anchored_start = bool(items) and items[0] == _Anchor(end=False)
    if anchored_start:
        items = items[1:]
    anchored_end = bool(items) and items[-1] == _Anchor(end=True)
    if anchored_end:
        items = items[:-1]
    return _Cat(tuple(items)), anchored_start, anchored_end


class Regex:
    """A compiled pattern: `initial`, `step` over code points, `accepts`, `universal`.

    States are frozensets of NFA states; the empty set is dead (nothing can match any more).
    """

    def __init__(self, pattern: str, *, full: bool = False) -> None:
        """``full``: the pattern must match the whole string, as if every alternative had
        both anchors (regex-guided output's meaning, where ``^`` and ``$`` add nothing)."""
        self.pattern = pattern
        tree = _Parser(pattern).parse()
        options = tree.options if isinstance(tree, _Alt) else (tree,)
        nfa = _Nfa([], [])
        start, self.accept = nfa.add(), nfa.add()
        # A search: an unanchored start may follow anything, an unanchored end precede it.
        # The tail loop, once reached, accepts whatever comes (see `universal`).
        self._tail = nfa.add()
        nfa.edges[self._tail].append((_ANY, self._tail))
        nfa.epsilon[self._tail].append(self.accept)
        head = nfa.add()
        nfa.edges[head].append((_ANY, head))
        for option in options:
            body, anchored_start, anchored_end = _strip_anchors(option)
            anchored_start, anchored_end = anchored_start or full, anchored_end or full
            entry = nfa.add()
            nfa.epsilon[start].append(entry)
            if not anchored_start:
                nfa.epsilon[head].append(entry)
                nfa.epsilon[start].append(head)
            end = nfa.build(body, entry)
            nfa.epsilon[end].append(self.accept if anchored_end else self._tail)
        self._edges = nfa.edges
        self._closure = []
        total = 0
        for s in range(len(nfa.edges)):
            closure = self._close(nfa, s)
            total += len(closure)
            if total > MAX_CLOSURE:
                # Optional parts repeated many times ((a?){1000}) make every state reach
                # most others without a character: matching would cost as much per step.
                raise RegexError(f"pattern {pattern[:100]!r}: too many optional parts to enforce")
            self._closure.append(closure)
        self.initial: frozenset[int] = self._closure[start]
        self._memo: dict[tuple[frozenset[int], int], frozenset[int]] = {}
        self._length_bits: list[int] | None = None
        self._shortest, self._longest = self._distances(nfa)
        finite = [d for d in (*self._shortest, *self._longest) if d < math.inf]
        #: Room or need beyond this many characters `viable` no longer tells apart: past
        #: `EXACT_ROOM` it compares only with the states' fewest and most characters to go.
        self.horizon = int(max(EXACT_ROOM, *finite))

    @staticmethod
    def _close(nfa: _Nfa, state: int) -> frozenset[int]:
        seen = {state}
        todo = [state]
        while todo:
            for nxt in nfa.epsilon[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return frozenset(seen)

    def _distances(self, nfa: _Nfa) -> tuple[list[float], list[float]]:
        """Per NFA state, the fewest and the most characters to a match (inf: no match, or no
        limit). Lengths in between may be missing (``(aa)*`` has only even ones), which
        `viable` does not see."""
        inf = math.inf
        count = len(nfa.edges)
        back: list[list[tuple[int, int]]] = [[] for _ in range(count)]  # (source, weight)
        self._back = back
        for s in range(count):
            for _, target in nfa.edges[s]:
                back[target].append((s, 1))
            for target in nfa.epsilon[s]:
                back[target].append((s, 0))
        shortest = [inf] * count
        shortest[self.accept] = 0
        queue: deque[int] = deque([self.accept])
        while queue:  # 0-1 breadth-first search back from the match
            s = queue.popleft()
            for source, weight in back[s]:
                if shortest[s] + weight < shortest[source]:
                    shortest[source] = shortest[s] + weight
                    queue.append(source) if weight else queue.appendleft(source)
        live = [shortest[s] < inf for s in range(count)]
        return shortest, self._longest_paths(nfa, live)

    def _longest_paths(self, nfa: _Nfa, live: list[bool]) -> list[float]:
        """Per NFA state, the most characters to a match: inf from a state that reaches a
        cycle through a character (on the way to a match), else the longest path, over the
        strongly connected components of the live states in the order Tarjan's algorithm
        closes them (every component a state leads to comes first). Linear in the automaton,
        so a pattern of 20,000 states compiles in well under a second."""
        inf = math.inf
        count = len(nfa.edges)
        succ: list[list[tuple[int, int]]] = [
            [(t, 1) for _, t in nfa.edges[s] if live[t]]
            + [(t, 0) for t in nfa.epsilon[s] if live[t]]
            for s in range(count)
        ]
        index = [-1] * count
        low = [0] * count
        component = [-1] * count
        on_stack = [False] * count
        stack: list[int] = []
        longest = [-inf] * count
        counter = 0
        for root in range(count):
            if not live[root] or index[root] >= 0:
                continue
            work = [(root, 0)]  # (state, next successor to visit): Tarjan without recursion
            index[root] = low[root] = counter
            counter += 1
            stack.append(root)
            on_stack[root] = True
            while work:
                s, k = work[-1]
                if k < len(succ[s]):
                    work[-1] = (s, k + 1)
                    t = succ[s][k][0]
                    if index[t] < 0:
                        index[t] = low[t] = counter
                        counter += 1
                        stack.append(t)
                        on_stack[t] = True
                        work.append((t, 0))
                    elif on_stack[t]:
                        low[s] = min(low[s], index[t])
                    continue
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[s])
                if low[s] != index[s]:
                    continue
                members = []
                while True:
                    t = stack.pop()
                    on_stack[t] = False
                    component[t] = s
                    members.append(t)
                    if t == s:
                        break
                best = 0.0 if self.accept in members else -inf
                for m in members:
                    for t, weight in succ[m]:
                        if component[t] == s:
                            if weight:
                                best = inf  # a character that leads back: no limit
                        else:
                            best = max(best, longest[t] + weight)
                for m in members:
                    longest[m] = best
        return longest

    def viable(self, state: frozenset[int], room: float, needed: int) -> bool:
        """Whether a match can be completed with at least ``needed`` and at most ``room`` more
        characters. Exact up to `EXACT_ROOM` characters of room, where the lengths a match can
        still take are known one by one; beyond, as far as the fewest and the most tell (a
        window that wide misses a length only for patterns such as ``(a{300})*``)."""
        if room <= EXACT_ROOM:
            window = ((1 << (int(room) + 1)) - 1) & ~((1 << max(needed, 0)) - 1)
            lengths = self._lengths()
            return any(lengths[s] & window for s in state)
        return any(self._shortest[s] <= room and self._longest[s] >= needed for s in state)

    def _lengths(self) -> list[int]:
        """Per NFA state, a bit set of the character counts (up to `EXACT_ROOM`) after which it
        can reach a match: bit k is set when exactly k more characters can complete one."""
        if self._length_bits is not None:
            return self._length_bits
        back = self._back

        def closure_back(states: set[int]) -> set[int]:
            seen, todo = set(states), list(states)
            while todo:
                for source, weight in back[todo.pop()]:
                    if weight == 0 and source not in seen:
                        seen.add(source)
                        todo.append(source)
            return seen

        bits = [0] * len(back)
        current = closure_back({self.accept})
        for k in range(EXACT_ROOM + 1):
            for s in current:
                bits[s] |= 1 << k
            before = {source for t in current for source, weight in back[t] if weight == 1}
            if not before:
                break
            current = closure_back(before)
        self._length_bits = bits
        return bits

    def step(self, state: frozenset[int], cp: int) -> frozenset[int]:
        """The state after code point ``cp`` (empty: no match is possible any more)."""
        key = (state, cp)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        out: set[int] = set()
        for s in state:
            for ranges, target in self._edges[s]:
                if _contains(ranges, cp):
                    out |= self._closure[target]
        result = frozenset(out)
        if len(self._memo) > 1 << 16:
            self._memo.clear()
        self._memo[key] = result
        return result

    def can_step(
        self, state: frozenset[int], low: int, high: int, room: float = math.inf, needed: int = 0
    ) -> bool:
        """Whether some code point in ``[low, high]`` keeps a match possible, within ``room``
        and ``needed`` more characters after it (see `viable`)."""
        for s in state:
            for ranges, target in self._edges[s]:
                i = bisect.bisect_left(ranges, (low, -1))
                meets = (i > 0 and ranges[i - 1][1] >= low) or (
                    i < len(ranges) and ranges[i][0] <= high
                )
                if meets and self.viable(self._closure[target], room, needed):
                    return True
        return False

    def transitions(self, state: frozenset[int]) -> list[tuple[int, frozenset[int]]]:
        """The code points split where the next state changes: ``(first code point, state
        after it)`` for each interval, in order, the last one running to U+10FFFF (an empty
        state: no match after those)."""
        edges = [edge for s in state for edge in self._edges[s]]
        out = []
        for lo in interval_starts(ranges for ranges, _ in edges):
            after: set[int] = set()
            for ranges, target in edges:
                if _contains(ranges, lo):  # every code point up to the next cut meets these
                    after |= self._closure[target]
            out.append((lo, frozenset(after)))
        return out

    def alive(self, state: frozenset[int]) -> bool:
        """Whether some continuation (perhaps none) completes a match."""
        return any(self._shortest[s] < math.inf for s in state)

    def final(self, state: frozenset[int]) -> bool:
        """Whether the string so far matches and no longer one can (nothing may follow)."""
        return self.accepts(state) and not any(
            self.alive(self._closure[target]) for s in state for _, target in self._edges[s]
        )

    def accepts(self, state: frozenset[int]) -> bool:
        """Whether the string so far matches."""
        return self.accept in state

    def universal(self, state: frozenset[int]) -> bool:
        """Whether every continuation matches (the pattern already matched, end unanchored)."""
        return self._tail in state

    def matches(self, text: str) -> bool:
        """Whether the pattern matches somewhere in ``text`` (JSON Schema's meaning)."""
        state = self.initial
        for ch in text:
            state = self.step(state, ord(ch))
            if not state:
                return False
        return self.accepts(state)


@lru_cache(maxsize=64)
def whole_match(pattern: str) -> Regex:
    """``pattern`` compiled to match whole strings (regex-guided output), kept for the
    patterns used last. Raises `RegexError` for what it cannot enforce and for a pattern no
    string matches."""
    regex = Regex(pattern, full=True)
    if not regex.alive(regex.initial):
        raise RegexError(f"pattern {pattern!r}: no string matches it")
    return regex


_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# Host names: labels of at most 47 characters with single hyphens between letters and digits
# (so never the "--" of an IDNA label), at most 5 of them, which keeps every name within the
# 253-character limit; an address's local part stays within its 64.
_LABEL = "[A-Za-z0-9]{1,11}(-[A-Za-z0-9]{1,11}){0,3}"
_HOST = f"{_LABEL}(\\.{_LABEL}){{0,4}}"
_LOCAL = "[A-Za-z0-9_%+-]{1,16}(\\.[A-Za-z0-9_%+-]{1,16}){0,2}"
_LEAP_YEAR = "([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
_DATE = (
    "([0-9]{4}-(0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])"
    "|[0-9]{4}-(0[469]|11)-(0[1-9]|[12][0-9]|30)"
    "|[0-9]{4}-02-(0[1-9]|1[0-9]|2[0-8])"
    f"|{_LEAP_YEAR}-02-29)"
)
_TIME = (
    "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)
# http(s) URIs: a host name, a port, then path segments, a query and a fragment of RFC 3986's
# characters (unreserved, percent-encoded, sub-delimiters, ":" and "@").
_PCHAR = "([A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})"
_URI = f"https?://{_HOST}(:[0-9]{{1,5}})?(/{_PCHAR}*)*(\\?({_PCHAR}|[/?])*)?(#({_PCHAR}|[/?])*)?"
#: ``format`` names JSON mode enforces, as patterns. They describe a subset of each format
#: (``T`` and ``Z`` in upper case, no leap seconds, host names of up to five labels, dot-atom
#: e-mail addresses, http and https URIs), which is what a model writes and what every
#: validator accepts.
FORMATS = {
    "date": f"^{_DATE}$",
    "time": f"^{_TIME}$",
    "date-time": f"^{_DATE}T{_TIME}$",
    "uuid": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    "ipv4": f"^({_OCTET}\\.){{3}}{_OCTET}$",
    "hostname": f"^{_HOST}$",
    "email": f"^{_LOCAL}@{_HOST}$",
    "uri": f"^{_URI}$",
}
