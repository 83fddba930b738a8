"""Choice mode: the output is exactly one of a list of strings.

A classifier's answer (``positive`` / ``negative``), a menu pick, a yes or no. Each choice is
written the way the tokenizer writes it (its canonical tokens, the only way a model saw the
word in training), so the masks form a trie over token ids: at each step the tokens allowed
are the ones that continue some choice, plus an end of sequence once the tokens so far are a
whole choice; when no longer choice goes on from there, the output is over.

Allowing any split of a choice's bytes instead would let a model start "London" with "L", a
likely first letter of many words, and then be forced through a split it never saw; with the
canonical tokens, a small model picks "Paris" among capitals where the other gives "London".
Without a tokenizer, a choice is spelled with the fewest tokens whose bytes make it up.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import torch

__all__ = ["ChoiceConstraint", "ChoiceGrammar", "NoSpellableChoiceError", "spell"]


class NoSpellableChoiceError(ValueError):
    """No choice can be written with the vocabulary's tokens."""


def spell(text: str, token_bytes: Sequence[bytes]) -> list[int] | None:
    """The fewest tokens whose bytes make up ``text``, or None when none do (empty-text
    tokens, the special ones, never count)."""
    data = text.encode()
    ids: dict[bytes, int] = {}
    for i, t in enumerate(token_bytes):
        if t and t not in ids and len(t) <= len(data) and t in data:
            ids[t] = i
    longest = max((len(t) for t in ids), default=0)
    # best[i]: (token count, last token, where it starts) of the best spelling of data[:i].
    best: list[tuple[int, int, int] | None] = [None] * (len(data) + 1)
    best[0] = (0, -1, 0)
    for end in range(1, len(data) + 1):
        for start in range(max(0, end - longest), end):
            before, current = best[start], best[end]
            token = ids.get(data[start:end])
            if before is None or token is None:
                continue
            if current is None or before[0] + 1 < current[0]:
                best[end] = (before[0] + 1, token, start)
    if best[-1] is None or not data:
        return None
    path: list[int] = []
    at = len(data)
    while at:
        step = best[at]
        assert step is not None
        path.append(step[1])
        at = step[2]
    return path[::-1]


class ChoiceGrammar:
    """The choices of one request as token sequences; masks are cached per prefix.

    Args:
        paths: each choice's token ids (empty ones are left out).
        eos_token_ids: ids that may end the output once it is a whole choice.
        vocab_size: length of the masks.

    Raises:
        NoSpellableChoiceError: no path is left.
    """

    def __init__(
        self,
        paths: Iterable[Sequence[int]],
        eos_token_ids: Iterable[int],
        vocab_size: int,
        *,
        cache_size: int = 256,
    ) -> None:
        self.vocab_size = vocab_size
        self._eos = sorted(set(eos_token_ids))
        self._next: dict[tuple[int, ...], set[int]] = {}
        self._ends: set[tuple[int, ...]] = set()
        for path in paths:
            ids = tuple(path)
            if not ids or not all(0 <= t < vocab_size for t in ids):
                continue
            for k in range(len(ids)):
                self._next.setdefault(ids[:k], set()).add(ids[k])
            self._ends.add(ids)
        if not self._ends:
            raise NoSpellableChoiceError("no choice can be written with the model's tokens")
        self._cache: OrderedDict[tuple[int, ...] | None, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size

    def is_done(self, prefix: tuple[int, ...]) -> bool:
        """``prefix`` is a whole choice and no other choice goes on from it."""
        return prefix in self._ends and prefix not in self._next

    def advance(self, prefix: tuple[int, ...], token_id: int) -> tuple[int, ...] | None:
        """The tokens after ``token_id``; None when the output ended (an end of sequence)."""
        if token_id in self._eos:
            return None
        return (*prefix, token_id)

    def allowed(self, prefix: tuple[int, ...] | None) -> torch.Tensor:
        """A bool ``[vocab]`` mask of the tokens that may follow ``prefix`` (after the end,
        the end tokens again)."""
        mask = self._cache.get(prefix)
        if mask is not None:
            self._cache.move_to_end(prefix)
            return mask
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        if prefix is None or prefix in self._ends:
            mask[self._eos] = True
        if prefix is not None:
            mask[sorted(self._next.get(prefix, ()))] = True
        if not bool(mask.any()):
            # A whole choice and no end token: the engine ends the output there
            # (`ChoiceConstraint.done`), so this step is never sampled; keep it valid.
            mask[:] = True
        self._cache[prefix] = mask
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return mask


class ChoiceConstraint:
    """One output's position in a `ChoiceGrammar`: its next-token mask, advanced per token."""

    __slots__ = ("grammar", "prefix")

    def __init__(self, grammar: ChoiceGrammar) -> None:
        self.grammar = grammar
        self.prefix: tuple[int, ...] | None = ()

    def allowed(self) -> torch.Tensor:
        """The tokens that may come next."""
        return self.grammar.allowed(self.prefix)

    def advance(self, token_id: int) -> None:
        """Move past ``token_id``."""
        if self.prefix is not None:
            self.prefix = self.grammar.advance(self.prefix, token_id)

    def advance_bytes(self, data: bytes) -> None:
        """Move past ``data`` (part of a token, see `inferno_inference.reasoning`). A choice is
        spelled by whole tokens, so text that starts one inside another token ends the output
        instead (whitespace is passed over)."""
        if data.strip() and self.prefix is not None:
            self.prefix = None

    @property
    def done(self) -> bool:
        """The output is a whole choice that no other choice extends."""
        return self.prefix is not None and self.grammar.is_done(self.prefix)
