"""Offline batches in OpenAI's batch file format, run through the daemon's own HTTP app.

Each input line is ``{"custom_id", "method": "POST", "url", "body"}``; each output line is
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``, written
and flushed as its request finishes (so in finishing order: match lines by ``custom_id``).

Requests go through the same app as ``inferno serve`` (validation, sampling defaults,
templates, tools, errors), served on a Unix socket in a private directory, so a batch answers
exactly what the server would. A line that never reaches the app (not JSON, no ``custom_id``,
a ``custom_id`` seen before, another method or route, ``stream``) gets ``response: null`` and an
``error`` that names the line; an answer of the app with any status is a ``response``.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import structlog
from aiohttp import web

__all__ = ["BATCH_URLS", "BatchSummary", "completed_ids", "run_batch"]

log = structlog.get_logger("inferno_backend.batch")

#: The routes a batch line may name.
BATCH_URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")


@dataclass(slots=True)
class BatchSummary:
    """What a batch did."""

    #: Lines that reached the app and got a 200.
    succeeded: int = 0
    #: Lines answered with another status, or refused before the app.
    failed: int = 0
    #: Lines left out because their ``custom_id`` was already in the output (resumed).
    skipped: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    #: The batch stopped early (``stop`` was set): lines after the last started were not run.
    interrupted: bool = False

    @property
    def total(self) -> int:
        """Lines written to the output."""
        return self.succeeded + self.failed


@dataclass(frozen=True, slots=True)
class _Job:
    custom_id: str
    url: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Refused:
    custom_id: str | None
    message: str


@dataclass(slots=True)
class _Lines:
    """Input lines parsed one at a time, as the workers ask for them."""

    lines: Iterable[str]
    done: frozenset[str]
    summary: BatchSummary
    seen: set[str] = field(default_factory=set)

    def __iter__(self) -> Iterator[_Job | _Refused]:
        for number, raw in enumerate(self.lines, start=1):
            if not raw.strip():
                continue
            item = self._parse(number, raw)
            if item is not None:
                yield item

    def _parse(self, number: int, raw: str) -> _Job | _Refused | None:
        where = f"line {number}"
        try:
            line = json.loads(raw)
        except ValueError as exc:
            return _Refused(None, f"{where} is not JSON: {exc}")
        if not isinstance(line, dict):
            return _Refused(None, f"{where} is not a JSON object")
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return _Refused(None, f"{where} has no custom_id (a non-empty string)")
        if custom_id in self.done:
            self.summary.skipped += 1
            return None
        if custom_id in self.seen:
            return _Refused(custom_id, f"{where} repeats the custom_id {custom_id!r}")
        self.seen.add(custom_id)
        method, url, body = line.get("method", "POST"), line.get("url"), line.get("body")
        if method != "POST":
            return _Refused(custom_id, f"{where}: method must be POST, not {method!r}")
        if url not in BATCH_URLS:
            known = ", ".join(BATCH_URLS)
            return _Refused(custom_id, f"{where}: url must be one of {known}, not {url!r}")
        if not isinstance(body, dict):
            return _Refused(custom_id, f"{where}: body must be a JSON object")
        if body.get("stream"):
            return _Refused(custom_id, f"{where}: a batch request cannot stream")
        return _Job(custom_id, url, body)


def completed_ids(path: Path) -> frozenset[str]:
    """The ``custom_id`` of every whole line of an earlier output at ``path``.

    A last line cut short (the run was killed while writing it) is removed from the file, so
    that appending to it yields valid JSON lines again.
    """
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    ids = set()
    for raw in data[:end].splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
            ids.add(line["custom_id"])
    return frozenset(ids)


async def run_batch(
    app: web.Application,
    lines: Iterable[str],
    sink: TextIO,
    *,
    concurrency: int = 64,
    done: frozenset[str] = frozenset(),
    stop: asyncio.Event | None = None,
    summary: BatchSummary | None = None,
) -> BatchSummary:
    """Run every request of ``lines`` through ``app`` and write one output line each to ``sink``.

    Args:
        app: the daemon's app, whose models are loaded (or that loads them on start-up).
        lines: the input, one JSON request per line (read lazily: a batch may be large).
        sink: where output lines go; each is flushed once written.
        concurrency: requests in flight at once (the engine batches them).
        done: ``custom_id`` values to leave out (`completed_ids` of an earlier output).
        stop: once set, no further request starts; those in flight finish and are written.
        summary: the summary to fill as lines are written (to watch progress); a new one if
            None.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    summary = summary if summary is not None else BatchSummary()
    started = time.perf_counter()
    stop = stop or asyncio.Event()
    work = iter(_Lines(lines, done, summary))
    with tempfile.TemporaryDirectory(prefix="inferno-batch-") as private:
        path = os.path.join(private, "api.sock")
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        try:
            await web.UnixSite(runner, path).start()
            connector = aiohttp.UnixConnector(path=path, limit=concurrency)
            timeout = aiohttp.ClientTimeout(total=None)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

                async def worker() -> None:
                    # Workers share one iterator: taking the next line never awaits.
                    while not stop.is_set():
                        item = next(work, None)
                        if item is None:
                            return
                        record = await _run_one(session, item, summary)
                        sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                        sink.flush()

                await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            await runner.cleanup()
    summary.interrupted = stop.is_set()
    summary.seconds = time.perf_counter() - started
    log.info(
        "batch finished",
        succeeded=summary.succeeded,
        failed=summary.failed,
        skipped=summary.skipped,
        seconds=round(summary.seconds, 3),
        interrupted=summary.interrupted,
    )
    return summary


async def _run_one(
    session: aiohttp.ClientSession, item: _Job | _Refused, summary: BatchSummary
) -> dict[str, Any]:
    rid = f"batch_req_{uuid.uuid4().hex}"
    if isinstance(item, _Refused):
        summary.failed += 1
        error = {"code": "invalid_request", "message": item.message}
        return {"id": rid, "custom_id": item.custom_id, "response": None, "error": error}
    try:
        async with session.post(
            f"http://batch{item.url}", json=item.body, headers={"X-Request-Id": rid}
        ) as resp:
            status = resp.status
            text = await resp.text()
    except aiohttp.ClientError as exc:
        summary.failed += 1
        error = {"code": "server_error", "message": f"{type(exc).__name__}: {exc}"}
        return {"id": rid, "custom_id": item.custom_id, "response": None, "error": error}
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    if status == 200:
        summary.succeeded += 1
        usage = body.get("usage") if isinstance(body, dict) else None
        if isinstance(usage, dict):  # the Responses API names them input and output
            prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
            completion = usage.get("completion_tokens", usage.get("output_tokens"))
            summary.prompt_tokens += int(prompt or 0)
            summary.completion_tokens += int(completion or 0)
    else:
        summary.failed += 1
    response = {"status_code": status, "request_id": rid, "body": body}
    return {"id": rid, "custom_id": item.custom_id, "response": response, "error": None}
