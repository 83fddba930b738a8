"""Regex mode on the CPU: what a whole-output pattern costs the engine, against the same
requests in text mode, in the same run.

The default model's chat, greedy and sampled (temperature 0.8, seed = request index), up to
``--new-tokens`` tokens, each pattern's requests one at a time and then all at once. For each
pattern and mode: output tokens/s (prefill included, so short answers read low), the decode
time per token after the first (the mean over requests of their first-to-last output time over
their tokens after the first), the share of answers that fully match the
pattern (Python's ``re.fullmatch``), and the grammar states met with the time spent computing
their masks (counted by wrapping ``RegexGrammar._compute``). Prints a table and writes JSON.

    uv run python benchmarks/regex_mode_bench.py --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import time
from pathlib import Path
from typing import Any

import torch
from engine_bench import chat_ids
from inferno_inference import GenerationRequest, SamplingParams
from inferno_inference.async_engine import AsyncEngine
from inferno_inference.config import EngineConfig
from inferno_inference.factory import build_llm_engine
from inferno_inference.regex_mode import RegexGrammar
from inferno_memory import HostMemoryResource
from inferno_models import LlamaLoader, default_model_path

CASES = [
    (
        "phone",
        r"\(\d{3}\) \d{3}-\d{4}",
        ["Give me a phone number for a bakery.", "What is a typical US phone number?"],
    ),
    (
        "date",
        r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
        ["When did the first person walk on the moon?", "When did World War II end?"],
    ),
    (
        "yes/no + reason",
        r"(Yes|No), because [^\n.]{10,120}\.",
        ["Is the sky blue?", "Can fish fly?"],
    ),
    (
        "sentence",
        r"[A-Z][^\n]{0,200}[.!?]",
        ["What is the capital of France?", "Describe a cat in one sentence."],
    ),
]


class _MaskClock:
    """Counts the states whose masks were computed and the time it took."""

    def __init__(self) -> None:
        self.states = 0
        self.seconds = 0.0
        self._compute = RegexGrammar._compute

    def __enter__(self) -> _MaskClock:
        clock = self

        def timed(grammar: RegexGrammar, state: Any) -> torch.Tensor:
            t0 = time.perf_counter()
            try:
                return clock._compute(grammar, state)
            finally:
                clock.states += 1
                clock.seconds += time.perf_counter() - t0

        RegexGrammar._compute = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        RegexGrammar._compute = self._compute  # type: ignore[method-assign]


async def _run(
    engine: AsyncEngine, prompts: list[list[int]], sampling: list[SamplingParams], together: bool
) -> tuple[list[str], int, float, float]:
    async def one(i: int) -> tuple[str, int, float]:
        text, tokens, first, last = "", 0, 0.0, 0.0
        request = GenerationRequest(f"r{time.monotonic_ns()}-{i}", tuple(prompts[i]), sampling[i])
        async for out in engine.generate(request):
            last = time.perf_counter()
            if not tokens:
                first = last
            text += out.text
            tokens += len(out.token_ids)
        return text, tokens, (last - first) / max(tokens - 1, 1)

    t0 = time.perf_counter()
    if together:
        results = await asyncio.gather(*(one(i) for i in range(len(prompts))))
    else:
        results = [await one(i) for i in range(len(prompts))]
    seconds = time.perf_counter() - t0
    per_token = sum(r[2] for r in results) / len(results)
    return [r[0] for r in results], sum(r[1] for r in results), seconds, per_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", default="benchmarks/results/regex_mode.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = LlamaLoader().load(default_model_path(), dtype=dtype)
    config = EngineConfig.model_validate(
        {"dtype": args.dtype, "num_threads": args.threads, "kv_cache_bytes": 256 << 20}
    )
    llm = build_llm_engine(
        model.config, model.weights, config, HostMemoryResource(), tokenizer=model.tokenizer
    )
    rows: list[dict[str, Any]] = []

    async def bench() -> None:
        engine = AsyncEngine(llm)
        try:
            for name, pattern, questions in CASES:
                prompts = [chat_ids(model, q) for q in questions for _ in range(4)]
                temps = [0.0, 0.8, 0.8, 0.8] * len(questions)
                for together in (False, True):
                    row: dict[str, Any] = {"pattern": name, "regex": pattern}
                    row["concurrency"] = len(prompts) if together else 1
                    for mode in ("text", "regex"):
                        sampling = [
                            SamplingParams(
                                max_tokens=args.new_tokens,
                                temperature=t,
                                seed=i,
                                regex=pattern if mode == "regex" else None,
                            )
                            for i, t in enumerate(temps)
                        ]
                        with _MaskClock() as clock:
                            texts, tokens, seconds, per_token = await _run(
                                engine, prompts, sampling, together
                            )
                        row[f"{mode}_tok_s"] = tokens / seconds
                        row[f"{mode}_ms_per_token"] = per_token * 1000
                        row[f"{mode}_tokens"] = tokens
                        row[f"{mode}_matches"] = sum(bool(re.fullmatch(pattern, t)) for t in texts)
                        if mode == "regex":
                            row["states"] = clock.states
                            row["mask_seconds"] = clock.seconds
                            row["examples"] = texts[:2]
                    row["answers"] = len(prompts)
                    rows.append(row)
        finally:
            await engine.shutdown()

    asyncio.run(bench())
    print(
        "| pattern | conc. | tok/s text / regex | decode ms/token text / regex | tokens "
        "text / regex | full matches text / regex | states | mask time |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        n = r["answers"]
        print(
            f"| {r['pattern']} | {r['concurrency']} | {r['text_tok_s']:.1f} / "
            f"{r['regex_tok_s']:.1f} | {r['text_ms_per_token']:.1f} / "
            f"{r['regex_ms_per_token']:.1f} | {r['text_tokens']} / {r['regex_tokens']} | "
            f"{r['text_matches']}/{n} / {r['regex_matches']}/{n} | {r['states']} | "
            f"{r['mask_seconds']:.2f} s |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "threads": args.threads}
    meta |= {"dtype": args.dtype, "new_tokens": args.new_tokens, "torch": torch.__version__}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
