"""``inferno serve``: run the daemon until SIGTERM/SIGINT, then shut down gracefully."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import structlog
from aiohttp import web

from inferno_backend.composition import build_daemon
from inferno_backend.config import ConfigError, ServeConfig, load_config
from inferno_backend.logging import configure_logging

__all__ = ["MODEL_FLAG_FIELDS", "add_model_arguments", "register", "run", "serve"]

log = structlog.get_logger("inferno_backend.serve")


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve a model over an OpenAI-compatible HTTP API. Settings come from "
        "--config FILE (TOML), then INFERNO_* environment variables, then these flags.",
    )
    add_model_arguments(p)
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8000; 0 picks one)")
    p.add_argument("--api-key", action="append", dest="api_keys", help="accepted API key")
    p.add_argument("--admin-key", help="key of the /v1/admin routes")
    p.add_argument("--discovery", help="memory:// (default) or etcd://HOST:PORT")
    p.add_argument(
        "--discovery-ttl", type=float, help="seconds of the discovery lease (default 10)"
    )
    p.add_argument(
        "--max-queued-requests",
        type=int,
        help="requests per model that may wait beyond --max-num-seqs (more get 503)",
    )
    p.add_argument("--drain-timeout", type=float, dest="drain_timeout_s", help="seconds")
    p.set_defaults(func=run)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of the model, its engine and logging (``serve`` and ``batch`` share them)."""
    p.add_argument("--model", help="model name or path (default: the default model)")
    p.add_argument("--served-model-name", help="name clients use for the model")
    p.add_argument(
        "--lora",
        metavar="PATH",
        help="merge this LoRA adapter into the model when it loads: a PEFT directory "
        "(adapter_config.json and adapter_model.safetensors) or a llama.cpp GGUF adapter file",
    )
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--weight-quantization", choices=["none", "int8"], help="int8 weights for decode (CPU)"
    )
    p.add_argument(
        "--speculative-tokens",
        type=int,
        metavar="N",
        help="draft up to N tokens per decode step from the request's own text (default 0: off)",
    )
    p.add_argument("--max-num-seqs", type=int, help="concurrent sequences in the engine")
    p.add_argument("--max-model-len", type=int, help="context length")
    p.add_argument("--kv-cache-bytes", type=int, help="KV cache budget in bytes")
    p.add_argument("--log-format", choices=["json", "console"])
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--sampling-default",
        action="append",
        dest="sampling_defaults",
        metavar="KEY=VALUE",
        help="a sampling default over the model's, e.g. temperature=0.7 (repeatable)",
    )
    p.add_argument(
        "--no-model-sampling-defaults",
        action="store_const",
        const=False,
        dest="model_sampling_defaults",
        help="ignore the model's recommended sampling settings (OpenAI's defaults instead)",
    )
    p.add_argument(
        "--reasoning-parser",
        choices=["auto", "think", "none"],
        help="split <think>...</think> reasoning from the answer (default auto: when the "
        "model's chat template writes </think>)",
    )
    p.add_argument(
        "--default-chat-template-kwargs",
        metavar="JSON",
        help="chat template variables for every request that leaves them out, e.g. "
        "'{\"enable_thinking\": false}'",
    )
    p.add_argument("--no-warmup", action="store_const", const=False, dest="warmup")
    p.add_argument(
        "--no-native-decode",
        action="store_const",
        const=False,
        dest="native_decode",
        help="decode with PyTorch only, not the engine's C kernels",
    )
    p.add_argument(
        "--kernel-backend",
        choices=["auto", "torch", "triton"],
        help="CUDA: Triton kernels (auto: when they pass their startup self-check) or PyTorch",
    )


#: Config fields set by `add_model_arguments`.
MODEL_FLAG_FIELDS = (
    "model", "served_model_name", "lora", "device", "dtype", "weight_quantization", "max_num_seqs",
    "max_model_len", "kv_cache_bytes", "log_format", "log_level", "warmup", "native_decode",
    "kernel_backend", "sampling_defaults", "model_sampling_defaults", "speculative_tokens",
    "reasoning_parser", "default_chat_template_kwargs",
)  # fmt: skip
_FLAG_FIELDS = (
    *MODEL_FLAG_FIELDS, "host", "port", "api_keys", "admin_key", "discovery", "discovery_ttl",
    "max_queued_requests", "drain_timeout_s",
)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Entry point of ``inferno serve``; returns the exit status."""
    overrides = {name: getattr(args, name, None) for name in _FLAG_FIELDS}
    if overrides["api_keys"] is not None:
        overrides["api_keys"] = tuple(overrides["api_keys"])
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        sys.stderr.write(f"inferno serve: {exc}\n")
        return 2
    configure_logging(config.log_format, config.log_level)
    return asyncio.run(serve(config))


async def serve(config: ServeConfig) -> int:
    """Listen, start the orchestrator, and on SIGTERM/SIGINT drain and stop.

    The socket is bound before the model loads, so probes answer (503) during start-up.
    Returns 0 after a clean shutdown, 1 if start-up failed.
    """
    daemon = build_daemon(config)
    orchestrator = daemon.orchestrator
    runner = web.AppRunner(daemon.app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    daemon.advertised_url = (
        f"http://{config.advertise_host}:{port}" if config.advertise_host else None
    )
    if daemon.advertised_url is None and config.host not in ("0.0.0.0", "::"):
        daemon.advertised_url = f"http://{config.host}:{port}"
    log.info("listening", url=f"http://{host}:{port}", port=port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(orchestrator.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if starting.done() and starting.exception() is not None:
        log.error("start-up failed", error=str(starting.exception()))
        status = 1
        stopping.cancel()
    elif not starting.done():
        log.info("signal during start-up; stopping")
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
    else:
        log.info("serving; send SIGTERM to stop", url=f"http://{host}:{port}")
        await stopping
    log.info("shutting down")
    # A second SIGTERM must not cut the drain short, nor kill the process once the loop has
    # closed (closing restores SIGTERM's default action) while the interpreter exits.
    loop.remove_signal_handler(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    await orchestrator.stop()
    await runner.cleanup()
    return status
