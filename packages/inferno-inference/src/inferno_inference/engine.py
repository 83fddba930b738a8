"""`LLMEngine`: the synchronous core — admit requests, step the batch, emit outputs.

It is driven by one thread (`AsyncEngine`'s stepping thread, or a test calling `step`).
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Protocol

import structlog
import torch

from inferno_inference.choice import (
    ChoiceConstraint,
    ChoiceGrammar,
    NoSpellableChoiceError,
    spell,
)
from inferno_inference.errors import InvalidRequestError
from inferno_inference.gbnf import compile_grammar
from inferno_inference.json_mode import (
    JsonConstraint,
    JsonGrammar,
    JsonVocabulary,
    compile_schema,
)
from inferno_inference.json_regex import whole_match
from inferno_inference.reasoning import ReasoningGate, opener_mask
from inferno_inference.regex_mode import RegexConstraint, RegexGrammar
from inferno_inference.runner import ModelRunner
from inferno_inference.sampler import Sampler
from inferno_inference.scheduler import Scheduler
from inferno_inference.sequence import Constraint, Sequence
from inferno_inference.speculative import NgramProposer
from inferno_inference.stops import StopMatcher
from inferno_inference.types import (
    EmbeddingRequest,
    EngineStats,
    FinishReason,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from inferno_inference.validation import validate_embedding, validate_request

__all__ = ["Detokenizer", "DetokenizerFactory", "LLMEngine"]

log = structlog.get_logger(__name__)

#: What an embedding sequence carries as sampling parameters: it never samples.
_EMBEDDING_SAMPLING = SamplingParams(max_tokens=1)

#: JSON grammars kept for reuse, one per schema. Each caches up to 256 masks of one byte per
#: vocabulary entry (12 MiB for a 50K vocabulary), so this bounds them at about 100 MiB.
_GRAMMARS_KEPT = 8
_Grammar = JsonGrammar | ChoiceGrammar | RegexGrammar


class Detokenizer(Protocol):
    """Turns one choice's token ids into text deltas (never a broken UTF-8 character)."""

    def push(self, token_id: int) -> str:
        """Add a token; return the text that became final."""
        ...

    def flush(self) -> str:
        """Return the text still held back, at the end of the choice."""
        ...


#: Builds a detokenizer for a choice from its prompt ids (context for the first tokens).
DetokenizerFactory = Callable[[Seq[int]], Detokenizer]


@dataclass(slots=True)
class _Request:
    request: GenerationRequest | EmbeddingRequest
    seqs: list[Sequence]
    detoks: list[Detokenizer | None]
    unfinished: int
    cached_prompt: int = 0


@dataclass(slots=True)
class _Throughput:
    window: float = 10.0
    events: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, n: int) -> None:
        now = time.monotonic()
        self.events.append((now, n))
        while self.events and self.events[0][0] < now - self.window:
            self.events.popleft()

    def rate(self) -> float:
        # Called from other threads: copy first (atomic under the GIL), then read the copy.
        events = list(self.events)
        if not events:
            return 0.0
        span = max(time.monotonic() - events[0][0], 1e-3)
        return sum(n for _, n in events) / span


