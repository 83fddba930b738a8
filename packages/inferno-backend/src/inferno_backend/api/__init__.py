"""The HTTP API of the daemon: OpenAI-compatible routes, health, metrics, admin, middleware."""

from inferno_backend.api.app import build_app

__all__ = ["build_app"]
