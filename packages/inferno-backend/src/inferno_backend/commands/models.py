"""``inferno models list|inspect|convert``: the model repository from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``models`` and its subcommands."""
    models = subparsers.add_parser("models", help="list, inspect and convert models")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    ls = sub.add_parser("list", help="list the models of the repository")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--models-dir", type=Path, default=None, help="models directory")
    ls.set_defaults(func=_list)

    inspect = sub.add_parser("inspect", help="show one model's metadata")
    inspect.add_argument("name", metavar="NAME", help="repository name or path")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.add_argument("--sha256", action="store_true", help="also hash the weights")
    inspect.add_argument("--models-dir", type=Path, default=None, help="models directory")
    inspect.set_defaults(func=_inspect)

    convert = sub.add_parser("convert", help="convert a GGUF file to a Hugging Face directory")
    convert.add_argument("src", metavar="SRC", help="GGUF file (name or path)")
    convert.add_argument("dst", metavar="DST_DIR", type=Path, help="output directory")
    convert.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    convert.add_argument("--models-dir", type=Path, default=None, help="models directory")
    convert.set_defaults(func=_convert)


def _fail(message: str) -> int:
    sys.stderr.write(f"inferno: error: {message}\n")
    return 1


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _list(args: argparse.Namespace) -> int:
    from inferno_models import ModelRepository

    entries = ModelRepository(args.models_dir).list()
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    rows = [("NAME", "FORMAT", "PARAMS", "QUANT", "SIZE", "PATH")]
    for e in entries:
        name = e.name + (f" ({', '.join(e.aliases)})" if e.aliases else "")
        params = f"{e.parameters / 1e6:.0f}M"
        rows.append((name, e.format, params, e.quantization, _human(e.size_bytes), str(e.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from inferno_models import GGUFFile, ModelConfig, ModelError, ModelRepository

    try:
        entry = ModelRepository(args.models_dir).resolve(args.name)
        if entry.format == "gguf":
            gguf = GGUFFile(entry.path)
            config = gguf.config()
            template = gguf.get("tokenizer.chat_template")
        else:
            config = ModelConfig.from_hf_file(entry.path / "config.json")
            template = None
        info: dict[str, Any] = {**entry.to_dict(), "config": config.model_dump(mode="json")}
        info["has_chat_template"] = (
            bool(template) or (entry.path / "tokenizer_config.json").is_file()
        )
        if args.sha256:
            info["sha256"] = entry.sha256()
    except ModelError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "config":
            for ck, cv in value.items():
                print(f"  {ck}: {cv}")
        else:
            print(f"{key}: {value}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    import torch
    from inferno_models import ModelError, ModelRepository, convert_gguf_to_hf

    try:
        entry = ModelRepository(args.models_dir).resolve(args.src)
        if entry.format != "gguf":
            return _fail(f"{entry.path}: not a GGUF file")
        out = convert_gguf_to_hf(entry.path, args.dst, dtype=getattr(torch, args.dtype))
    except ModelError as exc:
        return _fail(str(exc))
    print(out)
    return 0
