"""Stop-string matching over a stream of text deltas.

Stop strings may straddle token boundaries, so text that could still become the start of a stop
string is held back until the next delta decides it; a matched stop string is cut from the
output together with anything after it.

Each delta may carry a mark (the engine passes the token's log-probability). A mark is released
with its text: once all of that text is emitted, or, when a stop string is matched, if any of
its text comes before the cut. So the marks that come out describe exactly the text that does,
and the tokens of a stop string leave no trace in a stream of log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["StopMatcher"]

M = TypeVar("M")


@dataclass(slots=True)
class StopMatcher(Generic[M]):
    """Tracks one choice's text and says what may be emitted.

    Call `push` with each decoded text delta: it returns the text that is safe to emit now and
    whether a stop string was matched. Call `flush` when the choice ends for another reason to
    get the text held back. `take_marks` returns the marks released since it was last called.
    """

    stops: tuple[str, ...]
    text: str = ""
    emitted: int = 0
    #: The stop string that was matched (the earliest in the text), once one was.
    matched: str | None = None
    _longest: int = field(init=False, default=0)
    #: Marks not yet released, with the span of their delta in ``text``.
    _pending: list[tuple[int, int, M]] = field(init=False, default_factory=list)
    _released: list[M] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._longest = max((len(s) for s in self.stops), default=0)

    def push(self, delta: str, mark: M | None = None) -> tuple[str, bool]:
        """Append ``delta`` (with its ``mark``, if any); return ``(text to emit, stopped)``."""
        if not self.stops:
            self.text += delta
            out = self.text[self.emitted :]
            self.emitted = len(self.text)
            if mark is not None:
                self._released.append(mark)
            return out, False
        start = max(0, len(self.text) - self._longest + 1)
        if mark is not None:
            self._pending.append((len(self.text), len(self.text) + len(delta), mark))
        self.text += delta
        hits = [(p, s) for s in self.stops if (p := self.text.find(s, start)) >= 0]
        if hits:
            cut, self.matched = min(hits, key=lambda hit: (hit[0], -len(hit[1])))
            out = self.text[self.emitted : cut] if cut > self.emitted else ""
            self.text = self.text[:cut]
            self.emitted = len(self.text)
            self._released.extend(m for begin, _, m in self._pending if begin < cut)
            self._pending.clear()
            return out, True
        safe = len(self.text) - self._held_back()
        out = self.text[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        self._release()
        return out, False

    def flush(self) -> str:
        """Release the held-back text (the choice ended without a stop string)."""
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        self._released.extend(m for _, _, m in self._pending)
        self._pending.clear()
        return out

    def take_marks(self) -> list[M]:
        """The marks released since the last call, in the order they were pushed."""
        out, self._released = self._released, []
        return out

    def _release(self) -> None:
        # Up to the last mark whose text is all out. A mark of an empty delta (a token that
        # ended inside a character) waits for the next one: its bytes belong to the text that
        # follows, which may be the start of a stop string.
        k = 0
        for i, (begin, end, _) in enumerate(self._pending):
            if end > self.emitted:
                break
            if end > begin:
                k = i + 1
        if k:
            self._released.extend(m for _, _, m in self._pending[:k])
            del self._pending[:k]

    def _held_back(self) -> int:
        # Longest suffix of the text that is a proper prefix of some stop string.
        tail = self.text[-(self._longest - 1) :] if self._longest > 1 else ""
        for k in range(len(tail), 0, -1):
            suffix = tail[-k:]
            if any(s.startswith(suffix) for s in self.stops):
                return k
        return 0
