"""What a new grammar state costs inside a JSON Schema string with a pattern or a format.

The engine computes a state's next-token mask once and caches it; a state met for the first
time pays the computation before the token can be sampled. Inside a patterned string the
tokens are run through the pattern together (`inferno_inference.token_runs`); the fallback is
a walk of the sorted vocabulary byte by byte, which this benchmark runs too, in the same
process on the same states, by turning the vectorized path off. For each string schema: a value is
written into ``{"v": ...}`` one byte at a time, each state's mask computed afresh by both
paths (and checked equal), on the default model's 49,152 tokens. Prints a table and writes
JSON.

    uv run python benchmarks/json_mask_bench.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from inferno_inference import json_mode
from inferno_inference.json_mode import JsonGrammar, JsonState, JsonVocabulary, compile_schema
from inferno_models import LlamaLoader, default_model_path

CASES: dict[str, tuple[dict[str, Any], str]] = {
    "email": ({"format": "email"}, "john.doe@example.com"),
    "uri": ({"format": "uri"}, "https://example.com/a/b?x=1"),
    "date-time": ({"format": "date-time"}, "2024-01-02T03:04:05Z"),
    "name [A-Za-z ]+, maxLength 24": (
        {"pattern": "^[A-Za-z ]+$", "maxLength": 24},
        "John Smith",
    ),
    "words ([a-z]+ ){2,5}[a-z]+": (
        {"pattern": "^([a-z]+ ){2,5}[a-z]+$"},
        "the quick brown fox",
    ),
    "code [A-Z]{3}-[0-9]{2}": ({"pattern": "^[A-Z]{3}-[0-9]{2}$"}, "ABC-12"),
    "sentence [^.]{10,120}\\.": ({"pattern": "^[^.]{10,120}\\.$"}, "It is sunny and warm."),
}


@contextmanager
def walk_only() -> Iterator[None]:
    """Bounded strings' masks by the byte walk of the sorted vocabulary (the earlier path)."""
    original = JsonGrammar._wholesale

    def wholesale(grammar: JsonGrammar, state: JsonState) -> Any:
        bounded = state[0] == json_mode._BOUNDED_STRING
        if bounded and grammar.program.nodes[state[2][0]].pattern is not None:
            return None
        return original(grammar, state)

    JsonGrammar._wholesale = wholesale  # type: ignore[method-assign]
    try:
        yield
    finally:
        JsonGrammar._wholesale = original  # type: ignore[method-assign]


def states(grammar: JsonGrammar, text: str) -> list[JsonState]:
    """The states inside ``"v": "text"`` (the opening quote's to the last character's)."""
    state = grammar.program.advance(grammar.initial, b'{"v": "')
    assert state is not None
    out = [state]
    for b in text.encode():
        nxt = grammar.program.advance(state, bytes([b]))
        assert nxt is not None, text
        state = nxt
        out.append(state)
    return out


def timed_masks(
    vocab: JsonVocabulary, schema: dict[str, Any], text: str
) -> tuple[list[float], list[torch.Tensor]]:
    """Milliseconds of each state's mask, each computed by a fresh grammar (nothing cached)."""
    program = compile_schema(
        json.dumps({"type": "object", "properties": {"v": schema}, "required": ["v"]})
    )
    grammar = JsonGrammar(vocab, [0], program)
    times, masks = [], []
    for state in states(grammar, text):
        grammar = JsonGrammar(vocab, [0], program)
        started = time.perf_counter()
        masks.append(grammar.allowed(state))
        times.append(1000 * (time.perf_counter() - started))
    return times, masks


def main() -> None:
    """Measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/json_mask.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = LlamaLoader().load(default_model_path())
    vocab = JsonVocabulary(model.tokenizer.token_bytes())
    timed_masks(vocab, *CASES["email"])  # warm: the vocabulary's code-point columns
    results = []
    for name, (string, text) in CASES.items():
        schema = {"type": "string", **string}
        run, run_masks = timed_masks(vocab, schema, text)
        with walk_only():
            walk, walk_masks = timed_masks(vocab, schema, text)
        same = all(torch.equal(a, b) for a, b in zip(run_masks, walk_masks, strict=True))
        results.append(
            {
                "schema": name,
                "states": len(run),
                "run_ms": {"mean": statistics.fmean(run), "max": max(run)},
                "walk_ms": {"mean": statistics.fmean(walk), "max": max(walk)},
                "same_masks": same,
            }
        )
    lines = [
        "| string schema | states | run mean / max ms | walk mean / max ms | speed-up | same |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        run, walk = r["run_ms"], r["walk_ms"]
        lines.append(
            f"| {r['schema']} | {r['states']} | {run['mean']:.1f} / {run['max']:.1f} | "
            f"{walk['mean']:.1f} / {walk['max']:.1f} | {walk['mean'] / run['mean']:.1f}x | "
            f"{'yes' if r['same_masks'] else 'NO'} |"
        )
    print("\n".join(lines))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "threads": args.threads,
                "vocab": vocab.size,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
