"""Registration validation, URL parsing and the provider factory."""

from __future__ import annotations

import pydantic
import pytest
from inferno_discovery import (
    DiscoveryProvider,
    EtcdDiscovery,
    InMemoryDiscovery,
    InvalidDiscoveryUrlError,
    LoadSignals,
    ServiceRegistration,
    discovery_from_url,
    parse_etcd_url,
)
from inferno_discovery.testing import RecordingDiscovery


def test_registration_round_trips_through_json() -> None:
    reg = ServiceRegistration(
        id="w1",
        service="llm",
        address="http://10.0.0.5:8000",
        models=("smollm2",),
        version="0.1.0",
        load=LoadSignals(queue_depth=2, running_requests=5, kv_usage=0.25, free_slots=3),
        metadata={"zone": "a"},
    )
    assert ServiceRegistration.model_validate_json(reg.model_dump_json()) == reg


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "a/b"},
        {"id": ""},
        {"service": "x/y"},
        {"load": {"kv_usage": 1.5}},
        {"load": {"queue_depth": -1}},
        {"unknown_field": 1},
    ],
)
def test_registration_rejects_bad_fields(bad: dict[str, object]) -> None:
    fields: dict[str, object] = {"id": "w1", "service": "llm", "address": "http://w1"} | bad
    with pytest.raises(pydantic.ValidationError):
        ServiceRegistration.model_validate(fields)


@pytest.mark.parametrize(
    ("url", "endpoint", "prefix"),
    [
        ("etcd://127.0.0.1:2379", "http://127.0.0.1:2379", "/inferno/services/"),
        ("etcd://etcd.svc", "http://etcd.svc:2379", "/inferno/services/"),
        ("etcd://h:1234/team/a", "http://h:1234", "/team/a/"),
        ("etcds://h:2379/", "https://h:2379", "/inferno/services/"),
        ("etcd://[::1]:2379", "http://[::1]:2379", "/inferno/services/"),
    ],
)
def test_parse_etcd_url(url: str, endpoint: str, prefix: str) -> None:
    parsed = parse_etcd_url(url)
    assert (parsed.endpoint, parsed.prefix) == (endpoint, prefix)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:2379", "expected etcd://HOST:PORT"),
        ("etcd://:2379", "missing host"),
        ("etcd://h:notaport", "invalid port"),
    ],
)
def test_parse_etcd_url_rejects(url: str, message: str) -> None:
    with pytest.raises(InvalidDiscoveryUrlError, match=message):
        parse_etcd_url(url)


async def test_discovery_from_url() -> None:
    memory = discovery_from_url("memory://")
    assert isinstance(memory, InMemoryDiscovery)
    etcd = discovery_from_url("etcd://127.0.0.1:1/x/")
    assert isinstance(etcd, EtcdDiscovery)
    assert (etcd.client.endpoint, etcd.prefix) == ("http://127.0.0.1:1", "/x/")
    await etcd.close()
    with pytest.raises(InvalidDiscoveryUrlError, match="use memory:// or etcd://"):
        discovery_from_url("consul://h")


def test_recording_discovery_satisfies_protocol() -> None:
    assert isinstance(RecordingDiscovery(), DiscoveryProvider)
