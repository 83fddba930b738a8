"""The responses a daemon keeps, so ``previous_response_id`` can continue a conversation and
``GET /v1/responses/{id}`` can return one.

In memory, newest last: when more than ``capacity`` are kept, the least recently used goes
(a continued or fetched response counts as used). Nothing survives a restart, and each daemon
keeps its own (the gateway finds the one that holds a response).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inferno_backend.api.schemas import ChatMessage

__all__ = ["ResponseStore", "StoredResponse"]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A finished response: its body as sent, and the conversation up to and including its
    output (without instructions, which a continuation does not inherit)."""

    body: dict[str, Any]
    conversation: tuple[ChatMessage, ...]


class ResponseStore:
    """Responses by id, at most ``capacity`` of them (0 keeps none)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, body: dict[str, Any], conversation: Sequence[ChatMessage]) -> bool:
        """Keep a response (``body["id"]``); False when the store keeps none."""
        if self.capacity <= 0:
            return False
        rid = str(body["id"])
        self._items[rid] = StoredResponse(body, tuple(conversation))
        self._items.move_to_end(rid)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return True

    def get(self, response_id: str) -> StoredResponse | None:
        """The response, or None when it is unknown or was dropped."""
        item = self._items.get(response_id)
        if item is not None:
            self._items.move_to_end(response_id)
        return item

    def delete(self, response_id: str) -> bool:
        """Forget a response; whether it was kept."""
        return self._items.pop(response_id, None) is not None
