"""Host-side cost of an engine step, with the forward pass replaced by a stub.

On a GPU the forward pass of a decode step takes about a millisecond, and everything else runs
on the host: scheduling, laying out the batch, sampling, detokenizing, stop checks, and
handing each output to its asyncio stream. Unless that work is cheap, it bounds throughput.
This benchmark measures it on any machine: the default model's tokenizer and vocabulary, the
real scheduler, sampler and detokenizers, and a stub forward that returns one-hot logits.

For each concurrency it reports the milliseconds per step of the stepping thread alone
(`LLMEngine.step`) and of the whole `AsyncEngine` path (stepping thread plus the asyncio
consumers, sharing the GIL), with the output tokens/s each allows: the ceiling the host puts on
any device.

    uv run python benchmarks/host_overhead_bench.py [--concurrency 1,16,64] [--new-tokens 128]

Prints a table and writes ``benchmarks/results/host_overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from engine_bench import QUESTIONS, engine_concurrent
from inferno_inference import EngineConfig, build_llm_engine
from inferno_inference.async_engine import AsyncEngine
from inferno_inference.engine import LLMEngine
from inferno_inference.runner import StepInputs
from inferno_inference.types import GenerationRequest, SamplingParams
from inferno_memory import HostMemoryResource
from inferno_models import LlamaLoader, LoadedModel, default_model_path


def stubbed_engine(model: LoadedModel, concurrency: int) -> tuple[LLMEngine, list[int]]:
    """An engine whose forward pass returns one-hot logits (a different token per row and
    step); the returned list counts its steps."""
    config = EngineConfig(
        kv_cache_bytes=512 << 20,
        max_num_seqs=concurrency,
        max_num_batched_tokens=4096,
        cpu_native_decode=False,
    )
    engine = build_llm_engine(
        model.config, model.weights, config, HostMemoryResource(), tokenizer=model.tokenizer
    )
    vocab = model.config.vocab_size
    steps = [0]

    def forward(inputs: StepInputs) -> torch.Tensor:
        steps[0] += 1
        rows = torch.arange(len(inputs.sampled))
        logits = torch.zeros(len(rows), vocab)
        logits[rows, (rows * 7 + steps[0]) % 1000 + 100] = 1.0
        return logits

    engine.runner.execute = forward  # type: ignore[method-assign]
    return engine, steps


def measure(model: LoadedModel, concurrency: int, new_tokens: int) -> dict[str, Any]:
    texts = [QUESTIONS[i % len(QUESTIONS)] + f" ({i})" for i in range(concurrency)]
    prompts = [model.tokenizer.encode(t) for t in texts]
    sp = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)

    engine, steps = stubbed_engine(model, concurrency)
    for i, p in enumerate(prompts):
        engine.add_request(GenerationRequest(f"s{i}", tuple(p), sp))
    engine.step()  # the prefill step
    steps[0] = 0
    t0 = time.perf_counter()
    while engine.has_work():
        engine.step()
    thread_ms = (time.perf_counter() - t0) / steps[0] * 1e3

    engine, steps = stubbed_engine(model, concurrency)
    async_engine = AsyncEngine(engine)
    asyncio.run(engine_concurrent(async_engine, prompts[:2], 4, "warm"))
    steps[0] = 0
    result = asyncio.run(engine_concurrent(async_engine, prompts, new_tokens, "run"))
    asyncio.run(async_engine.shutdown())
    async_ms = result["elapsed_s"] / steps[0] * 1e3
    return {
        "concurrency": concurrency,
        "new_tokens": new_tokens,
        "thread_ms_per_step": thread_ms,
        "async_ms_per_step": async_ms,
        "thread_tok_s_ceiling": concurrency / thread_ms * 1e3,
        "async_tok_s_ceiling": concurrency / async_ms * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results/host_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = LlamaLoader().load(default_model_path(), dtype=torch.float32)
    rows = [measure(model, int(c), args.new_tokens) for c in args.concurrency.split(",")]
    print(f"\n{'streams':>8} {'thread ms/step':>15} {'async ms/step':>14} {'async tok/s cap':>16}")
    for r in rows:
        print(
            f"{r['concurrency']:>8} {r['thread_ms_per_step']:>15.2f} "
            f"{r['async_ms_per_step']:>14.2f} {r['async_tok_s_ceiling']:>16.0f}"
        )
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
