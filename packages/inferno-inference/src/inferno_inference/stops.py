"""Stop-string matching over a stream of text deltas.

Stop strings may straddle token boundaries, so text that could still become the start of a stop
string is held back until the next delta decides it; a matched stop string is cut from the
output together with anything after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["StopMatcher"]


@dataclass(slots=True)
class StopMatcher:
    """Tracks one choice's text and says what may be emitted.

    Call `push` with each decoded text delta: it returns the text that is safe to emit now and
    whether a stop string was matched. Call `flush` when the choice ends for another reason to
    get the text held back.
    """

    stops: tuple[str, ...]
    text: str = ""
    emitted: int = 0
    #: The stop string that was matched (the earliest in the text), once one was.
    matched: str | None = None
    _longest: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._longest = max((len(s) for s in self.stops), default=0)

    def push(self, delta: str) -> tuple[str, bool]:
        """Append ``delta``; return ``(text to emit, stopped)``."""
        if not self.stops:
            self.text += delta
            out = self.text[self.emitted :]
            self.emitted = len(self.text)
            return out, False
        start = max(0, len(self.text) - self._longest + 1)
        self.text += delta
        hits = [(p, s) for s in self.stops if (p := self.text.find(s, start)) >= 0]
        if hits:
            cut, self.matched = min(hits, key=lambda hit: (hit[0], -len(hit[1])))
            out = self.text[self.emitted : cut] if cut > self.emitted else ""
            self.text = self.text[:cut]
            self.emitted = len(self.text)
            return out, True
        safe = len(self.text) - self._held_back()
        out = self.text[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return out, False

    def flush(self) -> str:
        """Release the held-back text (the choice ended without a stop string)."""
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out

    def _held_back(self) -> int:
        # Longest suffix of the text that is a proper prefix of some stop string.
        tail = self.text[-(self._longest - 1) :] if self._longest > 1 else ""
        for k in range(len(tail), 0, -1):
            suffix = tail[-k:]
            if any(s.startswith(suffix) for s in self.stops):
                return k
        return 0
