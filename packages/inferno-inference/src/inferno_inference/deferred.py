"""Constraints that wait for a closing text: a reasoning model thinks freely, then answers in
JSON or with one of the choices.

A model such as Qwen3 writes ``<think> ... </think>`` before its answer. Holding the whole
output to a JSON schema from its first token would forbid the thinking (and change what the
model answers). `DeferredConstraint` lets every token through until the output has spelled
the closing text (``SamplingParams.constraint_after``), then hands the rest of the output to
the JSON or choice constraint, as if the answer were the whole output.

With an opener (``SamplingParams.constraint_after_opener``), the wait holds only when the
output opens the block: its first token must begin (after whitespace) with the opener, or it
is the answer's first token and the constraint applies from there. The first token may
therefore be either one the constraint allows or one that opens the block. A prompt that
already opened the block (DeepSeek-R1's template ends with ``<think>``) passes no opener.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch

__all__ = ["DeferredConstraint", "InnerConstraint", "opener_mask"]


class InnerConstraint(Protocol):
    """What `DeferredConstraint` defers: `inferno_inference.json_mode.JsonConstraint` or
    `inferno_inference.choice.ChoiceConstraint`."""

    def allowed(self) -> torch.Tensor | None:
        """The tokens that may come next (None: any)."""
        ...

    def advance(self, token_id: int) -> None:
        """Move past ``token_id``."""
        ...

    def advance_bytes(self, data: bytes) -> None:
        """Move past ``data``, the answer's start inside the token that closed the wait."""
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


class DeferredConstraint:
    """``inner``, applied once the output has spelled ``close`` (see the module docstring).

    ``opener`` is `opener_mask`'s mask for ``SamplingParams.constraint_after_opener`` (None:
    the output starts inside the block); ``token_bytes`` are the vocabulary's bytes.
    """

    __slots__ = ("_close", "_opener", "_phase", "_tail", "_token_bytes", "inner")

    def __init__(
        self,
        inner: InnerConstraint,
        token_bytes: Sequence[bytes],
        close: bytes,
        opener: torch.Tensor | None = None,
    ) -> None:
        self.inner = inner
        self._token_bytes = token_bytes
        self._close = close
        self._opener = opener
        self._phase: Literal["first", "waiting", "on"] = "waiting" if opener is None else "first"
        # The output's last bytes that may begin ``close`` (it can span tokens).
        self._tail = b""

    @property
    def waiting(self) -> bool:
        """Whether the constraint has not started yet."""
        return self._phase != "on"

    def allowed(self) -> torch.Tensor | None:
        """The tokens that may come next (None: any)."""
        if self._phase == "waiting":
            return None
        inner = self.inner.allowed()
        if self._phase == "on" or inner is None or self._opener is None:
            return inner
        opener, n = self._opener, inner.shape[0]
        if opener.shape[0] < n:  # masks over a vocabulary wider than the tokenizer's
            opener = torch.cat([opener, opener.new_zeros(n - opener.shape[0])])
        return inner | opener[:n]

    def advance(self, token_id: int) -> None:
        """Move past ``token_id``."""
        if self._phase == "on":
            self.inner.advance(token_id)
            return
        known = 0 <= token_id < len(self._token_bytes)
        data = self._token_bytes[token_id] if known else b""
        if self._phase == "first":
            if self._opener is None or not known or not bool(self._opener[token_id]):
                self._phase = "on"
                self.inner.advance(token_id)
                return
            self._phase = "waiting"
        buf = self._tail + data
        at = buf.find(self._close)
        if at < 0:
            self._tail = buf[-(len(self._close) - 1) :] if len(self._close) > 1 else b""
            return
        self._phase, self._tail = "on", b""
        rest = buf[at + len(self._close) :].lstrip()
        if rest:
            self.inner.advance_bytes(rest)

    @property
    def done(self) -> bool:
        """Whether the constrained answer is complete."""
        return self._phase == "on" and self.inner.done
