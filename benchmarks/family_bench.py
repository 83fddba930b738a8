"""Batch-1 decode of the Qwen shapes against transformers' own Qwen classes, same run.

Models shaped like Qwen3-0.6B (per-head query/key norms, 128-wide heads: 16 query heads of
128 over a 1024-wide residual stream) and Qwen2.5-0.5B (biases on Q, K and V), with random
weights: decode speed depends on the shapes, not on the values, and no model may be
downloaded here. Both sides get the same weights and thread count; each side's best of
``--reps`` runs is kept, the two alternating (a shared machine steals cycles in bursts).

Prints a table (tokens/s and memory-bandwidth use: weight bytes read per token x tokens/s,
against ``--bandwidth`` GB/s) and writes JSON.

    uv run python benchmarks/family_bench.py [--models qwen3-0.6b,qwen2.5-0.5b] [--dtypes bfloat16]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from engine_bench import engine_decode_rate, hf_decode_rate, hf_generate_time
from inferno_inference.config import EngineConfig
from inferno_inference.factory import build_llm_engine
from inferno_memory import HostMemoryResource
from inferno_models import ModelConfig
from inferno_models.testing import random_weights, transformers_model

SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-0.6b": {
        "architecture": "qwen3",
        "qk_norm": True,
        "vocab_size": 151936,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
    "qwen2.5-0.5b": {
        "architecture": "qwen2",
        "qkv_bias": True,
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
}


def hf_family_model(
    config: ModelConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype
) -> Any:
    """transformers' class for ``config``'s family (Qwen3ForCausalLM, ...) over ``weights``."""
    hf = transformers_model(config, weights)
    hf.generation_config.pad_token_id = 0
    return hf.to(dtype=dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="qwen3-0.6b,qwen2.5-0.5b")
    ap.add_argument("--dtypes", default="bfloat16")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3, help="batch-1 runs per side (best kept)")
    ap.add_argument("--bandwidth", type=float, default=44.0, help="machine GB/s")
    ap.add_argument("--out", default="benchmarks/results/family.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        if name not in SHAPES:
            sys.exit(f"unknown model {name!r}: one of {', '.join(SHAPES)}")
        config = ModelConfig(**SHAPES[name])
        weights = random_weights(config, seed=1)
        prompt = [(7 * i + 11) % 30000 + 100 for i in range(args.prompt_tokens)]
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            engine = build_llm_engine(
                config,
                weights,
                EngineConfig(dtype=dtype_name, kv_cache_bytes=64 << 20, max_num_seqs=4),
                HostMemoryResource(),
            )
            weight_bytes = engine.runner.model.weight_bytes_per_token()
            engine_decode_rate(engine, prompt, 4, f"warm-{name}-{dtype_name}")
            hf = hf_family_model(config, weights, dtype)
            hf_generate_time(hf, [prompt], 2)
            ours, theirs = [], []
            for rep in range(args.reps):
                rid = f"b1-{name}-{dtype_name}-{rep}"
                ours.append(engine_decode_rate(engine, prompt, args.decode_tokens, rid))
                theirs.append(hf_decode_rate(hf, prompt, args.decode_tokens))
            del engine, hf
            best, hf_best = max(ours), max(theirs)
            rows.append(
                {
                    "model": name,
                    "dtype": dtype_name,
                    "weight_bytes_per_token": weight_bytes,
                    "batch1_decode_tok_s": {"inferno": best, "transformers": hf_best},
                    "runs": {"inferno": ours, "transformers": theirs},
                    "speedup": best / hf_best,
                    "bandwidth_util": {
                        "inferno": weight_bytes * best / (args.bandwidth * 1e9),
                        "transformers": weight_bytes * hf_best / (args.bandwidth * 1e9),
                    },
                }
            )
        del weights

    print()
    print(
        f"{'model':14} {'dtype':9} {'inferno tok/s':>13} {'hf tok/s':>9} {'ratio':>6} "
        f"{'bw inferno':>10} {'bw hf':>6}"
    )
    for r in rows:
        tok, bw = r["batch1_decode_tok_s"], r["bandwidth_util"]
        print(
            f"{r['model']:14} {r['dtype']:9} {tok['inferno']:13.1f} {tok['transformers']:9.1f} "
            f"{r['speedup']:6.2f} {bw['inferno']:10.1%} {bw['transformers']:6.1%}"
        )
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": args.threads,
            "torch": torch.__version__,
            "bandwidth_assumed_gb_s": args.bandwidth,
        },
        "decode_tokens": args.decode_tokens,
        "prompt_tokens": args.prompt_tokens,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
