"""``inferno generate``: a one-shot generation that prints only the generated text."""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``generate``."""
    p = subparsers.add_parser("generate", help="generate text once and print it")
    p.add_argument("--model", default="default", help="repository name or path")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--max-tokens", type=int, default=128, help="most new tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chat", action="store_true", help="render the prompt as one user message")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="answer with one JSON object")
    output.add_argument(
        "--json-schema",
        metavar="SCHEMA",
        help="answer with an instance of this JSON Schema (a file, or the schema as JSON text)",
    )
    output.add_argument(
        "--choice",
        action="append",
        metavar="TEXT",
        help="answer with exactly one of these strings (repeat it for each)",
    )
    output.add_argument(
        "--regex",
        metavar="PATTERN",
        help="answer with one whole match of this regular expression",
    )
    output.add_argument(
        "--grammar",
        metavar="GBNF",
        help="answer with one derivation of this GBNF grammar's root (a file, or the text)",
    )
    p.add_argument(
        "--speculative-tokens",
        type=int,
        default=0,
        metavar="N",
        help="draft up to N tokens per step from the prompt's own text (same output, faster "
        "when the answer quotes the prompt; default 0: off)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model, generate, stream the text to stdout; errors go to stderr."""
    import torch
    from inferno_inference import InvalidRequestError, SamplingParams
    from inferno_inference.config import EngineConfig
    from inferno_inference.factory import build_llm_engine
    from inferno_inference.kv_cache import KVCache
    from inferno_inference.types import GenerationRequest
    from inferno_memory import HostMemoryResource
    from inferno_models import ModelError, load_model
    from pydantic import ValidationError

    try:
        model = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
        if args.chat:
            if model.chat_template is None:
                return _fail(f"model {model.name} has no chat template; drop --chat")
            text = model.chat_template.render([{"role": "user", "content": args.prompt}])
            prompt_ids = model.tokenizer.encode(text, add_special_tokens=False)
        else:
            prompt_ids = model.tokenizer.encode(args.prompt)
        schema = _schema_text(args.json_schema) if args.json_schema else None
        sampling = SamplingParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            response_format="json_schema" if schema else "json_object" if args.json else "text",
            json_schema=schema,
            choices=tuple(args.choice or ()),
            regex=args.regex,
            grammar=_grammar_text(args.grammar) if args.grammar else None,
        )
        context = min(model.config.max_position_embeddings, len(prompt_ids) + args.max_tokens)
        block_size = EngineConfig.model_fields["block_size"].default
        # Blocks for the whole context, plus one: the cache keeps a token slot as scratch.
        blocks = -(-context // block_size) + 1
        per_block = KVCache.bytes_per_block(model.config, block_size, getattr(torch, args.dtype))
        engine_config = EngineConfig(
            dtype=args.dtype,
            device=args.device,
            max_num_seqs=1,
            max_model_len=context,
            block_size=block_size,
            kv_cache_bytes=per_block * blocks,
            speculative_tokens=args.speculative_tokens,
        )
        engine = build_llm_engine(
            model.config,
            model.weights,
            engine_config,
            HostMemoryResource(),
            tokenizer=model.tokenizer,
        )
        request = GenerationRequest(uuid.uuid4().hex, tuple(prompt_ids), sampling)
        engine.add_request(request)
    except (ModelError, InvalidRequestError, ValidationError, ValueError) as exc:
        return _fail(str(exc))
    while engine.has_work():
        for output in engine.step():
            if output.error:
                return _fail(output.error)
            sys.stdout.write(output.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _schema_text(value: str) -> str:
    """The schema's JSON text: ``value`` itself when it is JSON, else the file it names."""
    if value.lstrip().startswith(("{", "[")):
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--json-schema: cannot read {value}: {exc.strerror}") from None


def _grammar_text(value: str) -> str:
    """The grammar's text: ``value`` itself when it defines rules, else the file it names."""
    if "::=" in value:
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--grammar: cannot read {value}: {exc.strerror}") from None


def _fail(message: str) -> int:
    sys.stderr.write(f"inferno: error: {message}\n")
    return 1
