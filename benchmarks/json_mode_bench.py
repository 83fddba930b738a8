"""JSON mode: what ``response_format`` ``json_object`` and ``json_schema`` cost, and what they buy.

Starts ``inferno serve`` on the default model, and llama.cpp's Python server on the same GGUF
when ``--llama-cpp-python PYTHON`` names an interpreter with ``llama-cpp-python[server]`` (its
JSON mode compiles a JSON grammar), one server at a time. Each gets the same chat requests
asking for JSON (sampled at temperature 0.8 with fixed seeds), in plain text mode, in JSON
object mode, in JSON Schema mode (`SCHEMA`) and in JSON Schema mode with checks on values
(`CHECKED`: lengths, a range, a pattern and a date format), and with `SCHEMA` written as a GBNF
grammar (`SCHEMA_GBNF`, in the ``grammar`` field both servers take; the parentheses let its
root span lines in llama.cpp's parser), at concurrency 1 and 8. Reported per server and mode:
output tokens/s, mean time per output token, how many answers ended on their own (not cut by
``max_tokens``), how many ``json.loads`` reads as an object, and how many are instances of the
mode's schema (`SCHEMA`, or `CHECKED`, formats checked). Prints a table and writes
``benchmarks/results/json_mode.json``.

    uv run python benchmarks/json_mode_bench.py [--inferno bfloat16+int8] \
        [--llama-cpp-python /opt/peers/bin/python] [--modes text,json_checks]
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

import jsonschema_rs
import openai
from serve_bench import _free_port, serving

RESULTS = Path(__file__).parent / "results" / "json_mode.json"

SUBJECTS = [
    "a cat named Tom who is 3 years old",
    "the city of Paris",
    "a red sports car",
    "a book about the history of Rome",
    "a pizza with three toppings",
    "a football team",
    "a summer holiday in Spain",
    "a laptop for students",
]


def _messages(i: int) -> list[dict[str, str]]:
    subject = SUBJECTS[i % len(SUBJECTS)]
    return [{"role": "user", "content": f"Describe {subject} as a JSON object with a few fields."}]


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "kind": {"enum": ["animal", "place", "thing", "food", "group", "event"]},
        "features": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "rating": {"type": "integer"},
    },
    "required": ["name", "kind", "features", "rating"],
    "additionalProperties": False,
}
#: `SCHEMA` with checks on values, as pydantic writes Field(max_length=..., ge=..., le=...),
#: constr(pattern=...) and date.
CHECKED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "kind": {"enum": ["animal", "place", "thing", "food", "group", "event"]},
        "features": {
            "type": "array",
            "items": {"type": "string", "maxLength": 40},
            "maxItems": 4,
        },
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
        "since": {"type": "string", "format": "date"},
    },
    "required": ["name", "kind", "features", "rating", "code", "since"],
    "additionalProperties": False,
}
#: `SCHEMA` as a GBNF grammar (the ``grammar`` field of llama.cpp's server and of inferno's):
#: the keys in order, strings without unicode escapes, up to 4 features, a small integer.
SCHEMA_GBNF = r"""
root     ::= ("{" ws "\"name\":" ws string "," ws "\"kind\":" ws kind "," ws
              "\"features\":" ws features "," ws "\"rating\":" ws integer ws "}")
