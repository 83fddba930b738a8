"""Serving benchmark: ``inferno bench serve`` against ``inferno serve`` on the default model.

Starts the daemon, measures concurrency 1 and 16 (streaming completions of a fixed length), then
measures the peers on the same GGUF in the same run with the same requests, one server at a time
so they never share the CPU: llama.cpp's Python server (``--llama-cpp-python PYTHON``, an
interpreter with ``llama-cpp-python[server]`` installed; it serves one request at a time),
llama.cpp's C++ server (``--llama-server PATH``, started with 16 parallel slots), or any running
OpenAI-compatible server (``--peer-url``). Prints tables and a summary, writes
``benchmarks/results/serve.json`` (``--out`` elsewhere).

    uv run python benchmarks/serve_bench.py [--inferno float32 --inferno bfloat16+int8] \
        [--llama-cpp-python /opt/peers/bin/python] [--llama-server /path/to/llama-server] \
        [--temperature 0.8 --top-p 0.95]   # greedy unless asked
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inferno_backend.bench import format_table, run_bench

RESULTS = Path(__file__).parent / "results" / "serve.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(name: str, cmd: list[str], port: int, ready_path: str) -> subprocess.Popen[bytes]:
    """Start a server and wait until ``ready_path`` answers 200."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + ready_path, timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{name} did not become ready")


@contextlib.contextmanager
def serving(name: str, cmd: list[str], port: int, ready_path: str) -> Iterator[str]:
    """Run a server for the block and yield its base URL; SIGTERM (then kill) it after."""
    proc = _start(name, cmd, port, ready_path)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _servers(args: argparse.Namespace) -> list[tuple[str, list[str], int, str, str]]:
    """(name, command, port, readiness path, model name) of every server to measure."""
    from inferno_models import default_model_path

    gguf = str(default_model_path())
    out = []
    for variant in args.inferno:
        dtype, _, quant = variant.partition("+")
        port = _free_port()
        out.append((
            f"inferno {variant}",
            [sys.executable, "-m", "inferno_backend.cli", "serve", "--port", str(port),
             "--max-num-seqs", "16", "--dtype", dtype, "--weight-quantization",
             quant or "none", "--log-level", "warning"],
            port, "/health/ready", "default",
        ))  # fmt: skip
    if args.llama_cpp_python:
        port = _free_port()
        out.append((
            "llama-cpp-python",
            [args.llama_cpp_python, "-m", "llama_cpp.server", "--model", gguf, "--host",
             "127.0.0.1", "--port", str(port), "--n_threads", str(args.threads), "--n_ctx",
             "2048", "--model_alias", "default",
             # Queue concurrent requests rather than cutting the running stream short.
             "--interrupt_requests", "False"],
            port, "/v1/models", "default",
        ))  # fmt: skip
    if args.llama_server:
        port = _free_port()
        out.append((
            "llama-server",
            [args.llama_server, "-m", gguf, "--host", "127.0.0.1", "--port", str(port),
             "-t", str(args.threads), "-np", "16", "-c", str(16 * 512), "--log-disable"],
            port, "/health", "default",
        ))  # fmt: skip
    return out


async def _measure(url: str, model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for concurrency, requests in ((1, args.requests_c1), (16, args.requests_c16)):
        result = await run_bench(
            url, concurrency=concurrency, requests=requests, model=model,
            max_tokens=args.max_tokens, warmup=2, temperature=args.temperature,
            top_p=args.top_p,
        )  # fmt: skip
        print(format_table(result, f" {model} @ concurrency {concurrency} "))
        out.append(result.to_dict())
    return out


def _summary(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Output tokens/s and TTFT p99 per server and concurrency, with the first server's ratio
    to each."""
    lines = [f"{'server':<24}{'conc':>6}{'out tok/s':>12}{'TTFT p99 ms':>14}{'first x':>10}"]
    first = next(iter(runs.values()), [])
    base = {r["concurrency"]: r["output_throughput"] for r in first}
    for name, results in runs.items():
        for r in results:
            ratio = base.get(r["concurrency"], 0.0) / r["output_throughput"]
            lines.append(
                f"{name:<24}{r['concurrency']:>6}{r['output_throughput']:>12.1f}"
                f"{r['ttft_ms']['p99']:>14.0f}{ratio:>9.2f}x"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-url", help="base URL of a running OpenAI-compatible server")
    parser.add_argument("--llama-cpp-python", help="python with llama-cpp-python[server]")
    parser.add_argument("--llama-server", help="path of a llama.cpp llama-server binary")
    parser.add_argument(
        "--inferno",
        action="append",
        help="inferno configuration DTYPE[+int8], repeatable (default: float32)",
    )
    parser.add_argument("--threads", type=int, default=2, help="peers' CPU threads")
    parser.add_argument("--peer-model", default="default", help="model name the peer expects")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass when sampling")
    parser.add_argument("--requests-c1", type=int, default=8)
    parser.add_argument("--requests-c16", type=int, default=48)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    args.inferno = args.inferno or ["float32"]
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, cmd, port, ready, model in _servers(args):
        with serving(name, cmd, port, ready) as url:
            runs[name] = asyncio.run(_measure(url, model, args))
    if args.peer_url:
        runs["peer"] = asyncio.run(_measure(args.peer_url, args.peer_model, args))
    print(_summary(runs))
    doc = {
        "benchmark": "serve",
        "model": "SmolLM2-135M-Instruct Q4_1 (inferno: dequantized to each variant's dtype)",
        "inferno_variants": args.inferno,
        "machine": f"{platform.machine()} {platform.processor() or ''} CPU".strip(),
        "max_tokens": args.max_tokens,
        "sampling": {"temperature": args.temperature, "top_p": args.top_p},
        "peer_url": args.peer_url,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
