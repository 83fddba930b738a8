"""Routing policies: which of the candidate workers gets a request.

A policy only chooses; the forwarder counts in-flight requests, retries and records metrics.
`choose` runs on the event loop for every request, so it is pure CPU work over a handful of
workers: no I/O, no awaiting.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from inferno_gateway.config import PolicyName
from inferno_gateway.table import Worker

__all__ = [
    "Decision",
    "LeastLoadPolicy",
    "PrefixAffinityPolicy",
    "RoundRobinPolicy",
    "RouteRequest",
    "RoutingPolicy",
    "affinity_key",
    "build_policy",
]


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a policy may look at: the model and the prompt prefix (None when there is none)."""

    model: str
    affinity_key: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The chosen worker and why (the reason becomes a metric label)."""

    worker: Worker
    reason: str


@runtime_checkable
class RoutingPolicy(Protocol):
    """Chooses a worker for each request.

    ``choose`` is called once per attempt with the ready workers that serve the model (never
    empty; already-failed workers removed) and returns one of them with a short reason such as
    ``"affinity"`` or ``"least_load"``.
    """

    @property
    def name(self) -> str:
        """The policy's name, as given to ``--policy``."""
        ...

    def choose(self, candidates: Sequence[Worker], request: RouteRequest) -> Decision:
        """Pick one of ``candidates`` (non-empty) for ``request``."""
        ...


class LeastLoadPolicy:
    """The worker with the fewest requests on it (`Worker.load_score`).

    Ties go to the lower KV-cache usage, then to the worker this gateway has sent fewer
    requests in total (so an idle fleet is filled in turn rather than always from the first).
    """

    name = "least-load"

    def choose(self, candidates: Sequence[Worker], request: RouteRequest) -> Decision:
        """The least loaded candidate."""
        best = min(candidates, key=lambda w: (w.load_score, w.load.kv_usage, w.routed, w.id))
        return Decision(best, "least_load")


class RoundRobinPolicy:
    """Each candidate in turn, ignoring load."""

    name = "round-robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, candidates: Sequence[Worker], request: RouteRequest) -> Decision:
        """The next candidate in id order."""
        ordered = sorted(candidates, key=lambda w: w.id)
        return Decision(ordered[next(self._counter) % len(ordered)], "round_robin")


class PrefixAffinityPolicy:
    """Requests sharing a prompt prefix go to the same worker, within a load bound.

    The worker is chosen by rendezvous hashing of the prefix with each candidate's id, so a
    worker joining or leaving moves only the prefixes it wins or held. The bound keeps a hot
    prefix from overloading its worker: when the chosen worker's load is at or above
    ``(1 + epsilon) * average + slack`` (average over the candidates), the request goes to the
    least loaded worker instead. Requests without a prefix use least-load too.
    """

    name = "prefix-affinity"

    def __init__(
        self,
        *,
        epsilon: float = 0.25,
        slack: float = 2.0,
        fallback: RoutingPolicy | None = None,
    ) -> None:
        if epsilon < 0 or slack < 0:
            raise ValueError(f"epsilon and slack must be >= 0, got {epsilon} and {slack}")
        self.epsilon = epsilon
        self.slack = slack
        self.fallback: RoutingPolicy = fallback if fallback is not None else LeastLoadPolicy()

    def bound(self, candidates: Sequence[Worker]) -> float:
        """The load at which a worker stops receiving its prefixes' requests."""
        average = sum(w.load_score for w in candidates) / len(candidates)
        return (1 + self.epsilon) * average + self.slack

    def choose(self, candidates: Sequence[Worker], request: RouteRequest) -> Decision:
        """The prefix's rendezvous winner, or least-load when it is over the bound."""
        key = request.affinity_key
        if not key:
            return Decision(self.fallback.choose(candidates, request).worker, "no_prefix")
        owner = max(candidates, key=lambda w: (_weight(key, w.id), w.id))
        if len(candidates) > 1 and owner.load_score >= self.bound(candidates):
            return Decision(self.fallback.choose(candidates, request).worker, "overflow")
        return Decision(owner, "affinity")


def _weight(key: str, worker_id: str) -> int:
    # blake2b rather than hash(): stable across processes, so every gateway replica (and every
    # restart) sends a prefix to the same worker.
    digest = hashlib.blake2b(f"{worker_id}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def affinity_key(body: dict[str, Any], chars: int) -> str | None:
    """The first ``chars`` characters of a request's prompt, or None when it has none.

    Chat requests use their messages in order (role and text of each); Responses API requests
    their instructions, then their input (a string, or messages as chat's); completions and
    embeddings their prompt or input (the first one of a batch; token ids as their decimal
    text).
    """
    parts: list[str] = []
    messages = body.get("messages")
    given = body.get("input")
    instructions = body.get("instructions")
    if isinstance(instructions, str) or _is_messages(given):
        # A Responses API request: its conversation, as a chat's messages.
        messages = [{"role": "system", "content": instructions}] if instructions else []
        if isinstance(given, str):
            messages.append({"role": "user", "content": given})
        elif isinstance(given, list):
            messages.extend(given)
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                parts.append(f"{message.get('role', '')}:{_text(message.get('content'))}\n")
            if sum(map(len, parts)) >= chars:
                break
    else:
        prompt = body.get("prompt", given)
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            prompt = prompt[0]  # a batch: its first prompt
        parts.append(_text(prompt))
    key = "".join(parts)[:chars]
    return key or None


def _is_messages(value: object) -> bool:
    """A list of message objects (a Responses API input), not a batch of prompts."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts, or token ids
        pieces = []
        for part in content:
            if isinstance(part, dict):
                pieces.append(str(part.get("text", "")))
            else:
                pieces.append(str(part))
        return " ".join(pieces) if content and isinstance(content[0], int) else "".join(pieces)
    return ""


def build_policy(name: PolicyName, *, epsilon: float = 0.25, slack: float = 2.0) -> RoutingPolicy:
    """The policy called ``name`` (the values of ``--policy``)."""
    if name == "prefix-affinity":
        return PrefixAffinityPolicy(epsilon=epsilon, slack=slack)
    if name == "least-load":
        return LeastLoadPolicy()
    if name == "round-robin":
        return RoundRobinPolicy()
    raise ValueError(f"unknown routing policy {name!r}")
