"""An output's reasoning block: free tokens until its closing text, a budget that forces that
text, then the JSON or choice constraint for the answer.

A model such as Qwen3 writes ``<think> ... </think>`` before its answer. Holding the whole
output to a JSON schema from its first token would forbid the thinking (and change what the
model answers). `ReasoningGate` lets every token through until the output has spelled the
closing text (``SamplingParams.reasoning_end``), then hands the rest of the output to the
JSON or choice constraint, if any, as if the answer were the whole output.

With ``SamplingParams.reasoning_budget``, once the block holds that many tokens the gate
forces the closing text's tokens, so a model that would think on past ``max_tokens`` still
answers.

With an opener (``SamplingParams.reasoning_start``), the block is there only when the output
opens it: its first token must begin (after whitespace) with the opener, or it is the answer's
first token and the constraint applies from there. The first token may therefore be either
one the constraint allows or one that opens the block. A prompt that already opened the block
(DeepSeek-R1's template ends with ``<think>``) passes no opener.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch

__all__ = ["InnerConstraint", "ReasoningGate", "opener_mask"]


class InnerConstraint(Protocol):
    """What `ReasoningGate` applies to the answer: a JSON, choice or regex constraint
    (`inferno_inference.json_mode`, `inferno_inference.choice`, `inferno_inference.regex_mode`)."""

    def allowed(self) -> torch.Tensor | None:
        """The tokens that may come next (None: any)."""
        ...

    def advance(self, token_id: int) -> None:
        """Move past ``token_id``."""
        ...

    def advance_bytes(self, data: bytes) -> None:
        """Move past ``data``, the answer's start inside the token that closed the block."""
        ...

    @property
    def done(self) -> bool:
        """The answer is complete."""
        ...


def opener_mask(token_bytes: Sequence[bytes], opener: bytes) -> torch.Tensor:
    """A bool mask of the tokens whose bytes begin, after whitespace, with ``opener``."""
    mask = torch.zeros(len(token_bytes), dtype=torch.bool)
    hits = [i for i, b in enumerate(token_bytes) if b.lstrip().startswith(opener)]
    mask[hits] = True
    return mask


class ReasoningGate:
    """One output's reasoning block, then ``inner`` (None: a free answer); see the module
    docstring.

    ``close`` is the closing text; ``opener`` `opener_mask`'s mask for
    ``SamplingParams.reasoning_start`` (None: the output starts inside the block);
    ``token_bytes`` the vocabulary's bytes. After ``budget`` tokens in the block, ``forced``
    (the tokens that spell ``close``) come next, one per step.
    """

    __slots__ = (
        "_budget",
        "_close",
        "_count",
        "_forced",
        "_opener",
        "_phase",
        "_tail",
        "_token_bytes",
        "inner",
    )

    def __init__(
        self,
        inner: InnerConstraint | None,
        token_bytes: Sequence[bytes],
        close: bytes,
        opener: torch.Tensor | None = None,
        *,
        budget: int | None = None,
        forced: Sequence[int] = (),
    ) -> None:
        if budget is not None and not forced:
            raise ValueError("a reasoning budget needs the tokens that close the block")
        self.inner = inner
        self._token_bytes = token_bytes
        self._close = close
        self._opener = opener
        self._budget = budget
        self._forced = list(forced)
        self._phase: Literal["first", "reasoning", "answer"] = (
            "reasoning" if opener is None else "first"
        )
        self._count = 0  # tokens in the block so far
        # The output's last bytes that may begin ``close`` (it can span tokens).
        self._tail = b""

    @property
    def waiting(self) -> bool:
        """Whether the answer has not started yet."""
        return self._phase != "answer"

    def allowed(self) -> torch.Tensor | None:
        """The tokens that may come next (None: any)."""
        if self._phase == "reasoning":
            return self._forcing()
        inner = self.inner.allowed() if self.inner is not None else None
        if self._phase == "answer" or inner is None or self._opener is None:
            return inner
        opener, n = self._opener, inner.shape[0]
        if opener.shape[0] < n:  # masks over a vocabulary wider than the tokenizer's
            opener = torch.cat([opener, opener.new_zeros(n - opener.shape[0])])
        return inner | opener[:n]

    def _forcing(self) -> torch.Tensor | None:
        """The one token the budget forces next, as a mask; None while the budget lasts."""
        if self._budget is None or self._count < self._budget:
            return None
        at = min(self._count - self._budget, len(self._forced) - 1)
        mask = torch.zeros(max(len(self._token_bytes), self._forced[at] + 1), dtype=torch.bool)
        mask[self._forced[at]] = True
        return mask

    def advance(self, token_id: int) -> None:
        """Move past ``token_id``."""
        if self._phase == "answer":
            if self.inner is not None:
                self.inner.advance(token_id)
            return
        known = 0 <= token_id < len(self._token_bytes)
        data = self._token_bytes[token_id] if known else b""
        if self._phase == "first":
            if self._opener is None or not known or not bool(self._opener[token_id]):
                self._phase = "answer"
                if self.inner is not None:
                    self.inner.advance(token_id)
                return
            self._phase = "reasoning"
        else:
            self._count += 1
        buf = self._tail + data
        at = buf.find(self._close)
        if at < 0:
            self._tail = buf[-(len(self._close) - 1) :] if len(self._close) > 1 else b""
            return
        self._phase, self._tail = "answer", b""
        rest = buf[at + len(self._close) :].lstrip()
        if rest and self.inner is not None:
            self.inner.advance_bytes(rest)

    @property
    def done(self) -> bool:
        """Whether the constrained answer is complete (never, for a free one)."""
        return self._phase == "answer" and self.inner is not None and self.inner.done