class LLMEngine:
    """Continuous-batching generation over a scheduler, a model runner and a sampler."""

    def __init__(
        self,
        scheduler: Scheduler,
        runner: ModelRunner,
        sampler: Sampler,
        *,
        max_model_len: int,
        vocab_size: int,
        eos_token_ids: Seq[int] = (),
        detokenizer_factory: DetokenizerFactory | None = None,
        token_bytes: Callable[[], Seq[bytes]] | None = None,
        encode: Callable[[str], Seq[int]] | None = None,
        proposer: NgramProposer | None = None,
    ) -> None:
        """``proposer`` turns on speculation: decoding sequences get its draft tokens
        verified in their steps (see `inferno_inference.speculative`). ``encode`` (text to
        token ids, no special tokens) writes choice mode's choices as the tokenizer does;
        without it they are spelled from ``token_bytes``."""
        self.scheduler = scheduler
        self.runner = runner
        self.sampler = sampler
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.eos_token_ids = frozenset(eos_token_ids)
        self._detok_factory = detokenizer_factory
        self._token_bytes = token_bytes
        self._encode = encode
        self._json_vocabulary: JsonVocabulary | None = None  # built on first use
        # By (schema, optional).
        self._grammars: OrderedDict[tuple[str | None, bool], JsonGrammar] = OrderedDict()
        self._choice_grammars: OrderedDict[tuple[str, ...], ChoiceGrammar] = OrderedDict()
        # By ("regex", pattern) or ("grammar", GBNF text).
        self._regex_grammars: OrderedDict[tuple[str, str], RegexGrammar] = OrderedDict()
        # For deferred constraints: the vocabulary's bytes, and each opener's token mask.
        self._vocab_bytes: list[bytes] | None = None
        self._openers: dict[str, torch.Tensor] = {}
        self._requests: dict[str, _Request] = {}
        self._seq_ids = itertools.count()
        self._throughput = _Throughput()
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.proposer = proposer
        #: Draft tokens computed, and how many of them were kept.
        self.draft_tokens_total = 0
        self.accepted_draft_tokens_total = 0

    # -- requests -----------------------------------------------------------------------------

    def validate(self, request: GenerationRequest | EmbeddingRequest) -> None:
        """Raise `InvalidRequestError` if the request cannot be served."""
        if isinstance(request, EmbeddingRequest):
            validate_embedding(
                request, max_model_len=self.max_model_len, vocab_size=self.vocab_size
            )
            return
        validate_request(request, max_model_len=self.max_model_len, vocab_size=self.vocab_size)
        sp = request.sampling
        if sp.response_format != "text" and self._token_bytes is None:
            raise InvalidRequestError(
                "JSON mode needs the model's tokenizer, and this engine has none",
                param="response_format",
            )
        for name, value in (("regex", sp.regex), ("grammar", sp.grammar)):
            if value is not None and self._token_bytes is None:
                raise InvalidRequestError(
                    f"{name} mode needs the model's tokenizer, and this engine has none",
                    param=name,
                )
        if sp.reasoning_end is not None and self._token_bytes is None:
            raise InvalidRequestError(
                "reasoning_end needs the model's tokenizer, and this engine has none",
                param="reasoning_end",
            )
        end, budget = sp.reasoning_end, sp.reasoning_budget
        if end is not None and budget is not None and not self._closing_tokens(end):
            raise InvalidRequestError(
                f"no tokens spell {end!r}: a reasoning budget cannot end the block",
                param="reasoning_budget",
            )
        if sp.choices:
            if self._token_bytes is None and self._encode is None:
                raise InvalidRequestError(
                    "choice mode needs the model's tokenizer, and this engine has none",
                    param="choices",
                )
            try:  # built afresh: validate runs on the caller's thread, the cache is the loop's
                ChoiceGrammar(self._choice_paths(sp.choices), self.eos_token_ids, self.vocab_size)
            except NoSpellableChoiceError as exc:
                raise InvalidRequestError(str(exc), param="choices") from None

    def add_request(self, request: GenerationRequest | EmbeddingRequest) -> None:
        """Validate and queue ``request``; its choices join the batch at a coming step.

        An `EmbeddingRequest` runs as one prefill-only sequence; its single output carries
        the ``embedding``.
        """
        self.validate(request)
        if request.request_id in self._requests:
            raise InvalidRequestError(
                f"request id {request.request_id!r} is already running", param="request_id"
            )
        if isinstance(request, EmbeddingRequest):
            self._add_embedding(request)
            return
        sp = request.sampling
        grammar: _Grammar | None = None
        if sp.response_format != "text":
            grammar = self._grammar(sp.json_schema, optional=sp.json_optional)
        elif sp.choices:
            grammar = self._choice_grammar(sp.choices)
        elif sp.regex is not None:
            grammar = self._regex_grammar("regex", sp.regex)
        elif sp.grammar is not None:
            grammar = self._regex_grammar("grammar", sp.grammar)
        now = time.monotonic()
        seqs: list[Sequence] = []
        for i in range(sp.n):
            gen = None
            if sp.seed is not None:
                gen = torch.Generator().manual_seed(sp.seed + i)
            seq = Sequence(
                seq_id=next(self._seq_ids),
                request_id=request.request_id,
                index=i,
                token_ids=list(request.prompt_token_ids),
                prompt_len=len(request.prompt_token_ids),
                sampling=sp,
                arrival=now,
                priority=request.priority,
                leader=seqs[0] if seqs else None,
                stop_matcher=StopMatcher(sp.stop),
                generator=gen,
                constraint=self._constraint(grammar, sp),
            )
            seqs.append(seq)
            self.scheduler.add(seq)
        factory = self._detok_factory
        detoks = [factory(request.prompt_token_ids) if factory else None for _ in seqs]
        self._requests[request.request_id] = _Request(request, seqs, detoks, len(seqs))
        self.prompt_tokens_total += len(request.prompt_token_ids)

    def _add_embedding(self, request: EmbeddingRequest) -> None:
        prompt = request.prompt_token_ids
        seq = Sequence(
            seq_id=next(self._seq_ids),
            request_id=request.request_id,
            index=0,
            token_ids=list(prompt),
            prompt_len=len(prompt),
            sampling=_EMBEDDING_SAMPLING,
            arrival=time.monotonic(),
            pooling=request.pooling,
        )
        self.scheduler.add(seq)
        self._requests[request.request_id] = _Request(request, [seq], [None], 1)
        self.prompt_tokens_total += len(prompt)

    def _pooled(self, req: _Request, seq: Sequence) -> GenerationOutput:
        """Finish an embedding sequence whose last token was just computed."""
        assert isinstance(req.request, EmbeddingRequest)
        assert seq.pooled is not None
        vector = seq.pooled / seq.num_tokens if seq.pooling == "mean" else seq.pooled
        if req.request.normalize:
            vector = torch.nn.functional.normalize(vector, dim=0)
        return self._finish(req, seq, "stop", embedding=tuple(vector.cpu().tolist()))

    def _grammar(self, schema: str | None, *, optional: bool) -> JsonGrammar:
        """The grammar of a schema (None: any object), kept for the schemas used last."""
        key = (schema, optional)
        grammar = self._grammars.get(key)
        if grammar is not None:
            self._grammars.move_to_end(key)
            return grammar
        grammar = JsonGrammar(
            self._json_vocab(), self.eos_token_ids, compile_schema(schema), optional=optional
        )
        self._grammars[key] = grammar
        if len(self._grammars) > _GRAMMARS_KEPT:
            self._grammars.popitem(last=False)
        return grammar

    def _json_vocab(self) -> JsonVocabulary:
        """The vocabulary prepared for JSON and regex masks, built on first use."""
        if self._json_vocabulary is None:
            assert self._token_bytes is not None  # validate() refuses both modes without it
            # About half a second for a 50K vocabulary, once per engine.
            self._json_vocabulary = JsonVocabulary(self._token_bytes())
        return self._json_vocabulary

    def _regex_grammar(self, kind: str, text: str) -> RegexGrammar:
        """The masks of a pattern or a GBNF grammar, kept for those used last."""
        key = (kind, text)
        grammar = self._regex_grammars.get(key)
        if grammar is not None:
            self._regex_grammars.move_to_end(key)
            return grammar
        automaton = whole_match(text) if kind == "regex" else compile_grammar(text)
        grammar = RegexGrammar(self._json_vocab(), self.eos_token_ids, automaton)
        self._regex_grammars[key] = grammar
        if len(self._regex_grammars) > _GRAMMARS_KEPT:
            self._regex_grammars.popitem(last=False)
        return grammar

    def _constraint(self, grammar: _Grammar | None, sp: SamplingParams) -> Constraint | None:
        """A fresh position in ``grammar`` for one output (None: the output is free), behind
        a `ReasoningGate` when ``sp.reasoning_end`` is set and there is a constraint or a
        budget for it to keep."""
        inner: JsonConstraint | ChoiceConstraint | RegexConstraint | None = None
        if isinstance(grammar, ChoiceGrammar):
            inner = ChoiceConstraint(grammar)
        elif isinstance(grammar, RegexGrammar):
            inner = RegexConstraint(grammar)
        elif grammar is not None:
            inner = JsonConstraint(grammar)
        if sp.reasoning_end is None or (inner is None and sp.reasoning_budget is None):
            return inner
        vocab = self._vocabulary()
        opener = None
        if sp.reasoning_start is not None:
            opener = self._openers.get(sp.reasoning_start)
            if opener is None:
                opener = opener_mask(vocab, sp.reasoning_start.encode())
                self._openers[sp.reasoning_start] = opener
                if len(self._openers) > _GRAMMARS_KEPT:
                    self._openers.pop(next(iter(self._openers)))
        forced = self._closing_tokens(sp.reasoning_end) if sp.reasoning_budget is not None else []
        return ReasoningGate(
            inner,
            vocab,
            sp.reasoning_end.encode(),
            opener,
            budget=sp.reasoning_budget,
            forced=forced,
        )

    def _vocabulary(self) -> list[bytes]:
        """The tokens' bytes, computed once (validate() refuses reasoning_end without them)."""
        assert self._token_bytes is not None
        if self._vocab_bytes is None:
            self._vocab_bytes = list(self._token_bytes())
        return self._vocab_bytes

    def _closing_tokens(self, text: str) -> list[int]:
        """The tokens a reasoning budget forces to write ``text``: the tokenizer's (when they
        spell it exactly), else the fewest that do; empty when none can."""
        vocab = self._vocabulary()
        if self._encode is not None:
            ids = list(self._encode(text))
            if ids and b"".join(vocab[i] for i in ids if 0 <= i < len(vocab)) == text.encode():
                return ids
        return spell(text, vocab) or []

    def _choice_grammar(self, choices: tuple[str, ...]) -> ChoiceGrammar:
        """The grammar of a list of choices, kept for the lists used last."""
        grammar = self._choice_grammars.get(choices)
        if grammar is not None:
            self._choice_grammars.move_to_end(choices)
            return grammar
        grammar = ChoiceGrammar(self._choice_paths(choices), self.eos_token_ids, self.vocab_size)
        self._choice_grammars[choices] = grammar
        if len(self._choice_grammars) > _GRAMMARS_KEPT:
            self._choice_grammars.popitem(last=False)
        return grammar

    def _choice_paths(self, choices: Seq[str]) -> list[list[int]]:
        """Each choice's tokens: the tokenizer's, or the fewest that spell it (empty: none)."""
        if self._encode is not None:
            return [list(self._encode(c)) for c in choices]
        assert self._token_bytes is not None  # validate() refuses choice mode without either
        vocab = self._token_bytes()
        return [spell(c, vocab) or [] for c in choices]

    def abort(self, request_id: str) -> list[GenerationOutput]:
        """End every unfinished choice of ``request_id`` with ``"abort"``; unknown ids: []."""
        req = self._requests.get(request_id)
        if req is None:
            return []
        return [self._finish(req, s, "abort") for s in req.seqs if not s.finished]

    def request_ids(self) -> list[str]:
        """Ids of the requests not yet finished."""
        return list(self._requests)

    def has_work(self) -> bool:
        """Some request is waiting or running."""
        return self.scheduler.has_work()

    # -- stepping -----------------------------------------------------------------------------

    def step(self) -> list[GenerationOutput]:
        """Run one scheduling step and return the outputs it produced."""
        if self.proposer is not None:
            self._propose(self.proposer)
        batch = self.scheduler.schedule()
        if not batch:
            return []
        try:
            inputs = self.runner.prepare(batch)
            logits = self.runner.execute(inputs)
            for seq, n in zip(batch.seqs, batch.num_tokens, strict=True):
                seq.num_computed += n - len(seq.draft_ids)  # drafts count once kept
                self.scheduler.block_manager.commit(seq)
            result = None
            first_rows: list[int] = []
            if inputs.sampled:
                first_rows = _first_rows(inputs.sampled)
                firsts = logits if len(first_rows) == logits.shape[0] else logits[first_rows]
                result = self.sampler(firsts, inputs.sampled)
            outputs = [
                self._pooled(self._requests[seq.request_id], seq)
                for seq, _, _ in inputs.pooled
                if seq.num_computed == seq.num_tokens
            ]
        except Exception as exc:  # a failed step fails its own requests, never the engine
            log.exception("engine step failed", requests=sorted({s.request_id for s in batch.seqs}))
            return self._fail(batch.seqs, f"{type(exc).__name__}: {exc}")
        if result is not None:
            verifying: list[tuple[Sequence, int]] = []
            for seq, row, token, lp in zip(
                inputs.sampled, first_rows, result.token_ids, result.logprobs, strict=True
            ):
                outputs.append(self._append(seq, token, lp))
                if seq.draft_ids:
                    verifying.append((seq, row))
            appended = len(inputs.sampled)
            if verifying:
                appended += self._verify(logits, verifying, outputs)
            self._throughput.add(appended)
            self.generation_tokens_total += appended
        return outputs

    def _propose(self, proposer: NgramProposer) -> None:
        """Give each decoding sequence its draft tokens for this step."""
        running = self.scheduler.running
        for seq in running:
            seq.draft_ids = []
        cap = self.scheduler.max_draft_step_tokens
        if cap is not None and len(running) >= cap:
            return  # the real tokens alone fill the step
        for seq in running:
            if seq.num_computed + 1 != seq.num_tokens or seq.pooling is not None:
                continue
            if seq.ngram_index is None:
                seq.ngram_index = proposer.new_index()
                seq.draft_len = proposer.num_tokens
            # Drafts past max_tokens would be discarded, and past the context have no slot.
            limit = min(
                seq.draft_len,
                seq.sampling.max_tokens - seq.output_len - 1,
                self.max_model_len - seq.num_tokens,
            )
            seq.draft_ids = proposer.propose(seq.token_ids, seq.ngram_index, limit)

    def _verify(
        self,
        logits: torch.Tensor,
        verifying: list[tuple[Sequence, int]],
        outputs: list[GenerationOutput],
    ) -> int:
        """Sample the drafted positions of ``verifying`` (each sequence with its first logits
        row, already sampled and appended), one depth at a time across the sequences, while
        each sampled token equals the draft before it. Appends the outputs; returns how many
        tokens were added."""
        added = 0
        drafts = {id(seq): list(seq.draft_ids) for seq, _ in verifying}
        kept = dict.fromkeys(drafts, 0)
        live = verifying
        depth = 0
        try:
            while live:
                # A draft is kept when the token sampled at its position is the draft itself:
                # then its K/V (computed from it) is the sequence's, and the next row's logits
                # are the ones a plain step would have given.
                live = [
                    (seq, row)
                    for seq, row in live
                    if not seq.finished
                    and depth < len(drafts[id(seq)])
                    and seq.token_ids[-1] == drafts[id(seq)][depth]
                ]
                if not live:
                    break
                for seq, _ in live:
                    seq.num_computed += 1
                    kept[id(seq)] += 1
                depth += 1
                rows = [row + depth for _, row in live]
                seqs = [seq for seq, _ in live]
                result = self.sampler(logits[rows], seqs)
                for seq, token, lp in zip(seqs, result.token_ids, result.logprobs, strict=True):
                    outputs.append(self._append(seq, token, lp))
                added += len(seqs)
        except Exception as exc:  # as in step: only the sequences still verifying fail
            log.exception("draft verification failed")
            outputs.extend(self._fail([s for s, _ in live], f"{type(exc).__name__}: {exc}"))
        bm = self.scheduler.block_manager
        k = self.proposer.num_tokens if self.proposer is not None else 0
        for seq, _ in verifying:
            n, hit = len(drafts[id(seq)]), kept[id(seq)]
            self.draft_tokens_total += n
            self.accepted_draft_tokens_total += hit
            # Fewer drafts after a miss, more after a full hit: a wrong draft costs rows.
            seq.draft_len = max(1, seq.draft_len // 2) if hit < n else min(k, seq.draft_len * 2)
            seq.draft_ids = []
            if not seq.finished:
                bm.commit(seq)
        return added

    def _append(self, seq: Sequence, token: int, lp: TokenLogprob | None) -> GenerationOutput:
        req = self._requests[seq.request_id]
        seq.token_ids.append(token)
        sp = seq.sampling
        detok = req.detoks[seq.index]
        stopped = False
        text = ""
        finish: FinishReason | None = None
        stop_reason: int | str | None = None
        is_eos = token in self.eos_token_ids and not sp.ignore_eos
        pushed = False  # the token's text (and logprob) went through the stop matcher
        if is_eos or token in sp.stop_token_ids:
            finish, stop_reason = "stop", token
        elif detok is not None:
            pushed = True
            text, stopped = seq.stop_matcher.push(detok.push(token), lp)
            if stopped:
                finish, stop_reason = "stop", seq.stop_matcher.matched
        if seq.constraint is not None:
            seq.constraint.advance(token)
            if finish is None and seq.constraint.done:
                finish = "stop"  # the object is closed: nothing may follow, not even a step
        if finish is None and (
            seq.output_len >= sp.max_tokens or seq.num_tokens >= self.max_model_len
        ):
            finish = "length"
        scored = None
        if seq.scores_prompt and not seq.prompt_logprobs_sent:
            seq.prompt_logprobs_sent = True
            scored = (None, *seq.prompt_logprobs)
        if finish is None:
            return GenerationOutput(
                seq.request_id,
                seq.index,
                (token,),
                text,
                logprobs=self._released_logprobs(seq, lp, pushed),
                prompt_logprobs=scored,
            )
        if not stopped:
            tail = detok.flush() if detok is not None else ""
            text += seq.stop_matcher.push(tail)[0] + seq.stop_matcher.flush()
        logprobs = self._released_logprobs(seq, lp, pushed)
        return self._finish(
            req,
            seq,
            finish,
            token_ids=(token,),
            text=text,
            logprobs=logprobs,
            stop_reason=stop_reason,
            prompt_logprobs=scored,
        )

    @staticmethod
    def _released_logprobs(
        seq: Sequence, lp: TokenLogprob | None, pushed: bool
    ) -> tuple[TokenLogprob, ...] | None:
        """The logprobs an output carries: those whose text it releases, and the appended
        token's own when its text never went through the stop matcher (a stop token, or no
        tokenizer)."""
        lps = seq.stop_matcher.take_marks()
        if lp is not None and not pushed:
            lps.append(lp)
        return tuple(lps) or None

    def _finish(
        self,
        req: _Request,
        seq: Sequence,
        reason: FinishReason,
        *,
        token_ids: tuple[int, ...] = (),
        text: str = "",
        logprobs: tuple[TokenLogprob, ...] | None = None,
        error: str | None = None,
        embedding: tuple[float, ...] | None = None,
        stop_reason: int | str | None = None,
        prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None,
    ) -> GenerationOutput:
        self.scheduler.finish(seq, failed=reason == "error")
        seq.finish_reason = reason
        req.unfinished -= 1
        usage = None
        if req.unfinished == 0:
            del self._requests[seq.request_id]
            scheduled = [s.first_scheduled for s in req.seqs if s.first_scheduled is not None]
            usage = Usage(
                prompt_tokens=seq.prompt_len,
                completion_tokens=sum(s.output_len for s in req.seqs),
                cached_prompt_tokens=max(s.num_cached_prompt for s in req.seqs),
                queue_time_s=min(scheduled) - seq.arrival if scheduled else None,
            )
        return GenerationOutput(
            seq.request_id,
            seq.index,
            token_ids,
            text,
            finish_reason=reason,
            logprobs=logprobs,
            usage=usage,
            error=error,
            embedding=embedding,
            stop_reason=stop_reason,
            prompt_logprobs=prompt_logprobs,
        )

    def _fail(self, seqs: Seq[Sequence], message: str) -> list[GenerationOutput]:
        outputs = []
        for seq in seqs:
            req = self._requests.get(seq.request_id)
            if req is not None and not seq.finished:
                outputs.append(self._finish(req, seq, "error", error=message))
        return outputs

    # -- introspection ------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        """A snapshot of load and cache counters (approximate if read from another thread)."""
        sched = self.scheduler
        bm = sched.block_manager
        return EngineStats(
            running=len(sched.running),
            waiting=len(sched.waiting),
            kv_blocks_total=bm.num_blocks,
            kv_blocks_used=bm.num_used_blocks,
            prefix_cache_queries=bm.prefix_queries,
            prefix_cache_hits=bm.prefix_hits,
            tokens_per_second=self._throughput.rate(),
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            preemptions_total=sched.num_preemptions,
            max_num_seqs=sched.max_num_seqs,
            draft_tokens_total=self.draft_tokens_total,
            accepted_draft_tokens_total=self.accepted_draft_tokens_total,
        )


def _first_rows(sampled: list[Sequence]) -> list[int]:
    """The logits row of each sampled sequence's next token: one row per sequence, plus one
    per draft token of those speculating (see `ModelRunner.prepare`)."""
    rows: list[int] = []
    at = 0
    for seq in sampled:
        rows.append(at)
        at += 1 + len(seq.draft_ids)
    return rows
