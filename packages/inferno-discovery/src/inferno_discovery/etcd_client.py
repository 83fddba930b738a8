"""A small async client for etcd v3's HTTP/JSON gateway (``/v3/...``), over aiohttp.

Only what discovery needs: leases, put, range and delete by prefix, and watch. Keys and values
travel base64-encoded and 64-bit integers as decimal strings, as the gateway expects.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from inferno_discovery.errors import DiscoveryUnavailableError, EtcdError, WatchIdleError

__all__ = ["EtcdClient", "KeyValue", "WatchEvent", "WatchResponse", "prefix_range_end"]

GRPC_NOT_FOUND = 5
GRPC_UNAVAILABLE = 14


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd stores it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A put or delete of one key; ``prev`` is the value before it (when etcd still had it)."""

    type: str  # "PUT" or "DELETE"
    kv: KeyValue
    prev: KeyValue | None


@dataclass(frozen=True, slots=True)
class WatchResponse:
    """One message of a watch stream."""

    revision: int
    events: tuple[WatchEvent, ...]
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0


def prefix_range_end(prefix: bytes) -> bytes:
    """The exclusive end of the key range of everything starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


class EtcdClient:
    """Calls etcd's gateway at ``endpoint`` (``http://host:port``).

    Connection failures, timeouts and server-side unavailability raise
    `DiscoveryUnavailableError`; other errors etcd reports raise `EtcdError` with its code.
    ``session`` may be shared; one is created (and closed by `close`) when omitted.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        session: aiohttp.ClientSession | None = None,
        request_timeout: float = 5.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` and return the decoded answer."""
        url = f"{self.endpoint}/v3/{path}"
        try:
            async with self._http().post(url, json=body, timeout=self._timeout) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DiscoveryUnavailableError(
                f"etcd at {self.endpoint} is unreachable: {exc!r}"
            ) from exc
        try:
            answer = json.loads(text) if text else {}
        except json.JSONDecodeError as exc:
            raise EtcdError(f"etcd {path}: HTTP {status}, not JSON: {text[:200]!r}") from exc
        _raise_for_error(path, status, answer)
        return dict(answer)

    # -- leases --------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> tuple[int, int]:
        """Grant a lease of ``ttl`` seconds; returns (lease id, TTL etcd granted)."""
        answer = await self.call("lease/grant", {"TTL": str(ttl)})
        return int(answer["ID"]), int(answer.get("TTL", ttl))

    async def keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns its new TTL, 0 when the lease no longer exists."""
        answer = await self.call("lease/keepalive", {"ID": str(lease_id)})
        result = answer.get("result", answer)
        return int(result.get("TTL", 0))

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease and delete its keys; an unknown lease is not an error."""
        try:
            await self.call("lease/revoke", {"ID": str(lease_id)})
        except EtcdError as exc:
            if exc.code != GRPC_NOT_FOUND:
                raise

    # -- keys ----------------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        """Store ``value`` at ``key`` (attached to ``lease``); returns the new revision."""
        body: dict[str, Any] = {"key": _b64(key.encode()), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        answer = await self.call("kv/put", body)
        return int(answer["header"]["revision"])

    async def range_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key starting with ``prefix``, and the revision they were read at."""
        raw = prefix.encode()
        answer = await self.call(
            "kv/range", {"key": _b64(raw), "range_end": _b64(prefix_range_end(raw))}
        )
        kvs = [_kv(item) for item in answer.get("kvs", [])]
        return kvs, int(answer["header"]["revision"])

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it with ``prefix``); returns how many went."""
        raw = key.encode()
        body = {"key": _b64(raw)}
        if prefix:
            body["range_end"] = _b64(prefix_range_end(raw))
        answer = await self.call("kv/deleterange", body)
        return int(answer.get("deleted", 0))

    # -- watch ---------------------------------------------------------------------------------

    async def watch(
        self, prefix: str, start_revision: int, *, idle_timeout: float | None = None
    ) -> AsyncIterator[WatchResponse]:
        """Stream changes under ``prefix`` from ``start_revision`` on, with previous values.

        The gateway answers a streaming POST with one JSON document per line (the first says
        the watch was created; etcd adds progress notifications when it is configured to).
        The iterator ends when etcd closes the stream; losing the connection raises
        `DiscoveryUnavailableError`, and nothing arriving for ``idle_timeout`` seconds raises
        `WatchIdleError`: TCP alone may take hours to notice a partition that left the
        connection open.
        """
        raw = prefix.encode()
        request = {
            "create_request": {
                "key": _b64(raw),
                "range_end": _b64(prefix_range_end(raw)),
                "start_revision": str(start_revision),
                "prev_kv": True,
                "progress_notify": True,
            }
        }
        url = f"{self.endpoint}/v3/watch"
        # No total timeout: the stream is meant to stay open; connecting is still bounded.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._timeout.total, sock_read=idle_timeout
        )
        try:
            async with self._http().post(url, json=request, timeout=timeout) as resp:
                if resp.status != 200:
                    text = await resp.text()
                    answer = json.loads(text) if text.startswith("{") else {}
                    _raise_for_error("watch", resp.status, answer)
                    raise EtcdError(f"etcd watch: HTTP {resp.status}: {text[:200]!r}")
                async for line in resp.content:
                    if line.strip():
                        yield _watch_response(json.loads(line))
        except aiohttp.SocketTimeoutError as exc:  # a read that waited idle_timeout
            raise WatchIdleError(
                f"etcd watch at {self.endpoint} sent nothing for {idle_timeout:g} s"
            ) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DiscoveryUnavailableError(
                f"etcd watch at {self.endpoint} broke: {exc!r}"
            ) from exc


def _raise_for_error(path: str, status: int, answer: dict[str, Any]) -> None:
    error = answer.get("error")
    if error is None and status < 400:
        return
    # Unary calls answer {"error": str, "code": int}; a watch stream {"error": {"grpc_code": ...}}.
    detail = error if isinstance(error, dict) else answer
    code = detail.get("code", detail.get("grpc_code"))
    status = int(detail.get("http_code", status))
    message = detail.get("message") or (error if isinstance(error, str) else None) or str(answer)
    if code == GRPC_UNAVAILABLE or (status >= 500 and code is None):
        raise DiscoveryUnavailableError(f"etcd {path}: unavailable ({message})")
    raise EtcdError(f"etcd {path}: {message}", code=code)


def _watch_response(doc: dict[str, Any]) -> WatchResponse:
    if "error" in doc:
        _raise_for_error("watch", 200, doc)
    result = doc.get("result", doc)
    events = tuple(
        WatchEvent(
            type=event.get("type", "PUT"),  # PUT is enum value 0, omitted from the JSON
            kv=_kv(event["kv"]),
            prev=_kv(event["prev_kv"]) if "prev_kv" in event else None,
        )
        for event in result.get("events", [])
    )
    return WatchResponse(
        revision=int(result.get("header", {}).get("revision", 0)),
        events=events,
        created=bool(result.get("created", False)),
        canceled=bool(result.get("canceled", False)),
        compact_revision=int(result.get("compact_revision", 0)),
    )


def _kv(item: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(item["key"]).decode(),
        value=base64.b64decode(item.get("value", "")),
        create_revision=int(item.get("create_revision", 0)),
        mod_revision=int(item.get("mod_revision", 0)),
        lease=int(item.get("lease", 0)),
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
