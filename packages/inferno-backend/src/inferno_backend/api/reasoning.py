"""Reasoning ("thinking") output: the text a model writes between ``<think>`` and ``</think>``
before its answer, split from the answer as vLLM's ``--reasoning-parser`` and Ollama's
``think`` do.

The rules, the same for a whole text (`split_reasoning`) and for a stream of pieces
(`ReasoningStream`, which holds back only what might still become a tag):

- Where the output starts (`ThinkStart`, read from the rendered prompt by `think_start`):
  ``"open"`` when the prompt ends with ``<think>`` (templates such as DeepSeek-R1's open the
  block for the model), so the output starts inside the reasoning; ``"closed"`` when it ends
  with ``</think>`` (a template that closed an empty block because thinking is off), so all of
  it is the answer; ``"none"`` otherwise.
- From ``"none"``, an output whose first non-blank text is ``<think>`` opens the block; any
  other output is all answer, tags included (a stream cannot wait for a tag that may never
  come without holding back the whole answer).
- Inside the block, everything up to ``</think>`` is reasoning, without the whitespace next
  to the tags; the answer is what follows, without its leading whitespace. A block that is
  never closed (the model was cut off) is all reasoning, and the answer is empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from inferno_backend.protocols import ChatTemplateLike

__all__ = [
    "THINK_END",
    "THINK_START",
    "ReasoningDelta",
    "ReasoningParser",
    "ReasoningSplit",
    "ReasoningStream",
    "ThinkStart",
    "count_reasoning_tokens",
    "parser_on",
    "split_reasoning",
    "think_start",
]

THINK_START = "<think>"
THINK_END = "</think>"

#: The daemon's setting: ``auto`` (on when the chat template writes ``</think>``), on, off.
ReasoningParser = Literal["auto", "think", "none"]
#: Where a generation starts relative to a think block (see the module docstring).
ThinkStart = Literal["open", "closed", "none"]


def parser_on(setting: ReasoningParser, template: ChatTemplateLike | None) -> bool:
    """Whether outputs of a model with ``template`` are split under ``setting``."""
    if setting == "auto":
        return template is not None and THINK_END in template.source
    return setting == "think"


def think_start(prompt: str, continued: str | None = None) -> ThinkStart:
    """Where the output of ``prompt`` starts. ``continued`` is the text of the assistant
    message the output continues (``continue_final_message``), which the prompt ends in."""
    if continued is not None:
        opened, closed = continued.rfind(THINK_START), continued.rfind(THINK_END)
        if opened > closed:
            return "open"
        return "closed" if closed >= 0 else "none"
    tail = prompt.rstrip()
    if tail.endswith(THINK_START):
        return "open"
    if tail.endswith(THINK_END):
        return "closed"
    return "none"


@dataclass(frozen=True, slots=True)
class ReasoningSplit:
    """A whole output split: its reasoning (None when there is none) and its answer."""

    reasoning: str | None
    content: str


def split_reasoning(text: str, start: ThinkStart = "none") -> ReasoningSplit:
    """``text`` (a whole generation) split into reasoning and answer."""
    if start == "closed":
        return ReasoningSplit(None, text)
    if start == "open":
        body = text
    else:
        head = text.lstrip()
        if not head.startswith(THINK_START):
            return ReasoningSplit(None, text)
        body = head[len(THINK_START) :]
    reasoning, closed, content = body.partition(THINK_END)
    return ReasoningSplit(reasoning.strip() or None, content.lstrip() if closed else "")


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """What one piece of a stream adds to the reasoning and to the answer."""

    reasoning: str = ""
    content: str = ""

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content)


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that begins ``tag`` (and is shorter than it)."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ReasoningStream:
    """One choice's stream of text pieces split as `split_reasoning` splits the whole.

    `push` each piece (with the number of tokens it holds), then call `finish` once (or mark
    the last push ``last``): the
    deltas' reasoning and content, joined, are exactly the split of the joined pieces. What
    could still turn into a tag (``<thi``), and whitespace that would be stripped if a tag
    followed, is held back until the next piece decides it.
    """

    def __init__(self, start: ThinkStart = "none") -> None:
        self._phase: Literal["undecided", "reasoning", "content"] = (
            "undecided" if start == "none" else "reasoning" if start == "open" else "content"
        )
        self._lead = start == "open"  # whitespace opening the reasoning is dropped
        self._held = ""
        self._pending = 0
        #: Tokens of the pieces up to the one that closed the block (all of them while it is
        #: open); 0 when the output has no reasoning.
        self.reasoning_tokens = 0

    @property
    def in_reasoning(self) -> bool:
        """The stream is inside the think block (or may yet open one)."""
        return self._phase != "content"

    def push(self, text: str, tokens: int = 0, *, last: bool = False) -> ReasoningDelta:
        """The reasoning and answer that ``text`` (the next piece) makes certain; with
        ``last`` (the stream ends with it), everything that is left, as `finish` gives."""
        delta = self._push(text, tokens)
        if not last:
            return delta
        rest = self.finish()
        return ReasoningDelta(delta.reasoning + rest.reasoning, delta.content + rest.content)

    def _push(self, text: str, tokens: int) -> ReasoningDelta:
        if self._phase != "content":
            self._pending += tokens
        buf, self._held = self._held + text, ""
        if self._phase == "undecided":
            head = buf.lstrip()
            if head.startswith(THINK_START):
                self._phase, self._lead = "reasoning", True
                buf = head[len(THINK_START) :]
            elif not head or THINK_START.startswith(head):
                self._held = buf
                return ReasoningDelta()
            else:
                self._phase, self._pending = "content", 0
                return ReasoningDelta(content=buf)
        if self._phase == "reasoning":
            return self._reasoning(buf)
        return ReasoningDelta(content=self._content(buf))

    def finish(self) -> ReasoningDelta:
        """What is still held back, once the stream has ended."""
        held, self._held = self._held, ""
        if self._phase == "undecided":
            self._phase = "content"
            return ReasoningDelta(content=held)
        if self._phase == "reasoning":
            self.reasoning_tokens += self._pending
            self._pending = 0
            return ReasoningDelta(reasoning="" if self._lead else held.rstrip())
        return ReasoningDelta()

    def _reasoning(self, buf: str) -> ReasoningDelta:
        if self._lead:
            buf = buf.lstrip()
            if not buf:
                return ReasoningDelta()
            self._lead = False
        at = buf.find(THINK_END)
        if at >= 0:
            self._phase, self._lead = "content", True
            self.reasoning_tokens += self._pending
            self._pending = 0
            rest = self._content(buf[at + len(THINK_END) :])
            return ReasoningDelta(buf[:at].rstrip(), rest)
        partial = _partial_tag(buf, THINK_END)
        body = buf[: len(buf) - partial]
        sure = body.rstrip()
        self._held = buf[len(sure) :]
        return ReasoningDelta(reasoning=sure)

    def _content(self, buf: str) -> str:
        if self._lead:
            buf = buf.lstrip()
            if not buf:
                return ""
            self._lead = False
        return buf


def count_reasoning_tokens(
    pieces: Sequence[str], tokens: Sequence[int], start: ThinkStart = "none"
) -> int:
    """The reasoning tokens of a finished generation given as its ``pieces`` and the number
    of ``tokens`` in each, counted as `ReasoningStream` counts them."""
    stream = ReasoningStream(start)
    for piece, count in zip(pieces, tokens, strict=True):
        stream.push(piece, count)
    stream.finish()
    return stream.reasoning_tokens
