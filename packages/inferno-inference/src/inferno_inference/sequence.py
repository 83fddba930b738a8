"""`Sequence`: the hot-path state of one choice of one request."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypeAlias

import torch

from inferno_inference.choice import ChoiceConstraint
from inferno_inference.json_mode import JsonConstraint
from inferno_inference.reasoning import ReasoningGate
from inferno_inference.regex_mode import RegexConstraint
from inferno_inference.speculative import NgramIndex
from inferno_inference.stops import StopMatcher
from inferno_inference.types import FinishReason, Pooling, SamplingParams, TokenLogprob

__all__ = ["Constraint", "Sequence", "SequenceStatus", "TokenTally"]

#: What limits one choice's next tokens: JSON, a list of choices, or either after a closing text.
Constraint: TypeAlias = JsonConstraint | ChoiceConstraint | RegexConstraint | ReasoningGate


class SequenceStatus(enum.Enum):
    """Where a sequence is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class TokenTally:
    """A sequence's tokens as the penalties see them, kept up to date as tokens are appended
    (they never leave ``token_ids``): rebuilding them from the whole context every step cost
    about 1 ms a row at 8K tokens."""

    #: The vocabulary the tensors cover.
    vocab: int = 0
    #: ``token_ids[:upto]`` are counted.
    upto: int = 0
    #: bool ``[vocab]``: the tokens of the prompt and output (repetition_penalty).
    seen: torch.Tensor | None = None
    #: fp32 ``[vocab]``: how often each token occurs in the output (frequency and presence).
    counts: torch.Tensor | None = None


@dataclass(slots=True, eq=False)
class Sequence:
    """One choice being generated: its tokens, its KV blocks and its output progress.

    ``token_ids`` holds the prompt followed by the generated tokens; ``num_computed`` counts the
    leading tokens whose K/V are in the cache. A preempted sequence drops its blocks and
    recomputes everything (prompt and output so far) when it is scheduled again.

    An embedding request is a sequence with ``pooling`` set: it only prefills, its final
    hidden states are pooled into ``pooled`` chunk by chunk, and it finishes, never sampling,
    once its last token is computed.
    """

    seq_id: int
    request_id: str
    index: int
    token_ids: list[int]
    prompt_len: int
    sampling: SamplingParams
    arrival: float
    priority: int = 0  # lower runs first
    first_scheduled: float | None = None
    leader: Sequence | None = None
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    #: Leading entries of ``block_table`` given back under a sliding window (`RELEASED`).
    num_released: int = 0
    num_computed: int = 0
    num_cached_prompt: int = 0
    prefix_looked_up: bool = False
    finish_reason: FinishReason | None = None
    error: str | None = None
    stop_matcher: StopMatcher[TokenLogprob] = field(default_factory=lambda: StopMatcher(()))
    abort_requested: bool = False
    generator: torch.Generator | None = None
    # JSON or choice mode: which tokens may come next.
    constraint: Constraint | None = None
    pooling: Pooling | None = None
    pooled: torch.Tensor | None = None  # fp32 [hidden]: a sum (mean pooling) or the last row
    # Speculation: this step's draft tokens (computed after the last real token, not part of
    # ``token_ids``), the n-gram index they come from, and how many to propose next.
    draft_ids: list[int] = field(default_factory=list)
    ngram_index: NgramIndex | None = None
    draft_len: int = 0
    # Prompt scoring: entry k is prompt token k + 1's log-probability; sent with the first
    # output, once.
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs_sent: bool = False
    tally: TokenTally | None = None  # made by the sampler for rows with penalties

    @property
    def scores_prompt(self) -> bool:
        """It computes its prompt's log-probabilities (a sibling choice leaves that to its
        leader, whose prompt it shares)."""
        return self.sampling.prompt_logprobs is not None and self.leader is None

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.token_ids)

    @property
    def output_len(self) -> int:
        """Generated tokens so far."""
        return len(self.token_ids) - self.prompt_len

    @property
    def output_ids(self) -> list[int]:
        """The generated tokens."""
        return self.token_ids[self.prompt_len :]

    @property
    def is_prefilling(self) -> bool:
        """Some of its tokens still need computing before it can sample."""
        return self.num_computed < self.num_tokens - 1

    @property
    def finished(self) -> bool:
        """It has a finish reason."""
        return self.status is SequenceStatus.FINISHED
