"""`Scheduler`: continuous batching with chunked prefill, priority-then-FIFO admission and
preemption.

Sequences are ordered by priority (lower first), then arrival. Every step spends one token
budget. Running sequences go first, in that order: a decode costs one token, an unfinished
prefill takes the next chunk that fits. Waiting sequences then join in that order while the
budget, ``max_num_seqs`` and the free blocks allow; a head that does not fit blocks those
behind it (FIFO within a priority), unless a running sequence of a lower priority (a higher
value) can make room: the lowest, youngest one is preempted for it. When a running sequence
needs a block and none is free, the last running sequence in that order is preempted: its
blocks are freed and it is recomputed later.
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
        self._enqueue(seq)

    def _enqueue(self, seq: Sequence) -> None:
        """Put ``seq`` into ``waiting``, which stays in scheduling order."""
        key = _order(seq)
        if not self.waiting or _order(self.waiting[-1]) <= key:
            self.waiting.append(seq)  # the common case: it comes last
            return
        for i, other in enumerate(self.waiting):
            if _order(other) > key:
                self.waiting.insert(i, seq)
                return

    def has_work(self) -> bool:
        """Some sequence is waiting or running."""
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        """Pick the sequences and token counts of the next step (allocating their blocks)."""
        budget = self.max_num_batched_tokens
        chosen: list[Sequence] = []
        counts: list[int] = []
        preempted: list[Sequence] = []
        for seq in self.running:
            self.block_manager.release_outside_window(seq)
        queue = sorted(self.running, key=_order)  # the first to serve first
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
            budget = self._admit(chosen, counts, budget, preempted)
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

    def _admit(
        self,
        chosen: list[Sequence],
        counts: list[int],
        budget: int,
        preempted: list[Sequence],
    ) -> int:
        skipped: list[Sequence] = []
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            leader = seq.leader
            if leader is not None and not leader.finished and leader.is_prefilling:
                # A sibling choice waits for its leader's prompt so it reuses the cached blocks.
                skipped.append(self.waiting.popleft())
                continue
            full = len(self.running) >= self.max_num_seqs
            n = 0 if full else self.block_manager.allocate(seq, budget)
            if n == 0:
                victim = self._outranked(seq)
                if victim is None:
                    break
                if victim in chosen:  # out of this step, and its tokens back to the budget
                    at = chosen.index(victim)
                    chosen.pop(at)
                    budget += counts.pop(at)
                self._preempt(victim)
                preempted.append(victim)
                continue
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

    def _outranked(self, seq: Sequence) -> Sequence | None:
        """The running sequence to preempt so that ``seq`` may run: the last in scheduling
        order among those of a lower priority (a higher value); None when there is none."""
        lower = [s for s in self.running if s.priority > seq.priority]
        return max(lower, key=_order) if lower else None

    def _preempt(self, seq: Sequence) -> None:
        seq.draft_ids.clear()
        self.block_manager.free(seq)
        self.running.remove(seq)
        seq.status = SequenceStatus.WAITING
        self._enqueue(seq)
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


def _order(seq: Sequence) -> tuple[int, float, int]:
    """Scheduling order: priority (lower first), then arrival, then creation."""
    return (seq.priority, seq.arrival, seq.seq_id)
