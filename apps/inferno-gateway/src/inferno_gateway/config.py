"""`GatewayConfig`: every setting of the gateway, validated, each with its meaning."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["GatewayConfig", "PolicyName"]

PolicyName = Literal["prefix-affinity", "least-load", "round-robin"]
"""The routing policies `inferno-gateway --policy` accepts."""


class GatewayConfig(BaseModel):
    """Settings of one gateway process; the CLI fills it from flags."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    discovery: str = Field(
        default="memory://", description="Registry the workers register in: etcd://HOST:PORT."
    )
    service: str = Field(
        default="inferno", min_length=1, description="Service name the workers register under."
    )
    host: str = Field(default="127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port; 0 picks a free one.")
    policy: PolicyName = Field(default="prefix-affinity", description="Routing policy.")
    prefix_chars: int = Field(
        default=256, gt=0, description="Prompt characters hashed by prefix-affinity."
    )
    load_epsilon: float = Field(
        default=0.25, ge=0, le=10, description="Imbalance allowed above the average load."
    )
    load_slack: float = Field(
        default=2.0, ge=0, le=1000, description="Requests allowed above the bound regardless."
    )
    max_attempts: int = Field(
        default=3, ge=1, le=16, description="Workers tried per request before giving up."
    )
    connect_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="Seconds to open a connection to a worker."
    )
    read_timeout_s: float = Field(
        default=600.0, gt=0, description="Longest silence tolerated from a worker mid-response."
    )
    unreachable_cooldown_s: float = Field(
        default=5.0,
        ge=0,
        description="Seconds a worker that refused a connection gets no new traffic.",
    )
    max_body_bytes: int = Field(
        default=4 * 2**20, ge=1024, le=2**30, description="Largest request body accepted."
    )
    log_format: Literal["json", "console"] = Field(default="json", description="Log renderer.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level logged."
    )

    @field_validator("discovery")
    @classmethod
    def _check_discovery(cls, value: str) -> str:
        if value != "memory://" and not value.startswith(("etcd://", "etcds://")):
            raise ValueError("must be etcd://HOST:PORT (or memory:// in one process)")
        return value
