"""Prompt-lookup speculation: draft tokens copied from the sequence's own earlier text.

When the last few tokens of a sequence occurred before (in its prompt or in what it has
written), the tokens that followed that occurrence are a cheap guess at what comes next:
answers quote their documents, code edits repeat the code, lists repeat their pattern. The
engine computes the guessed tokens in the same forward pass as the sequence's real next
token, samples each position in turn, and keeps the guesses up to the first one the sampled
token disagrees with, plus that sampled token. Every kept token is one the sequence would
have produced without the guess, with the same parameters and the same random draws, so the
output is unchanged; a step only costs more rows. (Exactly so in fp32. In bf16 a drafted
position's logits come from the chunk kernels, which round differently from the decode
kernels, so a near-tie can go the other way, as it can when a prompt is chunked
differently.)

On a CPU a decode step reads every weight once whatever the row count, so a few more rows
cost little (the SmolLM2-135M bf16 step: about 11 ms for one row, 18 ms for five).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["NgramIndex", "NgramProposer"]


@dataclass(slots=True)
class NgramIndex:
    """The latest end position of every n-gram (of the proposer's sizes) in one sequence.

    Maintained incrementally: each call indexes only the positions added since the last one,
    so a step costs a few dictionary operations, not a scan of the context.
    """

    sizes: tuple[int, ...]
    #: Per size, the n-gram's hash -> the position right after its latest indexed occurrence.
    #: Hashes, not tuples, keep a long context's index small; a collision costs one rejected
    #: draft, never a wrong token.
    ends: dict[int, dict[int, int]] = field(default_factory=dict)
    #: Occurrences ending before this position are indexed.
    indexed_to: int = 0

    def extend(self, tokens: list[int], upto: int) -> None:
        """Index the n-grams of ``tokens`` that end at positions up to ``upto``."""
        for end in range(max(self.indexed_to, 1), upto + 1):
            for n in self.sizes:
                if end >= n:
                    self.ends.setdefault(n, {})[hash(tuple(tokens[end - n : end]))] = end
        self.indexed_to = max(self.indexed_to, upto + 1)


class NgramProposer:
    """Drafts up to ``num_tokens`` tokens for a sequence from its longest earlier match.

    The suffix of ``max_n`` tokens is looked up first, then shorter ones down to ``min_n``;
    the latest earlier occurrence wins. A match near the end of the text continues into the
    draft itself, so a repeating pattern shorter than the draft is repeated whole.
    """

    def __init__(self, num_tokens: int, *, min_n: int = 2, max_n: int = 4) -> None:
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be at least 1, got {num_tokens}")
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.num_tokens = num_tokens
        self.min_n = min_n
        self.max_n = max_n
        self._sizes = tuple(range(max_n, min_n - 1, -1))

    def new_index(self) -> NgramIndex:
        """An empty index for a new sequence."""
        return NgramIndex(self._sizes)

    def propose(self, tokens: list[int], index: NgramIndex, limit: int) -> list[int]:
        """At most ``min(limit, num_tokens)`` draft tokens to follow ``tokens`` (none when
        nothing matches). ``index`` is this sequence's, updated here."""
        k = min(limit, self.num_tokens)
        length = len(tokens)
        if k <= 0 or length < self.min_n + 1:
            return []
        # The current suffix ends at ``length``; only earlier occurrences (ending at most at
        # length - 1, so at least one token follows them) may be matched.
        index.extend(tokens, length - 1)
        for n in self._sizes:
            if n >= length:
                continue
            end = index.ends.get(n, {}).get(hash(tuple(tokens[length - n :])))
            if end is None:
                continue
            draft: list[int] = []
            for i in range(k):
                at = end + i
                draft.append(tokens[at] if at < length else draft[at - length])
            return draft
        return []
