"""The Inferno daemon: orchestrator, event bus, OpenAI-compatible HTTP API, health, metrics, CLI."""

__all__: list[str] = []
