"""CPU: weight memory and prefill time with the native matmuls on and off.

With ``cpu_native_matmuls`` (the default) every matmul runs in the engine's C kernels on the
packed weight copy the decode path uses, and no other copy is kept; off, prefill chunks run on
oneDNN-prepacked weights kept next to it. For the default model in bf16 and fp32 this reports
the engine's resident memory (RSS growth while the engine is built, the loaded model's tensors
already counted) and the best of four prefills of a 511-token prompt. Each configuration runs
in its own process, so their memory does not mix.

    uv run python benchmarks/prefill_memory_bench.py [--threads 2]

Prints a table and writes ``benchmarks/results/prefill_memory.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def measure(dtype: str, native_matmuls: bool, threads: int) -> dict[str, Any]:
    """One configuration, in this process."""
    import torch
    from inferno_inference import EngineConfig, build_llm_engine
    from inferno_inference.types import GenerationRequest, SamplingParams
    from inferno_memory import HostMemoryResource
    from inferno_models import LlamaLoader, default_model_path

    torch.set_num_threads(threads)
    model = LlamaLoader().load(default_model_path(), dtype=getattr(torch, dtype))
    weight_mib = sum(t.nbytes for t in model.weights.values()) / 2**20
    gc.collect()
    base = _rss_mib()
    config = EngineConfig(
        dtype=dtype,
        kv_cache_bytes=64 << 20,
        max_num_batched_tokens=512,
        cpu_native_matmuls=native_matmuls,
    )
    engine = build_llm_engine(model.config, model.weights, config, HostMemoryResource())
    del model
    gc.collect()
    growth = _rss_mib() - base
    best = float("inf")
    for r in range(4):
        prompt = tuple(100 + r + i for i in range(511))
        sp = SamplingParams(max_tokens=1, temperature=0)
        engine.add_request(GenerationRequest(f"p{r}", prompt, sp))
        t0 = time.perf_counter()
        while engine.has_work():
            engine.step()
        best = min(best, time.perf_counter() - t0)
    return {
        "dtype": dtype,
        "native_matmuls": native_matmuls,
        "weights_mib": weight_mib,
        "engine_rss_growth_mib": growth,
        "prefill_511_tokens_ms": best * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/prefill_memory.json")
    ap.add_argument("--one", nargs=2, metavar=("DTYPE", "NATIVE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1] == "1", args.threads)))
        return
    rows = []
    for dtype in ("bfloat16", "float32"):
        for native in ("1", "0"):
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--one", dtype, native]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    header = f"{'dtype':9} {'matmuls':8} {'weights MiB':>12} {'engine RSS MiB':>15}"
    print(f"\n{header} {'prefill ms':>11}")
    for r in rows:
        print(
            f"{r['dtype']:9} {'native' if r['native_matmuls'] else 'oneDNN':8} "
            f"{r['weights_mib']:>12.0f} {r['engine_rss_growth_mib']:>15.0f} "
            f"{r['prefill_511_tokens_ms']:>11.1f}"
        )
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "threads": args.threads,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
