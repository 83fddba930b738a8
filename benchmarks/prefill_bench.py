"""Prefill of one prompt: the C step against torch (its flash attention), by prompt length.

For each length, one prompt of that many tokens is prefilled (one new token generated) by an
engine whose C step takes prefill chunks (``cpu_native_max_prefill_context`` above the length)
and by the same engine with prefill left to torch (``cpu_native_max_prefill_context=0``; its
matmuls still run in C on the same packed weights). Best of ``--reps`` alternating runs; the
prefix cache is off so every run computes the whole prompt. Prints a table and writes JSON;
the crossover is what ``cpu_native_max_prefill_context``'s default rests on.

    uv run python benchmarks/prefill_bench.py [--lengths 64,128,256,512,1024] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from inferno_inference import GenerationRequest, SamplingParams
from inferno_inference.config import EngineConfig
from inferno_inference.factory import build_llm_engine
from inferno_memory import HostMemoryResource
from inferno_models import LlamaLoader, default_model_path


def prefill_seconds(engine: object, prompt: tuple[int, ...], rid: str) -> float:
    eng: object = engine
    sp = SamplingParams(max_tokens=1, ignore_eos=True)
    eng.add_request(GenerationRequest(rid, prompt, sp))  # type: ignore[attr-defined]
    t = time.perf_counter()
    while eng.has_work():  # type: ignore[attr-defined]
        eng.step()  # type: ignore[attr-defined]
    return time.perf_counter() - t


def write_results(out: Path, threads: int, rows: list[dict[str, object]]) -> None:
    """Write ``rows`` and the machine they ran on to ``out`` as JSON, and say so."""
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "threads": threads, "torch": torch.__version__}
    out.write_text(json.dumps({"machine": machine, "results": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lengths", default="64,128,256,512,1024")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/prefill.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = LlamaLoader().load(default_model_path(), dtype=torch.float32)
    lengths = [int(n) for n in args.lengths.split(",")]
    vocab = model.config.vocab_size
    rows = []
    for dtype_name in args.dtypes.split(","):
        engines = {}
        for side, limit in (("C step", max(lengths)), ("torch", 0)):
            config = EngineConfig(
                dtype=dtype_name,
                kv_cache_bytes=256 << 20,
                max_num_batched_tokens=512,
                enable_prefix_caching=False,
                cpu_native_max_prefill_context=limit,
            )
            engines[side] = build_llm_engine(
                model.config, model.weights, config, HostMemoryResource()
            )
        for n in lengths:
            prompt = tuple((7 * i + 3) % vocab for i in range(n))
            best = dict.fromkeys(engines, float("inf"))
            for rep in range(args.reps):
                for side, engine in engines.items():
                    seconds = prefill_seconds(engine, prompt, f"{side}-{n}-{rep}")
                    best[side] = min(best[side], seconds)
            rows.append(
                {
                    "dtype": dtype_name,
                    "prompt_tokens": n,
                    "c_step_ms": best["C step"] * 1e3,
                    "torch_ms": best["torch"] * 1e3,
                }
            )
        del engines
    print(f"{'dtype':9} {'tokens':>7} {'C step ms':>10} {'torch ms':>9} {'C / torch':>10}")
    for r in rows:
        print(
            f"{r['dtype']:9} {r['prompt_tokens']:>7} {r['c_step_ms']:>10.0f} {r['torch_ms']:>9.0f}"
            f" {r['c_step_ms'] / r['torch_ms']:>10.2f}"
        )
    write_results(Path(args.out), args.threads, rows)


if __name__ == "__main__":
    main()
