"""``inferno batch``: run a file of requests in OpenAI's batch format, offline, and write the
answers as JSON lines."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO, cast

import structlog

from inferno_backend.batch import BatchSummary, completed_ids, run_batch
from inferno_backend.commands.serve import MODEL_FLAG_FIELDS, add_model_arguments
from inferno_backend.config import ConfigError, ServeConfig, load_config
from inferno_backend.logging import configure_logging

__all__ = ["register", "run"]

log = structlog.get_logger("inferno_backend.batch")

#: Exit status when a signal stopped the batch early (its finished lines are written).
INTERRUPTED = 130
#: Seconds between progress lines on standard error.
PROGRESS_EVERY_S = 10.0


def register(subparsers: Any) -> None:
    """Add the ``batch`` subcommand."""
    p = subparsers.add_parser(
        "batch",
        help="run a JSONL file of requests (OpenAI's batch format) and write the answers",
        description="Run every request of INPUT (one JSON object per line: custom_id, method "
        "POST, url /v1/chat/completions, /v1/completions, /v1/embeddings or /v1/responses, "
        "body) through the same API as `inferno serve`, and write one line per request to "
        "OUTPUT as it finishes. Exit status: 0 when every request succeeded, 1 when some "
        "failed (their lines say why), 2 on a usage error, 130 when stopped by a signal.",
    )
    p.add_argument("input", help="the requests, a JSONL file ('-': standard input)")
    p.add_argument("output", help="where the answers go, a JSONL file ('-': standard output)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="OUTPUT holds an earlier, unfinished run: leave out the requests it answered "
        "and append the others",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        help="requests in flight at once (default: twice --max-num-seqs)",
    )
    add_model_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``inferno batch``; returns the exit status."""
    overrides = {name: getattr(args, name, None) for name in MODEL_FLAG_FIELDS}
    # A line of access log per request would bury the progress lines.
    overrides["log_level"] = overrides["log_level"] or "warning"
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        return _usage(str(exc))
    concurrency = 2 * config.max_num_seqs if args.concurrency is None else args.concurrency
    if concurrency < 1:
        return _usage(f"--concurrency must be at least 1, got {concurrency}")
    if args.input != "-" and not Path(args.input).is_file():
        return _usage(f"no such input file: {args.input}")
    done: frozenset[str] = frozenset()
    if args.output == "-":
        if args.resume:
            return _usage("--resume needs an OUTPUT file, not standard output")
    else:
        out = Path(args.output)
        if out.exists() and out.stat().st_size and not args.resume:
            return _usage(f"{out} exists and is not empty; pass --resume to continue it")
        if args.resume and out.exists():
            done = completed_ids(out)
    # The batch's own socket is private: keys and rate limits guard a listening server, and
    # the queue bound must admit every request the batch has in flight.
    config = config.model_copy(
        update={
            "api_keys": (),
            "admin_key": None,
            "rate_limit_rpm": 0.0,
            "discovery": "memory://",
            "max_queued_requests": max(config.max_queued_requests, concurrency),
        }
    )
    configure_logging(config.log_format, config.log_level)
    with (
        _opened(args.input, "r", sys.stdin) as lines,
        _opened(args.output, "a", sys.stdout) as sink,
    ):
        return asyncio.run(_batch(config, lines, sink, concurrency, done))


async def _batch(
    config: ServeConfig,
    lines: TextIO,
    sink: TextIO,
    concurrency: int,
    done: frozenset[str],
) -> int:
    from inferno_backend.composition import build_daemon

    daemon = build_daemon(config)
    orchestrator = daemon.orchestrator
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        log.warning("stopping: no new requests start; those in flight finish")
        stop.set()
        # A second signal ends the process at once.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await orchestrator.start()
    except Exception as exc:
        log.error("start-up failed", error=str(exc))
        await orchestrator.stop()
        return 1
    summary = BatchSummary()
    watching = asyncio.create_task(_progress(summary))
    try:
        await run_batch(
            daemon.app,
            lines,
            sink,
            concurrency=concurrency,
            done=done,
            stop=stop,
            summary=summary,
        )
    finally:
        watching.cancel()
        await orchestrator.stop()
    sys.stderr.write(
        f"inferno batch: {summary.succeeded} succeeded, {summary.failed} failed, "
        f"{summary.skipped} already done, {summary.prompt_tokens} prompt and "
        f"{summary.completion_tokens} completion tokens in {summary.seconds:.1f} s"
        f"{' (interrupted)' if summary.interrupted else ''}\n"
    )
    if summary.interrupted:
        return INTERRUPTED
    return 1 if summary.failed else 0


async def _progress(summary: BatchSummary, every: float = PROGRESS_EVERY_S) -> None:
    started = time.perf_counter()
    shown = 0
    while True:
        await asyncio.sleep(every)
        if summary.total != shown:
            shown = summary.total
            sys.stderr.write(
                f"inferno batch: {summary.succeeded} succeeded, {summary.failed} failed "
                f"after {time.perf_counter() - started:.0f} s\n"
            )


@contextlib.contextmanager
def _opened(path: str, mode: str, standard: TextIO) -> Iterator[TextIO]:
    if path == "-":
        yield standard
        return
    with open(path, mode, encoding="utf-8") as f:
        yield cast(TextIO, f)


def _usage(message: str) -> int:
    sys.stderr.write(f"inferno batch: {message}\n")
    return 2
