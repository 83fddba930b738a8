"""Batch-1 decode step time as the context grows: the C step against the PyTorch path.

For each dtype and context length, one greedy request with a prompt of that many tokens is
prefilled, then its decode steps are timed (the median of the faster half of ``--steps``
steps, to skip this machine's slow outliers) on an engine with ``cpu_native_decode`` on and
on one with it off (torch's scaled-dot-product attention over the gathered cache). Prints a
table and writes JSON. Runs alternate between the two engines.

    uv run python benchmarks/decode_context_bench.py [--contexts 64,1024,4096] [--steps 32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from inferno_inference import GenerationRequest, SamplingParams
from inferno_inference.config import EngineConfig
from inferno_inference.factory import build_llm_engine
from inferno_memory import HostMemoryResource
from inferno_models import LlamaLoader, default_model_path
from prefill_bench import write_results


def decode_ms(engine: object, prompt: tuple[int, ...], steps: int, rid: str) -> float:
    """The typical decode step of one request after ``prompt``, in milliseconds."""
    eng: object = engine
    sp = SamplingParams(max_tokens=steps + 1, temperature=0, ignore_eos=True)
    eng.add_request(GenerationRequest(rid, prompt, sp))  # type: ignore[attr-defined]
    times: list[float] = []
    produced = 0
    while eng.has_work():  # type: ignore[attr-defined]
        t = time.perf_counter()
        outputs = eng.step()  # type: ignore[attr-defined]
        seconds = time.perf_counter() - t
        # Steps after the first token are pure decodes of this one request.
        if produced:
            times.append(seconds)
        produced += sum(len(o.token_ids) for o in outputs)
    fast = sorted(times)[: max(1, len(times) // 2)]
    return statistics.median(fast) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--contexts", default="64,512,1024,2048,4096")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/decode_context.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = LlamaLoader().load(default_model_path(), dtype=torch.float32)
    vocab = model.config.vocab_size
    rows = []
    for dtype_name in args.dtypes.split(","):
        engines = {
            side: build_llm_engine(
                model.config,
                model.weights,
                EngineConfig(
                    dtype=dtype_name,
                    kv_cache_bytes=1 << 30,
                    enable_prefix_caching=False,
                    cpu_native_decode=native,
                ),
                HostMemoryResource(),
            )
            for side, native in (("C step", True), ("torch", False))
        }
        for n in (int(c) for c in args.contexts.split(",")):
            prompt = tuple((7 * i + 3) % vocab for i in range(n))
            best = dict.fromkeys(engines, float("inf"))
            for rep in range(args.reps):
                for side, engine in engines.items():
                    ms = decode_ms(engine, prompt, args.steps, f"{side}-{n}-{rep}")
                    best[side] = min(best[side], ms)
            rows.append(
                {
                    "dtype": dtype_name,
                    "context": n,
                    "c_step_ms": best["C step"],
                    "torch_ms": best["torch"],
                }
            )
        del engines
    print(f"{'dtype':9} {'context':>8} {'C step ms':>10} {'torch ms':>9} {'speedup':>8}")
    for r in rows:
        print(
            f"{r['dtype']:9} {r['context']:>8} {r['c_step_ms']:>10.2f} {r['torch_ms']:>9.2f}"
            f" {r['torch_ms'] / r['c_step_ms']:>7.2f}x"
        )
    write_results(Path(args.out), args.threads, rows)


if __name__ == "__main__":
    main()
