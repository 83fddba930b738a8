"""Prompt-lookup speculation on the CPU: inferno with and without it, against transformers'
prompt-lookup decoding and its plain greedy ``generate``, in the same run.

Two workloads of the default model's chat: "grounded" requests whose answers repeat their
prompt (copy a passage, edit code, extract a list, quote a line) and "open" ones that do not
(the engine benchmark's questions). Each request runs alone, greedy, up to ``--new-tokens``
tokens, stopping at EOS; a side's rate is its tokens over its wall time (prefill included),
best of ``--reps`` rounds. Then 16 requests at once (both workloads), with and without
speculation. Prints a table and writes JSON.

    uv run python benchmarks/spec_bench.py --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from engine_bench import QUESTIONS, chat_ids, hf_model
from inferno_inference import GenerationRequest, SamplingParams
from inferno_inference.async_engine import AsyncEngine
from inferno_inference.config import EngineConfig
from inferno_inference.engine import LLMEngine
from inferno_inference.factory import build_llm_engine
from inferno_memory import HostMemoryResource
from inferno_models import LlamaLoader, LoadedModel, default_model_path

PASSAGE = (
    "The lighthouse at Port Ellen was built in 1832 from granite quarried on the island. Its "
    "lamp burned whale oil until 1870, then paraffin, and since 1961 it has run on "
    "electricity. The keepers left in 1998, when the light was automated, and the cottages "
    "became a small museum that opens from April to October."
)
CODE = """def mean(values):
    total = 0
    for v in values:
        total += v
    return total / len(values)


def variance(values):
    m = mean(values)
    total = 0
    for v in values:
        total += (v - m) ** 2
    return total / len(values)
