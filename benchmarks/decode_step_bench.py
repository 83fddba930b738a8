"""Decode-step benchmark: the engine's C decode path against its PyTorch path, same run.

For each dtype and each number of sequences M, fills a running batch of M requests on the
default model, then times single decode steps (best of 16) with ``cpu_native_decode`` on and
off. Prints a table and writes ``benchmarks/results/decode_step.json``.

    uv run python benchmarks/decode_step_bench.py [--dtypes bfloat16,float32] [--rows 1,4,16,32]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from inferno_inference import EngineConfig, GenerationRequest, SamplingParams, build_llm_engine
from inferno_memory import HostMemoryResource
from inferno_models import load_model


def step_ms(engine: object, rows: int, tag: str) -> float:
    """Best time of one decode step with ``rows`` sequences running (prompts of 40+ tokens)."""
    eng: object = engine
    for i in range(rows):
        eng.add_request(  # type: ignore[attr-defined]
            GenerationRequest(
                f"{tag}-{i}",
                tuple(range(100, 140 + i)),
                SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True),
            )
        )
    sched = eng.scheduler  # type: ignore[attr-defined]
    while sched.waiting or any(s.is_prefilling for s in sched.running):
        eng.step()  # type: ignore[attr-defined]
    times = []
    for _ in range(16):
        t = time.perf_counter()
        eng.step()  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t)
    while eng.has_work():  # type: ignore[attr-defined]
        eng.step()  # type: ignore[attr-defined]
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--rows", default="1,4,16,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/decode_step.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [int(r) for r in args.rows.split(",")]
    model = load_model("default")
    results = []
    for dtype in args.dtypes.split(","):
        for native in (True, False):
            config = EngineConfig(
                dtype=dtype,
                cpu_native_decode=native,
                max_num_seqs=max(rows),
                cpu_native_max_rows=max(rows),
                max_num_batched_tokens=max(512, 48 * max(rows)),
            )
            engine = build_llm_engine(
                model.config, model.weights, config, HostMemoryResource(), tokenizer=model.tokenizer
            )
            for m in rows:
                ms = step_ms(engine, m, f"{dtype}-{native}-{m}")
                results.append({"dtype": dtype, "native": native, "rows": m, "step_ms": ms})
    print(f"{'dtype':9} {'rows':>5} {'C path ms':>10} {'PyTorch ms':>11} {'speedup':>8}")
    for dtype in args.dtypes.split(","):
        for m in rows:
            c = next(r for r in results if r["dtype"] == dtype and r["native"] and r["rows"] == m)
            t = next(
                r for r in results if r["dtype"] == dtype and not r["native"] and r["rows"] == m
            )
            print(
                f"{dtype:9} {m:5d} {c['step_ms']:10.1f} {t['step_ms']:11.1f} "
                f"{t['step_ms'] / c['step_ms']:7.2f}x"
            )
    out = {
        "machine": {"platform": platform.platform(), "threads": args.threads},
        "torch": torch.__version__,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
