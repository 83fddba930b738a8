"""Routes OpenAI requests across many Inferno daemons found through discovery."""

from inferno_gateway.app import build_app
from inferno_gateway.config import GatewayConfig, PolicyName
from inferno_gateway.errors import (
    BadRequestError,
    GatewayError,
    ModelNotFoundError,
    NoWorkerError,
    PayloadTooLargeError,
    RouteNotFoundError,
    UpstreamFailedError,
)
from inferno_gateway.gateway import Gateway, build_gateway
from inferno_gateway.metrics import GatewayMetrics
from inferno_gateway.policies import (
    Decision,
    LeastLoadPolicy,
    PrefixAffinityPolicy,
    RoundRobinPolicy,
    RouteRequest,
    RoutingPolicy,
    affinity_key,
    build_policy,
)
from inferno_gateway.proxy import WORKER_HEADER, Forwarder
from inferno_gateway.table import Worker, WorkerTable, follow_registry, registration_ready

__all__ = [
    "WORKER_HEADER",
    "BadRequestError",
    "Decision",
    "Forwarder",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "GatewayMetrics",
    "LeastLoadPolicy",
    "ModelNotFoundError",
    "NoWorkerError",
    "PayloadTooLargeError",
    "PolicyName",
    "PrefixAffinityPolicy",
    "RoundRobinPolicy",
    "RouteNotFoundError",
    "RouteRequest",
    "RoutingPolicy",
    "UpstreamFailedError",
    "Worker",
    "WorkerTable",
    "affinity_key",
    "build_app",
    "build_gateway",
    "build_policy",
    "follow_registry",
    "registration_ready",
]