"""
GROUNDED = [
    f"Repeat the following text exactly, word for word:\n\n{PASSAGE}",
    f"Rename the function mean to average everywhere in this code and show the whole "
    f"code:\n\n{CODE}",
    f"List every year mentioned in this text, one per line, each with its sentence:\n\n{PASSAGE}",
    f"Copy this code and add a docstring to each function:\n\n{CODE}",
]


def engine_run(engine: LLMEngine, new_tokens: int, prompt: list[int], rid: object) -> list[int]:
    sp = SamplingParams(max_tokens=new_tokens, temperature=0)
    engine.add_request(GenerationRequest(str(rid), tuple(prompt), sp))
    tokens: list[int] = []
    while engine.has_work():
        for out in engine.step():
            tokens.extend(out.token_ids)
    return tokens


def hf_run(hf: Any, new_tokens: int, lookup: int, prompt: list[int], _: object) -> list[int]:
    ids = torch.tensor([prompt])
    extra = {"prompt_lookup_num_tokens": lookup} if lookup else {}
    with torch.inference_mode():
        out = hf.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            top_k=None,
            top_p=None,
            **extra,
        )
    return [int(t) for t in out[0, len(prompt) :]]


def alternate(
    sides: dict[str, Any], prompts: list[list[int]], reps: int
) -> dict[str, tuple[float, list[list[int]]]]:
    """Each side's best tokens/s over ``reps`` rounds of every prompt one at a time (the
    sides taking turns round by round), with its tokens."""
    best = dict.fromkeys(sides, 0.0)
    tokens: dict[str, list[list[int]]] = {}
    for _ in range(reps):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            tokens[name] = [fn(p, i) for i, p in enumerate(prompts)]
            elapsed = time.perf_counter() - t0
            best[name] = max(best[name], sum(len(t) for t in tokens[name]) / elapsed)
    return {name: (best[name], tokens[name]) for name in sides}


async def concurrent(engine: LLMEngine, prompts: list[list[int]], new_tokens: int) -> float:
    aengine = AsyncEngine(engine)
    sp = SamplingParams(max_tokens=new_tokens, temperature=0)

    async def one(i: int, p: list[int]) -> int:
        n = 0
        async for out in aengine.generate(GenerationRequest(f"c{i}", tuple(p), sp)):
            n += len(out.token_ids)
        return n

    try:
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        return sum(counts) / (time.perf_counter() - t0)
    finally:
        await aengine.shutdown()


def build(model: LoadedModel, dtype: str, k: int) -> LLMEngine:
    config = EngineConfig.model_validate(
        {"dtype": dtype, "kv_cache_bytes": 256 << 20, "speculative_tokens": k}
    )
    return build_llm_engine(
        model.config, model.weights, config, HostMemoryResource(), tokenizer=model.tokenizer
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dtypes", default="bfloat16")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--draft", type=int, default=4, help="draft tokens per step (both sides)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--skip-hf", action="store_true", help="inferno only")
    ap.add_argument("--out", default="benchmarks/results/spec.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = LlamaLoader().load(default_model_path(), dtype=torch.float32)
    workloads = {
        "grounded": [chat_ids(model, q) for q in GROUNDED],
        "open": [chat_ids(model, q) for q in QUESTIONS[:4]],
    }
    results: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "draft_tokens": args.draft,
        "rows": [],
    }
    table = []
    for dtype in args.dtypes.split(","):
        plain, spec = build(model, dtype, 0), build(model, dtype, args.draft)
        for engine in (plain, spec):
            engine_run(engine, 8, workloads["open"][0], "warm")
        hf = None
        if not args.skip_hf:
            hf = hf_model(model.config, model.weights, getattr(torch, dtype))
            hf.generation_config.eos_token_id = list(model.tokenizer.eos_token_ids)
        for name, prompts in workloads.items():
            n = args.new_tokens
            sides: dict[str, Any] = {
                "plain": partial(engine_run, plain, n),
                "spec": partial(engine_run, spec, n),
            }
            if hf is not None:
                sides["hf"] = partial(hf_run, hf, n, 0)
                sides["hf_lookup"] = partial(hf_run, hf, n, args.draft)
            before = (spec.draft_tokens_total, spec.accepted_draft_tokens_total)
            got = alternate(sides, prompts, args.reps)
            drafted = spec.draft_tokens_total - before[0]
            kept = spec.accepted_draft_tokens_total - before[1]
            (plain_rate, plain_tokens), (spec_rate, spec_tokens) = got["plain"], got["spec"]
            same = sum(a == b for a, b in zip(plain_tokens, spec_tokens, strict=True))
            row: dict[str, Any] = {
                "dtype": dtype,
                "workload": name,
                "tokens": sum(len(t) for t in spec_tokens),
                "inferno_tok_s": plain_rate,
                "inferno_spec_tok_s": spec_rate,
                "spec_same_tokens": same,
                "prompts": len(prompts),
                "draft_acceptance": kept / drafted if drafted else 0.0,
            }
            if hf is not None:
                row["transformers_tok_s"] = got["hf"][0]
                row["transformers_lookup_tok_s"] = got["hf_lookup"][0]
                row["same_as_transformers"] = sum(
                    a == b for a, b in zip(plain_tokens, got["hf"][1], strict=True)
                )
            results["rows"].append(row)
            table.append(row)
        mixed = (workloads["grounded"] + workloads["open"]) * 2
        # Fresh engines (shutting an AsyncEngine down releases its engine's cache), the two
        # sides alternating and each one's best kept: bursts of other load on a shared
        # machine move single runs by 15%.
        runs: dict[str, list[float]] = {"plain": [], "spec": []}
        for _ in range(args.reps):
            for label, k in (("plain", 0), ("spec", args.draft)):
                engine = build(model, dtype, k)
                runs[label].append(asyncio.run(concurrent(engine, mixed, args.new_tokens)))
        conc = {label: max(rates) for label, rates in runs.items()}
        results["rows"].append({"dtype": dtype, "workload": "16 concurrent", **conc, "runs": runs})
        table.append({"dtype": dtype, "workload": "16 concurrent", **conc})

    print(
        "| dtype | workload | inferno | inferno + lookup | transformers | transformers + lookup"
        " | lookup gain | vs transformers + lookup | acceptance | same tokens |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in table:
        if "plain" in r:
            print(
                f"| {r['dtype']} | {r['workload']} | {r['plain']:.1f} | {r['spec']:.1f} | | "
                f"| {r['spec'] / r['plain']:.2f}x | | | |"
            )
            continue
        ours = r["inferno_spec_tok_s"]
        hf_s = f"{r['transformers_tok_s']:.1f}" if "transformers_tok_s" in r else ""
        hfl = r.get("transformers_lookup_tok_s")
        hfl_s = f"{hfl:.1f}" if hfl else ""
        vs = f"{ours / hfl:.2f}x" if hfl else ""
        print(
            f"| {r['dtype']} | {r['workload']} | {r['inferno_tok_s']:.1f} | {ours:.1f} | "
            f"{hf_s} | {hfl_s} | {ours / r['inferno_tok_s']:.2f}x | {vs} | "
            f"{r['draft_acceptance']:.0%} | {r['spec_same_tokens']}/{r['prompts']} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
