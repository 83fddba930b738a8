"""`BlockManager`: hands out fixed-size KV blocks, ref-counted, with prefix caching.

A full block is identified by ``hash((parent_hash, tokens))``, so two sequences whose prompts
share a prefix share its blocks. A block is registered in the cache as soon as the step that
fills it is scheduled: the forward pass writes every token's K/V of a layer before any token of
that layer attends, so a sequence admitted in the same step may already read it (sixteen chat
requests arriving together share their system prompt). If that step fails, the registration is
withdrawn (`free` with ``uncache=True``). Freed blocks keep their hash and stay reusable until
they are handed out again, oldest-freed first (LRU).

Under a sliding window (``window``), a block whose every position has left the window of
the sequence's next token is given back early (`release_outside_window`): its entry in the
block table becomes `RELEASED`, and its place in the prefix cache is kept as for any freed
block. A sequence then holds about ``window / block_size`` blocks however long it grows.
"""

from __future__ import annotations

from collections import OrderedDict

from inferno_inference.sequence import Sequence

__all__ = ["RELEASED", "BlockManager"]

#: The block table entry of a block given back under a sliding window.
RELEASED = -1


class BlockManager:
    """The KV block allocator of one engine; not thread-safe (the stepping thread owns it)."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_prefix_caching: bool = True,
        window: int | None = None,
    ):
        """``window``: the model's sliding window (positions each token attends to), whose
        older blocks `release_outside_window` gives back; ``None`` for full attention."""
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.window = window
        self._ref = [0] * num_blocks
        self._hash_of: list[int | None] = [None] * num_blocks
        self._cached: dict[int, int] = {}  # block hash -> block id
        # Free blocks in the order they became free; the front is reused (and evicted) first.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        #: Prompt tokens looked up in the prefix cache, and how many of them hit.
        self.prefix_queries = 0
        self.prefix_hits = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds (cached or not)."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        """Blocks held by at least one sequence."""
        return self.num_blocks - len(self._free)

    def blocks_needed(self, num_tokens: int) -> int:
        """Blocks that hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    def _prefix_hits(self, seq: Sequence) -> tuple[list[int], list[int]]:
        """Cached blocks (and their hashes) matching the sequence's leading full blocks.

        The last token is never taken from the cache: its logits are needed to sample. Nor is
        anything for mean pooling, which needs every token's hidden state, or for a prompt
        being scored, which needs every token's logits.
        """
        if not self.enable_prefix_caching or seq.pooling == "mean" or seq.scores_prompt:
            return [], []
        bs = self.block_size
        hits: list[int] = []
        hashes: list[int] = []
        parent = 0
        for b in range((seq.num_tokens - 1) // bs):
            h = hash((parent, tuple(seq.token_ids[b * bs : (b + 1) * bs])))
            block = self._cached.get(h)
            if block is None:
                break
            hits.append(block)
            hashes.append(h)
            parent = h
        return hits, hashes

    def allocate(self, seq: Sequence, token_budget: int) -> int:
        """Reserve blocks for the next tokens of ``seq`` to compute, at most ``token_budget``.

        A sequence without blocks first takes the cached blocks of its prefix (advancing
        ``num_computed``). Returns how many tokens to compute this step, or 0, changing
        nothing, when the free blocks do not suffice.
        """
        hits: list[int] = []
        hashes: list[int] = []
        if not seq.block_table:
            hits, hashes = self._prefix_hits(seq)
        computed = seq.num_computed + len(hits) * self.block_size
        n = min(seq.num_tokens - computed, token_budget)
        if n <= 0:
            return 0
        fresh = self.blocks_needed(computed + n) - len(seq.block_table) - len(hits)
        revived = sum(1 for b in hits if self._ref[b] == 0)
        if max(0, fresh) + revived > len(self._free):
            return 0
        # Count a prompt once, not again after preemption; one never looked up, not at all.
        if not seq.prefix_looked_up and seq.pooling != "mean":
            seq.prefix_looked_up = True
            self.prefix_queries += seq.prompt_len
            self.prefix_hits += len(hits) * self.block_size
            seq.num_cached_prompt = max(seq.num_cached_prompt, len(hits) * self.block_size)
        for b in hits:
            if self._ref[b] == 0:
                del self._free[b]
            self._ref[b] += 1
        seq.block_table.extend(hits)
        seq.block_hashes.extend(hashes)
        seq.num_computed = computed
        for _ in range(max(0, fresh)):
            seq.block_table.append(self._take_free())
        self._register(seq, computed + n)
        return n

    def allocate_drafts(self, seq: Sequence, token_budget: int) -> int:
        """Reserve blocks for the draft tokens of ``seq`` (``seq.draft_ids``), computed after
        its last real token, which `allocate` has reserved this step. Keeps the drafts that
        the budget and the free blocks allow, drops the rest, and returns how many it kept.

        Drafts are never registered in the prefix cache: they may be rejected and their
        slots written again.
        """
        held = len(seq.block_table)
        capacity = (held + len(self._free)) * self.block_size - seq.num_tokens
        keep = max(0, min(len(seq.draft_ids), token_budget, capacity))
        del seq.draft_ids[keep:]
        for _ in range(self.blocks_needed(seq.num_tokens + keep) - held):
            seq.block_table.append(self._take_free())
        return keep

    def release_outside_window(self, seq: Sequence) -> int:
        """Give back the blocks of ``seq`` that no token it computes from now on attends to
        (under the sliding window; none without one). Returns how many it gave back.

        The next token to compute sits at position ``num_computed`` and sees the positions
        from ``num_computed - window + 1`` on; the later ones see no earlier position.
        """
        if self.window is None:
            return 0
        dead = min(
            max(0, seq.num_computed - self.window + 1) // self.block_size, len(seq.block_table)
        )
        released = 0
        for b in range(seq.num_released, dead):
            block = seq.block_table[b]
            seq.block_table[b] = RELEASED
            self._ref[block] -= 1
            if self._ref[block] == 0:
                self._free[block] = None
            released += 1
        seq.num_released = max(seq.num_released, dead)
        return released

    def _take_free(self) -> int:
        block, _ = self._free.popitem(last=False)
        old = self._hash_of[block]
        if old is not None:  # evict: its content is about to be overwritten
            if self._cached.get(old) == block:
                del self._cached[old]
            self._hash_of[block] = None
        self._ref[block] = 1
        return block

    def commit(self, seq: Sequence) -> None:
        """Register the sequence's computed full blocks in the prefix cache (idempotent)."""
        self._register(seq, seq.num_computed)

    def _register(self, seq: Sequence, num_tokens: int) -> None:
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = min(num_tokens // bs, len(seq.block_table))
        parent = seq.block_hashes[-1] if seq.block_hashes else 0
        for b in range(len(seq.block_hashes), full):
            h = hash((parent, tuple(seq.token_ids[b * bs : (b + 1) * bs])))
            block = seq.block_table[b]
            seq.block_hashes.append(h)
            if block != RELEASED and h not in self._cached and self._hash_of[block] is None:
                self._cached[h] = block
                self._hash_of[block] = h
            parent = h

    def free(self, seq: Sequence, *, uncache: bool = False) -> None:
        """Release every block of ``seq`` (finish, abort, error or preemption).

        ``uncache`` also withdraws its blocks from the prefix cache: after a failed step their
        contents cannot be trusted.
        """
        # Tail blocks first, so a prefix's head outlives its tail in the LRU order.
        for block in reversed(seq.block_table):
            if block == RELEASED:
                continue
            h = self._hash_of[block]
            if uncache and h is not None:
                self._hash_of[block] = None
                if self._cached.get(h) == block:
                    del self._cached[h]
            self._ref[block] -= 1
            if self._ref[block] == 0:
                self._free[block] = None
        seq.block_table.clear()
        seq.block_hashes.clear()
        seq.num_released = 0
        seq.num_computed = 0
