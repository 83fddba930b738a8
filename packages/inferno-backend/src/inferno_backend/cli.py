"""The `inferno` command line.

Each subcommand lives in its own module under `inferno_backend.commands`, which exposes
``register(subparsers)``; the module sets ``func`` on its parser to the function that runs it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from inferno_backend.logging import configure_logging

__all__ = ["build_parser", "main"]

#: Modules under inferno_backend.commands, each adding its subcommands.
_COMMAND_MODULES = ("models", "generate", "serve", "batch", "bench")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="inferno", description="Inferno: serve and inspect Llama-family language models."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"inferno_backend.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"inferno_backend.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``inferno`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # stdout belongs to the command's output; logs go to stderr (``serve`` reconfigures).
    configure_logging("console", "warning")
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``inferno models list | head``): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
