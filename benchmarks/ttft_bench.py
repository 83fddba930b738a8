"""Time to first token: 16 chat requests submitted at once to a fresh engine, several times.

The concurrent part of `engine_bench.py` measures TTFT once per run; this repeats it, each
time on a newly built engine (so no run finds the others' prompts in the prefix cache), warmed
with two requests of other questions first, as a daemon that has served a little already
would be (their system prompt, shared by all 16, is then cached). Prints each run and the best
and median p50 / p99, and writes JSON. It only uses APIs older than the engine's recent
changes, so an earlier checkout of the engine can run it too (PYTHONPATH pointing at that
checkout's ``packages/inferno-inference/src``), for a before/after on the same machine.

    uv run python benchmarks/ttft_bench.py [--dtypes float32,bfloat16] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
from pathlib import Path

import torch
from engine_bench import QUESTIONS, chat_ids, engine_concurrent
from inferno_inference.async_engine import AsyncEngine
from inferno_inference.config import EngineConfig
from inferno_inference.factory import build_llm_engine
from inferno_memory import HostMemoryResource
from inferno_models import LlamaLoader, default_model_path

WARM_UP = ["Name a primary color.", "What is two plus two?"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--label", default="", help="a name for this checkout, kept in the JSON")
    ap.add_argument("--out", default="benchmarks/results/ttft.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = LlamaLoader().load(default_model_path(), dtype=torch.float32)
    prompts = [chat_ids(model, q) for q in QUESTIONS]
    warm = [chat_ids(model, q) for q in WARM_UP]
    rows = []
    for dtype_name in args.dtypes.split(","):
        config = EngineConfig(
            dtype=dtype_name,
            kv_cache_bytes=256 << 20,
            max_num_seqs=len(prompts),
            max_num_batched_tokens=512,
        )
        runs = []
        for run in range(args.runs):
            engine = build_llm_engine(
                model.config, model.weights, config, HostMemoryResource(), tokenizer=model.tokenizer
            )
            async_engine = AsyncEngine(engine)
            asyncio.run(engine_concurrent(async_engine, warm, 4, f"warm-{run}"))
            runs.append(
                asyncio.run(engine_concurrent(async_engine, prompts, args.new_tokens, f"r{run}"))
            )
            asyncio.run(async_engine.shutdown())
        p50 = [r["ttft_p50_s"] for r in runs]
        p99 = [r["ttft_p99_s"] for r in runs]
        rows.append(
            {
                "dtype": dtype_name,
                "runs": runs,
                "ttft_p50_best_s": min(p50),
                "ttft_p99_best_s": min(p99),
                "ttft_p50_median_s": statistics.median(p50),
                "ttft_p99_median_s": statistics.median(p99),
            }
        )
        print(
            f"{args.label or 'this checkout'} {dtype_name}: TTFT p99 per run "
            + ", ".join(f"{v:.3f}" for v in p99)
            + f" s; best {min(p99):.3f} s, median {statistics.median(p99):.3f} s"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__}
    out.write_text(
        json.dumps({"machine": machine, "label": args.label, "results": rows}, indent=2) + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
