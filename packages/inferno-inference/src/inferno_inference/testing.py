"""Test doubles for code that drives an `InferenceEngine` (the daemon, the gateway, examples).

`FakeEngine` implements the protocol without a model: every choice streams the pieces of a
script, one piece per token, with configurable delays, scripted failures and the same
validation, abort, cancellation and stats behaviour as the real engine.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from inferno_inference.errors import EngineError, EngineStoppedError, InvalidRequestError
from inferno_inference.stops import StopMatcher
from inferno_inference.types import (
    EmbeddingOutput,
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

__all__ = ["DEFAULT_SCRIPT", "FakeEngine", "Script", "fake_embedding", "fake_token_id"]

#: Either the same pieces for every choice, or a function of (request, choice index).
Script = Sequence[str] | Callable[[GenerationRequest, int], Sequence[str]]

DEFAULT_SCRIPT: tuple[str, ...] = ("Hello", ",", " I", " am", " a", " fake", " engine", ".")


def fake_token_id(piece: str, vocab_size: int) -> int:
    """The deterministic token id `FakeEngine` reports for a text piece."""
    return zlib.crc32(piece.encode("utf-8")) % vocab_size


def fake_embedding(request: EmbeddingRequest, size: int) -> tuple[float, ...]:
    """The deterministic embedding `FakeEngine` gives ``request``: each token id stands for a
    fixed random vector, pooled as asked (mean or last) and normalized when asked, so equal
    inputs embed equally and different ones (almost surely) differently."""

    def vector(token_id: int) -> list[float]:
        gen = random.Random(token_id)
        return [gen.gauss(0.0, 1.0) for _ in range(size)]

    ids = request.prompt_token_ids
    if request.pooling == "last":
        pooled = vector(ids[-1])
    else:
        rows = [vector(t) for t in ids]
        pooled = [sum(col) / len(ids) for col in zip(*rows, strict=True)]
    if request.normalize:
        norm = math.sqrt(sum(v * v for v in pooled)) or 1.0
        pooled = [v / norm for v in pooled]
    return tuple(pooled)


@dataclass(slots=True)
class _Live:
    request: GenerationRequest
    tokens: int = 0
    admitted: bool = False


class FakeEngine:
    """A scripted `InferenceEngine` for tests.

    Each choice of a request streams ``script`` one piece (one token) at a time and finishes
    with ``"stop"`` when the script ends, ``"length"`` at ``max_tokens`` (or the end of the
    context), ``"stop"`` early when a stop string appears (the string is cut, as in the real
    engine), ``"abort"`` after `abort` or `shutdown`, and ``"error"`` after ``fail_after``
    tokens. Choices of one request are interleaved token by token like a batched engine.

    Args:
        script: the pieces to stream, or a callable ``(request, index) -> pieces``.
        max_model_len: context length used for `PromptTooLongError`.
        vocab_size: token ids must be below it.
        max_num_seqs: requests beyond it wait (``stats().waiting``) until one finishes.
        first_token_delay: seconds before a choice's first token (time to first token).
        token_delay: seconds between later tokens.
        fail_after: end every choice with ``finish_reason="error"`` after this many tokens.
        error_message: the ``error`` text of such a failure.
        block_size, kv_blocks_total: shape of the pretend KV cache reported by `stats`.
        embedding_size: length of the vectors `embed` returns (see `fake_embedding`); it
            waits ``first_token_delay`` and fails with ``error_message`` when ``fail_after``
            is set.
        end_token_id: end each finished script with this token, as a model ends its turn: one
            more output with this id, no text and ``stop_reason`` set to the id (it counts as
            a generated token and has logprobs). None: the last piece finishes the choice.
    """

    def __init__(
        self,
        script: Script = DEFAULT_SCRIPT,
        *,
        max_model_len: int = 2048,
        vocab_size: int = 49152,
        max_num_seqs: int = 16,
        first_token_delay: float = 0.0,
        token_delay: float = 0.0,
        fail_after: int | None = None,
        error_message: str = "FakeEngine: scripted failure",
        block_size: int = 16,
        kv_blocks_total: int = 1024,
        embedding_size: int = 64,
        end_token_id: int | None = None,
    ) -> None:
        self._script = script
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.max_num_seqs = max_num_seqs
        self.first_token_delay = first_token_delay
        self.token_delay = token_delay
        self.fail_after = fail_after
        self.error_message = error_message
        self.block_size = block_size
        self.kv_blocks_total = kv_blocks_total
        self.embedding_size = embedding_size
        self.end_token_id = end_token_id
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._abort_requested: set[str] = set()
        self._stopped = False
        self._prompt_tokens = 0
        self._generated = 0
        self._started = time.monotonic()
        #: Every request accepted by `generate`, in submission order.
        self.requests: list[GenerationRequest] = []
        #: Ids of requests that ended by `abort`, cancellation or shutdown.
        self.aborted: list[str] = []
        #: Every request accepted by `embed`, in submission order.
        self.embeddings: list[EmbeddingRequest] = []
        self._embedding_live: set[str] = set()

    # -- InferenceEngine ----------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        """Stream the script for every choice of ``request`` (see the class docstring)."""
        return self._stream(request)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingOutput:
        """`fake_embedding` of ``request``, after ``first_token_delay`` (see the class)."""
        rid = request.request_id
        with self._lock:
            if self._stopped:
                raise EngineStoppedError("the engine is shut down")
            validate_embedding(
                request, max_model_len=self.max_model_len, vocab_size=self.vocab_size
            )
            if rid in self._live or rid in self._embedding_live:
                raise InvalidRequestError(
                    f"request id {rid!r} is already running", param="request_id"
                )
            self._embedding_live.add(rid)
            self.embeddings.append(request)
            self._prompt_tokens += len(request.prompt_token_ids)
        completed = False
        try:
            if self.first_token_delay:
                await asyncio.sleep(self.first_token_delay)
            with self._lock:
                if rid in self._abort_requested:
                    raise EngineStoppedError(f"request {rid!r} was aborted")
            if self.fail_after is not None:
                raise EngineError(self.error_message)
            completed = True
            return EmbeddingOutput(
                rid, fake_embedding(request, self.embedding_size), len(request.prompt_token_ids)
            )
        finally:
            with self._lock:
                self._embedding_live.discard(rid)
                self._abort_requested.discard(rid)
                if not completed:
                    self.aborted.append(rid)

    def abort(self, request_id: str) -> None:
        """End ``request_id`` at its next token boundary; unknown ids are ignored."""
        with self._lock:
            if request_id in self._live or request_id in self._embedding_live:
                self._abort_requested.add(request_id)

    def stats(self) -> EngineStats:
        """Counts of live requests, pretend KV blocks and tokens so far."""
        with self._lock:
            live = list(self._live.values())
            elapsed = max(time.monotonic() - self._started, 1e-9)
            used = sum(
                -(-(len(x.request.prompt_token_ids) + x.tokens) // self.block_size)
                for x in live
                if x.admitted
            )
            return EngineStats(
                running=sum(x.admitted for x in live),
                waiting=sum(not x.admitted for x in live),
                kv_blocks_total=self.kv_blocks_total,
                kv_blocks_used=min(used, self.kv_blocks_total),
                prefix_cache_queries=self._prompt_tokens,
                prefix_cache_hits=0,
                tokens_per_second=self._generated / elapsed,
                prompt_tokens_total=self._prompt_tokens,
                generation_tokens_total=self._generated,
                max_num_seqs=self.max_num_seqs,
            )

    async def shutdown(self) -> None:
        """Abort every live request and refuse new ones with `EngineStoppedError`."""
        with self._lock:
            self._stopped = True
            self._abort_requested.update(self._live)
            self._abort_requested.update(self._embedding_live)
        while True:
            with self._lock:
                if not self._live and not self._embedding_live:
                    return
            await asyncio.sleep(0.001)

    # -- internals ----------------------------------------------------------------------------

    def _pieces(self, request: GenerationRequest, index: int) -> Sequence[str]:
        if callable(self._script):
            return self._script(request, index)
        return self._script

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        with self._lock:
            if self._stopped:
                raise EngineStoppedError("the engine is shut down")
            validate_request(request, max_model_len=self.max_model_len, vocab_size=self.vocab_size)
            if request.request_id in self._live:
                raise InvalidRequestError(
                    f"request id {request.request_id!r} is already running", param="request_id"
                )
            live = _Live(request)
            self._live[request.request_id] = live
            self.requests.append(request)
        rid = request.request_id
        sp = request.sampling
        prompt_len = len(request.prompt_token_ids)
        limit = min(sp.max_tokens, self.max_model_len - prompt_len)
        choices = [
            _Choice(list(self._pieces(request, i)), StopMatcher(sp.stop)) for i in range(sp.n)
        ]
        completed = False
        submitted = time.monotonic()
        try:
            await self._admit(live)
            queued = time.monotonic() - submitted
            step = 0
            while not completed:
                delay = self.first_token_delay if step == 0 else self.token_delay
                if delay:
                    await asyncio.sleep(delay)
                with self._lock:
                    aborting = rid in self._abort_requested
                for i, choice in enumerate(choices):
                    if choice.finished:
                        continue
                    out = (
                        GenerationOutput(rid, i, (), "", finish_reason="abort")
                        if aborting
                        else self._next_output(request, i, choice, limit)
                    )
                    if out.finished:
                        choice.finished = True
                    if all(c.finished for c in choices):
                        completed = True
                        usage = Usage(
                            prompt_len, sum(c.count for c in choices), queue_time_s=queued
                        )
                        out = replace(out, usage=usage)
                    yield out
                step += 1
        finally:
            with self._lock:
                self._live.pop(rid, None)
                if rid in self._abort_requested or not completed:
                    self.aborted.append(rid)
                self._abort_requested.discard(rid)

    async def _admit(self, live: _Live) -> None:
        while True:
            with self._lock:
                if live.request.request_id in self._abort_requested:
                    return
                if sum(x.admitted for x in self._live.values()) < self.max_num_seqs:
                    live.admitted = True
                    self._prompt_tokens += len(live.request.prompt_token_ids)
                    return
            await asyncio.sleep(0.001)

    def _next_output(
        self, request: GenerationRequest, i: int, choice: _Choice, limit: int
    ) -> GenerationOutput:
        rid = request.request_id
        sp = request.sampling
        if self.fail_after is not None and choice.count >= self.fail_after:
            return GenerationOutput(rid, i, (), "", finish_reason="error", error=self.error_message)
        end = self.end_token_id
        if choice.count >= len(choice.pieces):
            if end is None:
                return GenerationOutput(rid, i, (), choice.matcher.flush(), finish_reason="stop")
            choice.count += 1
            with self._lock:
                self._generated += 1
            text = choice.matcher.flush()
            held = choice.matcher.take_marks()
            own = self._logprobs(sp, end)
            return GenerationOutput(
                rid,
                i,
                (end,),
                text,
                finish_reason="stop",
                logprobs=None if own is None else (*held, *own),
                stop_reason=end,
            )
        piece = choice.pieces[choice.count]
        choice.count += 1
        with self._lock:
            self._generated += 1
            live = self._live.get(rid)
            if live is not None:
                live.tokens = max(live.tokens, choice.count)
        tid = fake_token_id(piece, self.vocab_size)
        own = self._logprobs(sp, tid)
        # As the engine does: a piece's logprob comes out with its text, and not at all when
        # a stop string cuts all of it.
        text, stopped = choice.matcher.push(piece, None if own is None else own[0])
        finish: FinishReason | None = None
        if stopped or (choice.count >= len(choice.pieces) and end is None):
            finish = "stop"
        elif choice.count >= limit:
            finish = "length"
        if finish is not None and not stopped:
            text += choice.matcher.flush()
        released = tuple(choice.matcher.take_marks())
        scored = None
        if sp.prompt_logprobs is not None and i == 0 and choice.count == 1:
            # Each prompt token after the first at 0, with made-up alternatives below it.
            scored = (
                None,
                *(
                    TokenLogprob(t, 0.0, self._top(t, sp.prompt_logprobs))
                    for t in request.prompt_token_ids[1:]
                ),
            )
        return GenerationOutput(
            rid,
            i,
            (tid,),
            text,
            finish_reason=finish,
            logprobs=None if own is None else released or None,
            stop_reason=choice.matcher.matched if stopped else None,
            prompt_logprobs=scored,
        )

    def _logprobs(self, sp: SamplingParams, tid: int) -> tuple[TokenLogprob, ...] | None:
        """The chosen token at log-probability 0 and made-up alternatives below it."""
        if sp.logprobs is None:
            return None
        return (TokenLogprob(tid, 0.0, self._top(tid, sp.logprobs)),)

    def _top(self, tid: int, count: int) -> tuple[tuple[int, float], ...]:
        """``count`` alternatives: ``tid`` at 0 and made-up tokens below it."""
        alts = tuple(
            (fake_token_id(f"{tid}#{k}", self.vocab_size), -float(k)) for k in range(1, count)
        )
        return ((tid, 0.0), *alts) if count else ()


@dataclass(slots=True)
class _Choice:
    pieces: list[str]
    matcher: StopMatcher[TokenLogprob]
    count: int = 0
    finished: bool = False
