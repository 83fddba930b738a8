"""``inferno-gateway``: route OpenAI requests across the workers found in a registry."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any, get_args

import structlog
from aiohttp import web
from pydantic import ValidationError

from inferno_gateway.app import build_app
from inferno_gateway.config import GatewayConfig, PolicyName
from inferno_gateway.gateway import build_gateway

__all__ = ["configure_logging", "main", "parse_args", "serve"]

log = structlog.get_logger("inferno_gateway.cli")

_FLAGS = (
    "discovery", "service", "host", "port", "policy", "prefix_chars", "load_epsilon",
    "load_slack", "max_attempts", "connect_timeout_s", "unreachable_cooldown_s", "log_format",
    "log_level",
)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inferno-gateway",
        description="Route OpenAI requests across the Inferno daemons registered in discovery.",
    )
    p.add_argument("--discovery", required=True, help="registry URL: etcd://HOST:PORT[/PREFIX]")
    p.add_argument("--service", help="service name the daemons register under (inferno)")
    p.add_argument("--host", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (8080; 0 picks one)")
    p.add_argument("--policy", choices=get_args(PolicyName), help="routing (prefix-affinity)")
    p.add_argument("--prefix-chars", type=int, help="prompt characters hashed for affinity (256)")
    p.add_argument("--load-epsilon", type=float, help="affinity bound: (1+e)*avg+c, e (0.25)")
    p.add_argument("--load-slack", type=float, help="affinity bound: (1+e)*avg+c, c (2)")
    p.add_argument("--max-attempts", type=int, help="workers tried per request (3)")
    p.add_argument("--connect-timeout", type=float, dest="connect_timeout_s", help="seconds (2)")
    p.add_argument(
        "--unreachable-cooldown",
        type=float,
        dest="unreachable_cooldown_s",
        help="seconds a worker that refused a connection gets no traffic (5)",
    )
    p.add_argument("--log-format", choices=["json", "console"])
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p


def parse_args(argv: Sequence[str] | None = None) -> GatewayConfig:
    """Flags to a validated `GatewayConfig` (unset flags keep the config's defaults)."""
    args = _parser().parse_args(argv)
    values: dict[str, Any] = {
        name: getattr(args, name) for name in _FLAGS if getattr(args, name) is not None
    }
    return GatewayConfig(**values)


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """structlog to standard error: JSON lines, or readable lines with ``console``."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


async def serve(config: GatewayConfig) -> int:
    """Listen and route until SIGTERM/SIGINT; returns the exit status."""
    gateway = build_gateway(config)
    runner = web.AppRunner(build_app(gateway), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    log.info("listening", url=f"http://{host}:{port}", discovery=config.discovery)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``inferno-gateway`` console script."""
    try:
        config = parse_args(argv)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        flag = ".".join(str(p) for p in err["loc"]).removesuffix("_s").replace("_", "-")
        sys.stderr.write(f"inferno-gateway: --{flag}: {err['msg']}\n")
        return 2
    configure_logging(config.log_format, config.log_level)
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
