"""GBNF grammars (llama.cpp's notation) as pushdown automata over code points.

A grammar is a list of rules, ``name ::= alternatives``; the output must be one whole
derivation of the rule ``root``. A sequence holds string literals (``"yes"``, with the escapes
``\\n \\t \\r \\\\ \\" \\xHH \\uHHHH \\UHHHHHHHH``), character classes (``[a-z]``, ``[^"\\\\]``),
``.`` (any character), rule names and parenthesized groups, each optionally followed by
``*``, ``+``, ``?`` or ``{m}``, ``{m,}``, ``{m,n}``; ``#`` starts a comment. Line breaks are
spaces: a rule ends where the next ``name ::=`` begins (which accepts every grammar llama.cpp
does, and alternatives spread over lines too).

Compiled, every rule is a list of alternatives, each a tuple of symbols (a rule number or a
character class as code-point ranges); quantifiers and groups become rules of their own. A
position is (alternative, index); a stack holds the positions to come back to, its top always
at a character class. The state of a match is the frozenset of its stacks; the empty stack
means the output so far is a whole derivation. A rule called last in an alternative replaces
its caller's frame rather than stacking on it, so repetition (``x*``, a rule that ends by
calling itself) keeps stacks short; only nesting (brackets in brackets) deepens them.

Refused with `GrammarError`: syntax errors, undefined or doubly defined rules, rules that can
never end (``a ::= "x" a``), and left recursion (``a ::= a "x" | "y"``), which a top-down
automaton cannot run; rewrite it as repetition (``a ::= "y" "x"*``). An ambiguous grammar
whose parses of one prefix outnumber `MAX_STACKS` keeps that many of them (sorted, so the same
ones each time): the output is still a derivation, though some that a full parse allows may no
longer be reachable.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache

import structlog

from inferno_inference.json_regex import (
    MAX_REPEAT,
    Ranges,
    _contains,
    _negate,
    _ranges,
    interval_starts,
)

__all__ = ["Grammar", "GrammarError", "compile_grammar"]

log = structlog.get_logger(__name__)

_MAX = 0x10FFFF
#: Most frames one stack may hold (nesting deeper than this cannot be written).
MAX_DEPTH = 256
#: Most stacks one state keeps (an ambiguous grammar multiplies them; the rest are dropped).
MAX_STACKS = 4096
#: Most symbols a compiled grammar may hold (counted repetitions copy their operand).
MAX_SYMBOLS = 100_000

Symbol = int | Ranges  # a rule number, or a character class
Position = tuple[int, int]  # (alternative, index of the symbol it is at)
Stack = tuple[Position, ...]
GrammarState = frozenset[Stack]

_ESCAPES = {"n": 0x0A, "t": 0x09, "r": 0x0D, "\\": 0x5C, '"': 0x22, "[": 0x5B, "]": 0x5D}
_ESCAPES |= {"-": 0x2D, "^": 0x5E, "/": 0x2F, "0": 0x00, "f": 0x0C, "v": 0x0B}
_HEX_WIDTH = {"x": 2, "u": 4, "U": 8}


class GrammarError(ValueError):
    """A grammar this module cannot enforce (the message says where and why)."""


@dataclass(slots=True)
class _Rules:
    """Rules under construction: alternatives of symbols, by rule number."""

    names: dict[str, int]
    alternatives: list[list[tuple[Symbol, ...]]]
    defined: set[int]
    symbols: int = 0

    def number(self, name: str) -> int:
        if name not in self.names:
            self.names[name] = len(self.alternatives)
            self.alternatives.append([])
        return self.names[name]

    def new(self, alternatives: list[tuple[Symbol, ...]]) -> int:
        self.alternatives.append(alternatives)
        self.defined.add(len(self.alternatives) - 1)
        self.symbols += sum(len(a) for a in alternatives)
        if self.symbols > MAX_SYMBOLS:
            raise GrammarError(f"the grammar builds more than {MAX_SYMBOLS} symbols")
        return len(self.alternatives) - 1


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.rules = _Rules({}, [], set())

    def error(self, what: str) -> GrammarError:
        line = self.text.count("\n", 0, self.pos) + 1
        column = self.pos - (self.text.rfind("\n", 0, self.pos) + 1) + 1
        return GrammarError(f"grammar: {what} (line {line}, column {column})")

    def space(self) -> None:
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif ch.isspace():
                self.pos += 1
            else:
                return

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def name(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and (
            self.text[self.pos].isalnum() or self.text[self.pos] in "-_"
        ):
            self.pos += 1
        return self.text[start : self.pos]

    def at_definition(self) -> bool:
        """Whether a ``name ::=`` starts here (which ends the rule before it)."""
        saved = self.pos
        try:
            if not self.name():
                return False
            self.space()
            return self.text.startswith("::=", self.pos)
        finally:
            self.pos = saved

    def parse(self) -> _Rules:
        self.space()
        while self.pos < len(self.text):
            name = self.name()
            if not name:
                raise self.error(f"expected a rule name, found {self.peek()!r}")
            self.space()
            if not self.text.startswith("::=", self.pos):
                raise self.error(f"expected '::=' after {name!r}")
            self.pos += 3
            number = self.rules.number(name)
            if number in self.rules.defined:
                raise self.error(f"rule {name!r} is defined twice")
            self.rules.defined.add(number)
            self.rules.alternatives[number] = self.alternatives(nested=False)
            self.space()
        return self.rules

    def alternatives(self, *, nested: bool) -> list[tuple[Symbol, ...]]:
        options = [self.sequence(nested=nested)]
        while self.peek() == "|":
            self.pos += 1
            options.append(self.sequence(nested=nested))
        return options

    def sequence(self, *, nested: bool) -> tuple[Symbol, ...]:
        items: list[Symbol] = []
        while True:
            self.space()
            ch = self.peek()
            if ch in ("", "|") or (ch == ")" and nested) or (not nested and self.at_definition()):
                return tuple(items)
            if ch == ")":
                raise self.error("an unopened ')'")
            items.extend(self.quantified(self.atom()))

    def atom(self) -> Symbol:
        ch = self.peek()
        if ch == '"':
            self.pos += 1
            chars: list[Symbol] = []
            while True:
                if self.pos >= len(self.text):
                    raise self.error("an unterminated string")
                ch = self.text[self.pos]
                if ch == '"':
                    self.pos += 1
                    break
                cp = self.char()
                chars.append(((cp, cp),))
            if len(chars) == 1:
                return chars[0]
            return self.rules.new([tuple(chars)])  # "" is an empty sequence
        if ch == "[":
            self.pos += 1
            return self.char_class()
        if ch == ".":
            self.pos += 1
            return ((0, _MAX),)
        if ch == "(":
            self.pos += 1
            options = self.alternatives(nested=True)
            self.space()
            if self.peek() != ")":
                raise self.error("an unclosed '('")
            self.pos += 1
            return self.rules.new(options)
        name = self.name()
        if not name:
            raise self.error(f"unexpected {ch!r}")
        return self.rules.number(name)

    def char(self) -> int:
        """One character of a literal or class, escapes decoded."""
        ch = self.text[self.pos]
        self.pos += 1
        if ch != "\\":
            return ord(ch)
        if self.pos >= len(self.text):
            raise self.error("an escape at the end")
        kind = self.text[self.pos]
        self.pos += 1
        if kind in _ESCAPES:
            return _ESCAPES[kind]
        width = _HEX_WIDTH.get(kind)
        if width is None:
            raise self.error(f"the escape \\{kind} is not supported")
        digits = self.text[self.pos : self.pos + width]
        self.pos += width
        try:
            cp = int(digits, 16) if len(digits) == width else -1
        except ValueError:
            cp = -1
        if not 0 <= cp <= _MAX:
            raise self.error(f"a malformed \\{kind} escape")
        return cp

    def char_class(self) -> Ranges:
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        pairs: list[tuple[int, int]] = []
        while True:
            if self.pos >= len(self.text):
                raise self.error("an unterminated character class")
            if self.text[self.pos] == "]":
                self.pos += 1
                break
            start = self.pos
            lo = self.char()
            hi = lo
            if self.peek() == "-" and self.text[self.pos + 1 : self.pos + 2] not in ("]", ""):
                self.pos += 1
                hi = self.char()
                if hi < lo:
                    self.pos = start
                    raise self.error("a range out of order")
            pairs.append((lo, hi))
        ranges = _ranges(pairs)
        return _negate(ranges) if negated else ranges

    def quantified(self, atom: Symbol) -> list[Symbol]:
        """``atom`` as the symbols its quantifier (if any) makes of it."""
        ch = self.peek()
        if ch in ("*", "+", "?"):
            self.pos += 1
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
        elif ch == "{":
            low, high = self.braces()
        else:
            return [atom]
        if self.peek() in ("*", "+", "?", "{"):
            raise self.error("a quantifier on a quantifier; group the first one")
        out: list[Symbol] = [atom] * low
        if high is None:
            star = len(self.rules.alternatives)
            self.rules.new([(atom, star), ()])  # star ::= atom star | (empty)
            out.append(star)
        elif high > low:
            tail = self.rules.new([(atom,), ()])
            for _ in range(high - low - 1):
                tail = self.rules.new([(atom, tail), ()])
            out.append(tail)
        self.rules.symbols += len(out)
        if self.rules.symbols > MAX_SYMBOLS:
            raise GrammarError(f"the grammar builds more than {MAX_SYMBOLS} symbols")
        return out

    def braces(self) -> tuple[int, int | None]:
        end = self.text.find("}", self.pos)
        body = self.text[self.pos + 1 : end] if end > 0 else ""
        low_text, comma, high_text = (part.strip() for part in body.partition(","))
        if not low_text.isdigit() or (high_text and not high_text.isdigit()):
            raise self.error("a malformed {m,n} quantifier")
        low = int(low_text)
        high = low if not comma else int(high_text) if high_text else None
        if high is not None and high < low:
            raise self.error("a {m,n} quantifier with n below m")
        if max(low, high or 0) > MAX_REPEAT:
            raise self.error(f"a count over {MAX_REPEAT}")
        self.pos = end + 1
        return low, high


def _derivable(alternatives: list[list[tuple[Symbol, ...]]], *, terminals: bool) -> list[bool]:
    """Per rule, whether some alternative holds only rules that are themselves derivable and
    (with ``terminals``) character classes; without, an alternative with a class never
    counts (the rules that derive the empty string). A worklist: each alternative counts the
    rules it still waits for, so the work is linear in the grammar."""
    count = len(alternatives)
    done = [False] * count
    waiting: list[list[int]] = []  # per alternative: [rule, rules still to come]
    users: list[list[int]] = [[] for _ in range(count)]  # rule -> alternatives that use it
    ready: list[int] = []
    for n, options in enumerate(alternatives):
        for option in options:
            if any(not isinstance(s, int) and (not terminals or not s) for s in option):
                continue  # a class (or, always, an empty one, which nothing matches)
            rules = [s for s in option if isinstance(s, int)]
            index = len(waiting)
            waiting.append([n, len(rules)])
            for r in rules:
                users[r].append(index)
            if not rules:
                ready.append(n)
    while ready:
        n = ready.pop()
        if done[n]:
            continue
        done[n] = True
        for index in users[n]:
            waiting[index][1] -= 1
            if waiting[index][1] == 0:
                ready.append(waiting[index][0])
    return done


def _check(rules: _Rules) -> None:
    """Refuse undefined rules, rules that never end, and left recursion."""
    names = {number: name for name, number in rules.names.items()}
    missing = [names[n] for n in names if n not in rules.defined]
    if missing:
        raise GrammarError(f"grammar: rule {missing[0]!r} is used but never defined")
    if "root" not in rules.names:
        raise GrammarError("grammar: no rule 'root' (the whole output is one root)")
    count = len(rules.alternatives)

    def label(n: int) -> str:
        return repr(names[n]) if n in names else "a group or repetition"

    # Rules that can end (derive some finite string), and those that can derive nothing.
    ends = _derivable(rules.alternatives, terminals=True)
    nullable = _derivable(rules.alternatives, terminals=False)
    stuck = [n for n in range(count) if not ends[n]]
    if stuck:
        raise GrammarError(f"grammar: rule {label(stuck[0])} can never end")
    # Left corners: the rules an alternative may start with (past rules that derive nothing).
    corners: list[set[int]] = [set() for _ in range(count)]
    for n, options in enumerate(rules.alternatives):
        for option in options:
            for s in option:
                if not isinstance(s, int):
                    break
                corners[n].add(s)
                if not nullable[s]:
                    break
    color = [0] * count  # 0 unseen, 1 on the path, 2 done
    for root in range(count):
        if color[root]:
            continue
        work = [(root, iter(corners[root]))]
        color[root] = 1
        while work:
            n, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                color[n] = 2
                work.pop()
            elif color[nxt] == 1:
                raise GrammarError(
                    f"grammar: left recursion through rule {label(nxt)}; write it as "
                    "repetition (a ::= b c*)"
                )
            elif color[nxt] == 0:
                color[nxt] = 1
                work.append((nxt, iter(corners[nxt])))


class Grammar:
    """A compiled grammar: `initial`, `step` over code points, `transitions`, `accepts`.

    The same interface as `inferno_inference.json_regex.Regex`, so regex mode's masks
    (`inferno_inference.regex_mode.RegexGrammar`) work over either.
    """

    def __init__(self, text: str) -> None:
        self.pattern = text  # what a log line names
        rules = _Parser(text).parse()
        _check(rules)
        # Alternatives numbered globally, each rule's as a list of those numbers.
        self._alts: list[tuple[Symbol, ...]] = []
        self._rule_alts: list[list[int]] = []
        for options in rules.alternatives:
            self._rule_alts.append(list(range(len(self._alts), len(self._alts) + len(options))))
            self._alts.extend(options)
        self._memo: dict[tuple[GrammarState, int], GrammarState] = {}
        root = rules.names["root"]
        self.initial: GrammarState = self._settle([((a, 0),) for a in self._rule_alts[root]])
        if not self.initial:
            raise GrammarError(
                f"grammar: every derivation nests rules more than {MAX_DEPTH} deep before its "
                "first character"
            )

    def _settle(self, stacks: list[Stack]) -> GrammarState:
        """Every stack that ``stacks`` lead to once each top is at a character class (or
        the stack is empty), rules expanded; frames that would end their alternative are
        dropped first, so a rule called last takes its caller's place."""
        out: set[Stack] = set()
        seen: set[Stack] = set()
        todo = list(stacks)
        while todo:
            stack = todo.pop()
            if stack in seen:
                continue
            seen.add(stack)
            if not stack:
                out.add(stack)
                continue
            alt, i = stack[-1]
            symbols = self._alts[alt]
            if i == len(symbols):
                todo.append(stack[:-1])
                continue
            symbol = symbols[i]
            if not isinstance(symbol, int):
                out.add(stack)
                continue
            rest = (*stack[:-1], (alt, i + 1)) if i + 1 < len(symbols) else stack[:-1]
            if len(rest) >= MAX_DEPTH:
                continue  # nested deeper than any output may be
            todo.extend((*rest, (a, 0)) for a in self._rule_alts[symbol])
        if len(out) > MAX_STACKS:
            # An ambiguous grammar: keep some parses (the output stays a derivation of what
            # they allow) rather than fail the request, or the batch it steps in.
            log.warning("gbnf_parses_dropped", parses=len(out), kept=MAX_STACKS)
            return frozenset(sorted(out)[:MAX_STACKS])
        return frozenset(out)

    def _top(self, stack: Stack) -> Ranges:
        alt, i = stack[-1]
        symbol = self._alts[alt][i]
        assert not isinstance(symbol, int)
        return symbol

    def step(self, state: GrammarState, cp: int) -> GrammarState:
        """The state after code point ``cp`` (empty: no derivation goes on with it)."""
        key = (state, cp)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        moved = [
            (*stack[:-1], (stack[-1][0], stack[-1][1] + 1))
            for stack in state
            if stack and _contains(self._top(stack), cp)
        ]
        result = self._settle(moved)
        if len(self._memo) > 1 << 16:
            self._memo.clear()
        self._memo[key] = result
        return result

    def transitions(self, state: GrammarState) -> list[tuple[int, GrammarState]]:
        """The code points split where the next state changes (see `Regex.transitions`)."""
        tops = [self._top(stack) for stack in state if stack]
        return [(lo, self.step(state, lo)) for lo in interval_starts(tops)]

    def can_step(
        self, state: GrammarState, low: int, high: int, room: float = 0, needed: int = 0
    ) -> bool:
        """Whether some code point in ``[low, high]`` may come next (``room`` and
        ``needed`` are `Regex.can_step`'s, which every derivation here meets)."""
        for stack in state:
            if not stack:
                continue
            ranges = self._top(stack)
            i = bisect.bisect_left(ranges, (low, -1))
            if (i > 0 and ranges[i - 1][1] >= low) or (i < len(ranges) and ranges[i][0] <= high):
                return True
        return False

    @staticmethod
    def alive(state: GrammarState) -> bool:
        """Whether some continuation completes a derivation (every rule can end, so any
        state that holds a stack can)."""
        return bool(state)

    @staticmethod
    def accepts(state: GrammarState) -> bool:
        """Whether the output so far is a whole derivation of ``root``."""
        return () in state

    @staticmethod
    def final(state: GrammarState) -> bool:
        """Whether the output is a whole derivation that nothing may extend."""
        return state == frozenset({()})

    def matches(self, text: str) -> bool:
        """Whether ``text`` is a whole derivation of ``root``."""
        state = self.initial
        for ch in text:
            state = self.step(state, ord(ch))
            if not state:
                return False
        return self.accepts(state)


@lru_cache(maxsize=32)
def compile_grammar(text: str) -> Grammar:
    """``text`` compiled, kept for the grammars used last (raises `GrammarError`)."""
    return Grammar(text)
