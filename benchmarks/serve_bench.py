"""Serving benchmark: ``inferno bench serve`` against ``inferno serve`` on the default model.

Starts the daemon, measures concurrency 1 and 16 (streaming completions of a fixed length), and
measures a peer OpenAI-compatible server (``--peer-url``, e.g. llama-cpp-python's server on the
same GGUF) in the same run with the same requests. Prints tables and writes
``benchmarks/results/serve.json``.

    uv run python benchmarks/serve_bench.py [--peer-url http://127.0.0.1:8001 --peer-model NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from inferno_backend.bench import format_table, run_bench

RESULTS = Path(__file__).parent / "results" / "serve.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_inferno(max_num_seqs: int) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "inferno_backend.cli", "serve", "--port", str(port),
           "--max-num-seqs", str(max_num_seqs), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"inferno serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("inferno serve did not become ready")


async def _measure(url: str, model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for concurrency, requests in ((1, args.requests_c1), (16, args.requests_c16)):
        result = await run_bench(
            url, concurrency=concurrency, requests=requests, model=model,
            max_tokens=args.max_tokens, warmup=2,
        )  # fmt: skip
        print(format_table(result, f" {model} @ concurrency {concurrency} "))
        out.append(result.to_dict())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-url", help="base URL of a peer OpenAI-compatible server")
    parser.add_argument("--peer-model", default="default", help="model name the peer expects")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests-c1", type=int, default=8)
    parser.add_argument("--requests-c16", type=int, default=48)
    args = parser.parse_args()
    proc, url = _start_inferno(max_num_seqs=16)
    try:
        runs = {"inferno": asyncio.run(_measure(url, "default", args))}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    if args.peer_url:
        runs["peer"] = asyncio.run(_measure(args.peer_url, args.peer_model, args))
    doc = {
        "benchmark": "serve",
        "model": "SmolLM2-135M-Instruct Q4_1 (weights dequantized to float32)",
        "machine": f"{platform.machine()} {platform.processor() or ''} CPU".strip(),
        "max_tokens": args.max_tokens,
        "peer_url": args.peer_url,
        "runs": runs,
    }
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
