"""`AsyncEngine`: the `InferenceEngine` seam over an `LLMEngine` stepping on its own thread.

asyncio callers never wait on a forward pass: submissions and aborts are queued for the
stepping thread, and outputs come back into one asyncio queue per request, through one
``loop.call_soon_threadsafe`` per event loop per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import structlog

from inferno_inference.engine import LLMEngine
from inferno_inference.errors import EngineError, EngineStoppedError, InvalidRequestError
from inferno_inference.types import (
    EmbeddingOutput,
    EmbeddingRequest,
    EngineStats,
    GenerationOutput,
    GenerationRequest,
)

__all__ = ["AsyncEngine"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[GenerationOutput | BaseException]


class AsyncEngine:
    """Serves many concurrent `generate` streams from one stepping thread.

    The thread starts in the constructor and sleeps while there is no work. Closing or
    cancelling a `generate` iterator aborts its request.
    """

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._cv = threading.Condition()
        # Submissions and aborts in call order: an abort left behind by a cancelled stream must
        # reach the engine before a later request that reuses its id.
        self._commands: list[GenerationRequest | EmbeddingRequest | str] = []
        self._streams: dict[str, _Stream] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="inferno-engine", daemon=True)
        self._thread.start()

    # -- InferenceEngine ----------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        """Submit ``request`` and stream its outputs (see `InferenceEngine.generate`)."""
        return self._generate(request)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingOutput:
        """The embedding of ``request``, computed in the running batch (see
        `InferenceEngine.embed`)."""
        last: GenerationOutput | None = None
        async with contextlib.aclosing(self._generate(request)) as stream:
            async for out in stream:
                last = out
        if last is None or last.finish_reason == "abort":
            raise EngineStoppedError(f"request {request.request_id!r} was aborted")
        if last.embedding is None:
            raise EngineError(last.error or f"request {request.request_id!r} failed")
        usage = last.usage
        return EmbeddingOutput(
            request.request_id,
            last.embedding,
            len(request.prompt_token_ids),
            queue_time_s=usage.queue_time_s if usage is not None else None,
        )

    async def _generate(
        self, request: GenerationRequest | EmbeddingRequest
    ) -> AsyncGenerator[GenerationOutput, None]:
        self.engine.validate(request)
        rid = request.request_id
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._cv:
            if self._stopped:
                raise EngineStoppedError("the engine is shut down")
            if rid in self._streams:
                raise InvalidRequestError(
                    f"request id {rid!r} is already running", param="request_id"
                )
            self._streams[rid] = stream
            self._commands.append(request)
            self._cv.notify()
        done = False
        try:
            while not done:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    done = True
                    raise item
                done = item.usage is not None
                yield item
        finally:
            if not done:
                self.abort(rid)
            with self._cv:
                if self._streams.get(rid) is stream:
                    del self._streams[rid]

    def abort(self, request_id: str) -> None:
        """Abort ``request_id`` at the next step boundary; unknown ids are ignored."""
        with self._cv:
            self._commands.append(request_id)
            self._cv.notify()

    def stats(self) -> EngineStats:
        """A cheap snapshot of load and cache counters."""
        return self.engine.stats()

    async def shutdown(self) -> None:
        """Abort everything, stop the stepping thread and release the KV cache."""
        with self._cv:
            self._stopped = True
            self._cv.notify()
        await asyncio.to_thread(self._thread.join)
        self.engine.runner.kv_cache.release()

    # -- stepping thread ----------------------------------------------------------------------

    def _run(self) -> None:
        engine = self.engine
        while True:
            with self._cv:
                while not (self._stopped or self._commands or engine.has_work()):
                    self._cv.wait()
                commands, self._commands = self._commands, []
                stopped = self._stopped
            outputs: list[GenerationOutput] = []
            for command in commands:
                if isinstance(command, str):
                    outputs.extend(engine.abort(command))
                    continue
                try:
                    engine.add_request(command)
                except Exception as exc:
                    self._deliver_error(command.request_id, exc)
            if stopped:
                for rid in engine.request_ids():
                    outputs.extend(engine.abort(rid))
                self._deliver(outputs)
                return
            try:
                outputs.extend(engine.step())
            except Exception:  # the engine contains step failures; this guards the thread
                log.exception("engine step raised")
            self._deliver(outputs)

    def _deliver(self, outputs: list[GenerationOutput]) -> None:
        # One wake-up per event loop per step, not one per output: each call_soon_threadsafe
        # writes to the loop's self-pipe, which at 64 streams cost more than the step itself.
        batches: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        with self._cv:
            for out in outputs:
                stream = self._streams.get(out.request_id)
                if stream is not None:
                    batches.setdefault(stream.loop, []).append((stream.queue, out))
        for loop, items in batches.items():
            _post(loop, items)

    def _deliver_error(self, request_id: str, exc: BaseException) -> None:
        with self._cv:
            stream = self._streams.get(request_id)
        if stream is not None:
            _post(stream.loop, [(stream.queue, exc)])


_Item = tuple[asyncio.Queue[GenerationOutput | BaseException], GenerationOutput | BaseException]


def _put_all(items: list[_Item]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


def _post(loop: asyncio.AbstractEventLoop, items: list[_Item]) -> None:
    # A closed caller loop raises RuntimeError: nobody is listening any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_put_all, items)
