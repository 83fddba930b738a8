"""Request priority under load: how soon an urgent request answers when the engine is full.

The default model serves 8 background chat requests of 128 new tokens each, as many as the
engine runs at once (``max_num_seqs`` 8), with 8 more waiting behind them. Once they are all
decoding, one short urgent request (32 new tokens) arrives. With ``priority`` it preempts the
youngest background request and starts at the next step; without it (FIFO, the peer here:
what the engine did before priorities, and what a server without them does) it waits for
the queue. Several runs alternate the two, each on a fresh engine. Prints a table of the
urgent request's time to first token and total time, and writes JSON.

    uv run python benchmarks/priority_bench.py [--dtype bfloat16] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from engine_bench import QUESTIONS, chat_ids
from inferno_inference import SamplingParams
from inferno_inference.async_engine import AsyncEngine
from inferno_inference.config import EngineConfig
from inferno_inference.factory import build_llm_engine
from inferno_inference.types import GenerationRequest
from inferno_memory import HostMemoryResource
from inferno_models import LlamaLoader, LoadedModel, default_model_path

SLOTS = 8
URGENT = "Reply with one word: is water wet?"


async def _one(
    engine: AsyncEngine, request: GenerationRequest, started: float
) -> tuple[float, float]:
    """(time to first token, time to the end) of ``request``, from ``started``."""
    first = None
    async for out in engine.generate(request):
        if first is None and out.token_ids:
            first = time.perf_counter() - started
    return (first if first is not None else float("nan")), time.perf_counter() - started


async def _run(model: LoadedModel, config: EngineConfig, urgent_priority: int, run: int) -> dict:
    engine = AsyncEngine(
        build_llm_engine(
            model.config, model.weights, config, HostMemoryResource(), tokenizer=model.tokenizer
        )
    )
    background = SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
    quick = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
    prompts = [chat_ids(model, q) for q in QUESTIONS]
    t0 = time.perf_counter()
    tasks = [
        asyncio.create_task(
            _one(engine, GenerationRequest(f"bg-{run}-{i}", tuple(p), background, 1), t0)
        )
        for i, p in enumerate(prompts[: 2 * SLOTS])
    ]
    # Polled: the engine's counters have no event to wait on.
    while engine.stats().running < SLOTS or engine.engine.generation_tokens_total < 4 * SLOTS:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    arrived = time.perf_counter()
    request = GenerationRequest(
        f"urgent-{run}", tuple(chat_ids(model, URGENT)), quick, urgent_priority
    )
    ttft, total = await _one(engine, request, arrived)
    await asyncio.gather(*tasks)
    preemptions = engine.stats().preemptions_total
    await engine.shutdown()
    return {"ttft_s": ttft, "total_s": total, "preemptions": preemptions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/priority.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = LlamaLoader().load(default_model_path(), dtype=torch.float32)
    config = EngineConfig(
        dtype=args.dtype, kv_cache_bytes=256 << 20, max_num_seqs=SLOTS, max_num_batched_tokens=512
    )
    runs: dict[str, list[dict]] = {"priority": [], "fifo": []}
    for run in range(args.runs):
        # The background requests have priority 1: the urgent one comes ahead with 0, and
        # behind them, as FIFO would put it, with 1.
        for name, urgent_priority in (("priority", 0), ("fifo", 1)):
            runs[name].append(asyncio.run(_run(model, config, urgent_priority, run)))
    table = []
    for name, results in runs.items():
        table.append(
            {
                "scheduling": name,
                "ttft_median_s": statistics.median(r["ttft_s"] for r in results),
                "total_median_s": statistics.median(r["total_s"] for r in results),
                "preemptions_median": statistics.median(r["preemptions"] for r in results),
            }
        )
    print(f"\nurgent request among {2 * SLOTS} background ones, {args.dtype}, {args.runs} runs:")
    print("| scheduling | TTFT (median) | total, 32 tokens (median) | preemptions |")
    print("|---|---:|---:|---:|")
    for row in table:
        print(
            f"| {row['scheduling']} | {row['ttft_median_s']:.2f} s | "
            f"{row['total_median_s']:.2f} s | {row['preemptions_median']:.0f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "threads": args.threads}
    out.write_text(json.dumps({"meta": meta, "table": table, "runs": runs}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
