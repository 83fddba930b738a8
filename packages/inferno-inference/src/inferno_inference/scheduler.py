"""`Scheduler`: continuous batching with chunked prefill, FIFO admission and preemption.

Every step spends one token budget. Running sequences go first, oldest first: a decode costs
one token, an unfinished prefill takes the next chunk that fits. Waiting sequences then join
in arrival order while the budget, ``max_num_seqs`` and the free blocks allow; a head that does
not fit blocks those behind it (FIFO). When a running sequence needs a block and none is free,
the youngest running sequence is preempted: its blocks are freed and it is recomputed later.
Draft tokens of decoding sequences (speculation) come last: they take the budget and blocks
left after everything else (and at most what fills the step to ``max_draft_step_tokens``),
and are dropped in a step that had to preempt.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from inferno_inference.block_manager import BlockManager
from inferno_inference.sequence import Sequence, SequenceStatus

__all__ = ["ScheduledBatch", "Scheduler"]


@dataclass(frozen=True, slots=True)
class ScheduledBatch:
    """What one step computes: each sequence with its number of new tokens, in order."""

    seqs: tuple[Sequence, ...]
    num_tokens: tuple[int, ...]
    preempted: tuple[Sequence, ...] = ()

    @property
    def total_tokens(self) -> int:
        """Tokens computed by the step."""
        return sum(self.num_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    """Decides which sequences run each step; owned by the stepping thread."""

    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_draft_step_tokens: int | None = None,
    ) -> None:
        """``max_draft_step_tokens``: drafts only fill a step up to this many tokens in all
        (``None``: up to the token budget)."""
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_draft_step_tokens = max_draft_step_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence; it joins the batch at a coming step."""
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        """Some sequence is waiting or running."""
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        """Pick the sequences and token counts of the next step (allocating their blocks)."""
        budget = self.max_num_batched_tokens
        chosen: list[Sequence] = []
        counts: list[int] = []
        preempted: list[Sequence] = []
        queue = list(self.running)  # oldest first
        while queue and budget > 0:
            seq = queue.pop(0)
            n = self.block_manager.allocate(seq, budget)
            while n == 0 and queue:
                victim = queue.pop()  # the youngest not yet scheduled this step
                self._preempt(victim)
                preempted.append(victim)
                n = self.block_manager.allocate(seq, budget)
            if n == 0:
                self._preempt(seq)
                preempted.append(seq)
                break
            chosen.append(seq)
            counts.append(n)
            budget -= n
        if not preempted:
            budget = self._admit(chosen, counts, budget)
        if self.max_draft_step_tokens is not None:
            budget = min(budget, self.max_draft_step_tokens - sum(counts))
        for i, seq in enumerate(chosen):
            if not seq.draft_ids:
                continue
            if preempted or budget <= 0 or seq.num_computed + counts[i] != seq.num_tokens:
                seq.draft_ids.clear()
                continue
            kept = self.block_manager.allocate_drafts(seq, budget)
            counts[i] += kept
            budget -= kept
        return ScheduledBatch(tuple(chosen), tuple(counts), tuple(preempted))

    def _admit(self, chosen: list[Sequence], counts: list[int], budget: int) -> int:
        skipped: list[Sequence] = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            leader = seq.leader
            if leader is not None and not leader.finished and leader.is_prefilling:
                # A sibling choice waits for its leader's prompt so it reuses the cached blocks.
                skipped.append(self.waiting.popleft())
                continue
            n = self.block_manager.allocate(seq, budget)
            if n == 0:
                break
            self.waiting.popleft()
            if seq.first_scheduled is None:
                seq.first_scheduled = time.monotonic()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            chosen.append(seq)
            counts.append(n)
            budget -= n
        self.waiting.extendleft(reversed(skipped))
        return budget

    def _preempt(self, seq: Sequence) -> None:
        seq.draft_ids.clear()
        self.block_manager.free(seq)
        self.running.remove(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence, *, failed: bool = False) -> None:
        """Remove a finished (or aborted, or failed) sequence and free its blocks.

        ``failed`` withdraws its blocks from the prefix cache (their contents are suspect).
        """
        self.block_manager.free(seq, uncache=failed)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
