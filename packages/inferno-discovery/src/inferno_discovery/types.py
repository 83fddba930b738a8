"""Value objects of inferno-discovery: registrations with load signals, and watch events."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DiscoveryEvent",
    "DiscoveryEventKind",
    "LoadSignals",
    "ServiceInfo",
    "ServiceRegistration",
]

# Ids and service names become path segments of registry keys, so they may not contain "/".
_SEGMENT = r"^[^/\s]+$"


class LoadSignals(BaseModel):
    """How busy a worker is, refreshed on every keep-alive so routers need not scrape it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    queue_depth: int = Field(default=0, ge=0, description="Requests waiting to be admitted.")
    running_requests: int = Field(default=0, ge=0, description="Requests being generated now.")
    kv_usage: float = Field(default=0.0, ge=0.0, le=1.0, description="Fraction of KV cache in use.")
    free_slots: int = Field(default=0, ge=0, description="Requests that could start right away.")


class ServiceRegistration(BaseModel):
    """One running instance of a service, as stored in the registry.

    ``id`` is unique within ``service``; ``address`` is where clients reach it (a base URL);
    ``models`` lists the model names it serves; ``metadata`` holds any other string pairs.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, pattern=_SEGMENT, description="Instance id, unique per service.")
    service: str = Field(min_length=1, pattern=_SEGMENT, description="Service name.")
    address: str = Field(min_length=1, description="Where clients reach it, e.g. a base URL.")
    models: tuple[str, ...] = Field(default=(), description="Names of the models it serves.")
    version: str = Field(default="", description="Software version of the instance.")
    load: LoadSignals = Field(default_factory=LoadSignals, description="Current load.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Other key/value pairs.")

    def with_load(self, load: LoadSignals) -> ServiceRegistration:
        """A copy carrying ``load``."""
        return self.model_copy(update={"load": load})


ServiceInfo = ServiceRegistration
"""What `list` and `watch` return: the registration as the registry holds it."""


class DiscoveryEventKind(enum.StrEnum):
    """What happened to an instance."""

    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class DiscoveryEvent:
    """One change seen by `DiscoveryProvider.watch`.

    ``info`` is the new registration for added/updated, and the last known one for removed
    (None only when a watcher never saw the instance's value).
    """

    kind: DiscoveryEventKind
    service: str
    id: str
    info: ServiceInfo | None