kind     ::= "\"animal\"" | "\"place\"" | "\"thing\"" | "\"food\"" | "\"group\"" | "\"event\""
features ::= "[" ws (string ("," ws string){0,3})? ws "]"
string   ::= "\"" ([^"\\\x00-\x1F] | "\\" ["\\/bfnrt])* "\""
integer  ::= "-"? ("0" | [1-9] [0-9]{0,9})
ws       ::= [ \n]{0,4}
"""
#: The schema each mode's answers are checked against.
MODE_SCHEMAS = {"json_checks": CHECKED}
MODES: dict[str, dict[str, Any]] = {
    "text": {},
    "json_object": {"response_format": {"type": "json_object"}},
    "json_schema": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "description", "schema": SCHEMA},
        }
    },
    "json_checks": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "description", "schema": CHECKED},
        }
    },
    "gbnf": {"extra_body": {"grammar": SCHEMA_GBNF}},
}
#: llama-cpp-python's server reads a schema from response_format {"type": "json_object",
#: "schema": ...} and runs "json_schema" without any grammar, so it gets its own spelling.
LLAMA_CPP_MODES = {
    **MODES,
    "json_schema": {"response_format": {"type": "json_object", "schema": SCHEMA}},
    "json_checks": {"response_format": {"type": "json_object", "schema": CHECKED}},
}
Result = tuple[int, bool, bool, str, bool]  # tokens, object, schema instance, text, finished


async def _one(
    client: openai.AsyncOpenAI,
    model: str,
    i: int,
    mode: dict[str, Any],
    max_tokens: int,
    schema: dict[str, Any] = SCHEMA,
) -> Result:
    resp = await client.chat.completions.create(
        model=model,
        messages=_messages(i),  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0.8,
        seed=i,
        **mode,
    )
    text = resp.choices[0].message.content or ""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    tokens = resp.usage.completion_tokens if resp.usage is not None else 0
    validator = jsonschema_rs.validator_for(schema, validate_formats=True)
    instance = value is not None and validator.is_valid(value)
    finished = resp.choices[0].finish_reason == "stop"
    return tokens, isinstance(value, dict), instance, text, finished


async def _round(
    client: openai.AsyncOpenAI,
    model: str,
    mode: dict[str, Any],
    concurrency: int,
    args: Any,
    schema: dict[str, Any],
) -> tuple[float, list[Result]]:
    """Every request once, ``concurrency`` at a time: (wall seconds, results in order)."""
    semaphore = asyncio.Semaphore(concurrency)

    async def run(i: int) -> Result:
        async with semaphore:
            return await _one(client, model, i, mode, args.max_tokens, schema)

    start = time.perf_counter()
    results = await asyncio.gather(*(run(i) for i in range(args.requests)))
    return time.perf_counter() - start, list(results)


async def _measure(
    url: str, modes: dict[str, dict[str, Any]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    model = "default"
    out = []
    for mode, fields in modes.items():
        schema = MODE_SCHEMAS.get(mode, SCHEMA)
        await _one(client, model, 0, fields, 8)  # warm-up (and grammar build)
        for concurrency in (1, 8):
            wall, results = await _round(client, model, fields, concurrency, args, schema)
            tokens = sum(r[0] for r in results)
            row = {
                "mode": mode,
                "concurrency": concurrency,
                "requests": args.requests,
                "output_tokens": tokens,
                "output_tok_s": tokens / wall,
                "ms_per_token": 1000 * wall * concurrency / max(tokens, 1),
                "finished": sum(r[4] for r in results),
                "json_objects": sum(r[1] for r in results),
                "schema_instances": sum(r[2] for r in results),
                "example": results[0][3][:200],
            }
            print(
                f"  {mode:<12} conc {concurrency}: {row['output_tok_s']:7.1f} tok/s, "
                f"{row['finished']} finished, {row['json_objects']} objects, "
                f"{row['schema_instances']} schema instances of {args.requests}"
            )
            out.append(row)
    await client.close()
    return out


def _servers(args: argparse.Namespace) -> list[tuple[str, list[str], int, str]]:
    from inferno_models import default_model_path

    gguf = str(default_model_path())
    dtype, _, quant = args.inferno.partition("+")
    port = _free_port()
    out = [(
        f"inferno {args.inferno}",
        [sys.executable, "-m", "inferno_backend.cli", "serve", "--port", str(port),
         "--max-num-seqs", "16", "--dtype", dtype, "--weight-quantization", quant or "none",
         "--log-level", "warning"],
        port, "/health/ready",
    )]  # fmt: skip
    if args.llama_cpp_python:
        port = _free_port()
        out.append((
            "llama-cpp-python",
            [args.llama_cpp_python, "-m", "llama_cpp.server", "--model", gguf, "--host",
             "127.0.0.1", "--port", str(port), "--n_threads", str(args.threads), "--n_ctx",
             "2048", "--model_alias", "default", "--interrupt_requests", "False"],
            port, "/v1/models",
        ))  # fmt: skip
    return out


def _table(runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| server | mode | conc. | output tok/s | ms / token | finished | objects | instances |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in runs.items():
        for r in rows:
            lines.append(
                f"| {name} | {r['mode']} | {r['concurrency']} | {r['output_tok_s']:.1f} | "
                f"{r['ms_per_token']:.1f} | {r['finished']} | "
                f"{r['json_objects']}/{r['requests']} | {r['schema_instances']}/{r['requests']} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inferno", default="bfloat16+int8", help="DTYPE[+int8]")
    parser.add_argument("--llama-cpp-python", help="python with llama-cpp-python[server]")
    parser.add_argument("--threads", type=int, default=2, help="the peer's CPU threads")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes to run")
    args = parser.parse_args()
    chosen = args.modes.split(",")
    if unknown := set(chosen) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; choose from {list(MODES)}")
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, cmd, port, ready in _servers(args):
        print(name)
        spellings = LLAMA_CPP_MODES if name == "llama-cpp-python" else MODES
        modes = {mode: spellings[mode] for mode in chosen}
        with serving(name, cmd, port, ready) as url:
            runs[name] = asyncio.run(_measure(url, modes, args))
    print(_table(runs))
    doc = {
        "benchmark": "json_mode",
        "model": "SmolLM2-135M-Instruct Q4_1",
        "machine": f"{platform.machine()} {platform.processor() or ''} CPU".strip(),
        "max_tokens": args.max_tokens,
        "temperature": 0.8,
        "schema": SCHEMA,
        "checked_schema": CHECKED,
        "runs": runs,
    }
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
