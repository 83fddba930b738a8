"""``inferno bench serve``: benchmark a running OpenAI-compatible server."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from inferno_backend.bench import format_table, run_bench

__all__ = ["register", "run_serve_bench"]


def register(subparsers: Any) -> None:
    """Add ``bench`` with its ``serve`` subcommand."""
    bench = subparsers.add_parser("bench", help="benchmarks")
    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    p = kinds.add_parser("serve", help="measure throughput, TTFT, TPOT and ITL of a running server")
    p.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    p.add_argument("--requests", type=int, default=32, help="requests to send")
    p.add_argument("--model", default="default", help="model name to request")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    p.add_argument("--prompt-words", type=int, default=24, help="words per prompt")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass when sampling")
    p.add_argument("--api-key", help="Bearer key")
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    p.set_defaults(func=run_serve_bench)


def run_serve_bench(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table; exit 1 if any request failed."""
    if args.concurrency < 1 or args.requests < 1:
        sys.stderr.write("inferno bench serve: --concurrency and --requests must be >= 1\n")
        return 2
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        sys.stderr.write("inferno bench serve: --temperature must be >= 0, --top-p in (0, 1]\n")
        return 2
    result = asyncio.run(
        run_bench(
            args.url,
            concurrency=args.concurrency,
            requests=args.requests,
            model=args.model,
            max_tokens=args.max_tokens,
            prompt_words=args.prompt_words,
            api_key=args.api_key,
            temperature=args.temperature,
            top_p=args.top_p,
        )
    )
    sys.stdout.write(format_table(result) + "\n")
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 1 if result.failed else 0
