"""Sampling cost on the CPU: inferno's `Sampler` against transformers' logits warpers.

Real next-token logits of the default model (its chat answers to a few questions, sampled at
temperature 0.8 by transformers, every step's logits kept), then each sampling setting timed
over those rows in batches of 1 and 16: inferno's ``Sampler`` (one call per batch, each row
its own parameters) and transformers' ``TemperatureLogitsWarper`` / ``TopKLogitsWarper`` /
``TopPLogitsWarper`` / ``MinPLogitsWarper`` then ``softmax`` + ``multinomial``, the path its
``generate(do_sample=True)`` takes. Both draw from the same filtered distribution. Prints a
table (milliseconds per batch) and writes JSON.

    uv run python benchmarks/sampler_bench.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from engine_bench import chat_ids, hf_model
from inferno_inference import SamplingParams
from inferno_inference.sampler import Sampler
from inferno_inference.sequence import Sequence
from inferno_models import LlamaLoader, default_model_path

QUESTIONS = [
    "Write a short poem about the sea.",
    "What is the capital of France?",
    "Explain photosynthesis briefly.",
    "List three uses of a paperclip.",
]

SETTINGS: dict[str, dict[str, float | int]] = {
    "temperature 0.8": {"temperature": 0.8},
    "t 0.8, top_p 0.9": {"temperature": 0.8, "top_p": 0.9},
    "t 1.0, top_p 0.95": {"temperature": 1.0, "top_p": 0.95},
    "t 0.7, top_k 40, top_p 0.95": {"temperature": 0.7, "top_k": 40, "top_p": 0.95},
    "t 0.6, min_p 0.05": {"temperature": 0.6, "min_p": 0.05},
    "t 0.8, top_p 0.95, repetition_penalty 1.1, 4K context": {
        "temperature": 0.8,
        "top_p": 0.95,
        "repetition_penalty": 1.1,
    },
}
#: Tokens before the sampled position where a setting has a penalty (what it looks back on);
#: each call then appends one sampled token per row, as decoding does.
PENALTY_CONTEXT = 4096


def model_logits(new_tokens: int) -> torch.Tensor:
    """``[rows, vocab]`` fp32 logits of the default model along its own sampled answers."""
    model = LlamaLoader().load(default_model_path())
    hf = hf_model(model.config, model.weights, torch.float32)
    rows: list[torch.Tensor] = []
    torch.manual_seed(0)
    for question in QUESTIONS:
        ids = torch.tensor([chat_ids(model, question)])
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=True,
                temperature=0.8,
                top_k=None,
                top_p=None,
                output_logits=True,
                return_dict_in_generate=True,
            )
        rows += [step[0].float() for step in out.logits]
    return torch.stack(rows)


def hf_sampler(setting: dict[str, float | int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """transformers' warpers for ``setting``, then one multinomial draw per row."""
    from transformers import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers: list[Any] = []
    if setting.get("repetition_penalty"):
        warpers.append(RepetitionPenaltyLogitsProcessor(float(setting["repetition_penalty"])))
    warpers.append(TemperatureLogitsWarper(float(setting["temperature"])))
    if setting.get("top_k"):
        warpers.append(TopKLogitsWarper(int(setting["top_k"])))
    if setting.get("top_p"):
        warpers.append(TopPLogitsWarper(float(setting["top_p"])))
    if setting.get("min_p"):
        warpers.append(MinPLogitsWarper(float(setting["min_p"])))
    context = PENALTY_CONTEXT if setting.get("repetition_penalty") else 1
    history: list[torch.Tensor] = []

    def sample(logits: torch.Tensor) -> torch.Tensor:
        if not history or history[0].shape[0] != logits.shape[0]:
            history[:] = [_context(logits.shape[0], context, logits.shape[1])]
        ids = history[0]
        for warper in warpers:
            logits = warper(ids, logits)
        picks = torch.multinomial(torch.softmax(logits, dim=-1), 1)
        history[0] = torch.cat([ids, picks], dim=1)
        return picks

    return sample


def _context(rows: int, length: int, vocab: int) -> torch.Tensor:
    """``[rows, length]`` token ids, the same for both samplers."""
    return torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(0))


def inferno_sampler(
    setting: dict[str, float | int], batch: int
) -> Callable[[torch.Tensor], object]:
    """inferno's `Sampler` over ``batch`` unseeded sequences with ``setting``, each token it
    samples appended to its sequence."""
    sampler = Sampler(seed=0)
    sp = SamplingParams.model_validate(setting)
    context = PENALTY_CONTEXT if setting.get("repetition_penalty") else 3
    seqs: list[Sequence] = []

    def sample(logits: torch.Tensor) -> object:
        if not seqs:
            ids = _context(batch, context, logits.shape[1]).tolist()
            seqs.extend(Sequence(i, f"r{i}", 0, ids[i], context, sp, 0.0) for i in range(batch))
        result = sampler(logits, seqs)
        for seq, token in zip(seqs, result.token_ids, strict=True):
            seq.token_ids.append(token)
        return result

    return sample


def per_batch_ms(fn: Callable[[torch.Tensor], object], rows: torch.Tensor, batch: int) -> float:
    """Mean milliseconds of ``fn`` over consecutive ``batch``-row slices of ``rows``."""
    slices = [rows[i : i + batch] for i in range(0, rows.shape[0] - batch + 1, batch)]
    fn(slices[0])  # warm
    started = time.perf_counter()
    for piece in slices:
        fn(piece)
    return 1000 * (time.perf_counter() - started) / len(slices)


def main() -> None:
    """Measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=48, help="logit rows per question")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds, best kept")
    parser.add_argument("--out", default="benchmarks/results/sampler.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = model_logits(args.new_tokens)
    results: list[dict[str, Any]] = []
    for batch in (1, 16):
        for name, setting in SETTINGS.items():
            ours, theirs = inferno_sampler(setting, batch), hf_sampler(setting)
            runs: dict[str, list[float]] = {"inferno": [], "transformers": []}
            for _ in range(args.rounds):
                runs["inferno"].append(per_batch_ms(ours, rows, batch))
                runs["transformers"].append(per_batch_ms(theirs, rows, batch))
            results.append(
                {
                    "batch": batch,
                    "setting": name,
                    "inferno_ms": min(runs["inferno"]),
                    "transformers_ms": min(runs["transformers"]),
                    "runs": runs,
                }
            )
    lines = [
        "| batch | setting | inferno ms | transformers ms | speed-up |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['batch']} | {r['setting']} | {r['inferno_ms']:.2f} | "
            f"{r['transformers_ms']:.2f} | {r['transformers_ms'] / r['inferno_ms']:.2f}x |"
        )
    print(f"{rows.shape[0]} logit rows of {rows.shape[1]} tokens, {args.threads} threads")
    print("\n".join(lines))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "threads": args.threads,
                "rows": rows.shape[0],
                "vocab": rows.shape[1],
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
