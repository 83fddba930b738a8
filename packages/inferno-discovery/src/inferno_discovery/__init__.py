"""Service registration with leases and load signals: in-memory, and etcd over its HTTP gateway."""

from inferno_discovery.errors import (
    DiscoveryClosedError,
    DiscoveryError,
    DiscoveryUnavailableError,
    EtcdError,
    InvalidDiscoveryUrlError,
    UnknownRegistrationError,
)
from inferno_discovery.etcd import EtcdDiscovery
from inferno_discovery.etcd_client import EtcdClient
from inferno_discovery.factory import EtcdUrl, discovery_from_url, parse_etcd_url
from inferno_discovery.memory import InMemoryDiscovery, InMemoryRegistry
from inferno_discovery.protocols import DiscoveryProvider
from inferno_discovery.registrar import Registrar, RegistrationListener
from inferno_discovery.types import (
    DiscoveryEvent,
    DiscoveryEventKind,
    LoadSignals,
    ServiceInfo,
    ServiceRegistration,
)

__all__ = [
    "DiscoveryClosedError",
    "DiscoveryError",
    "DiscoveryEvent",
    "DiscoveryEventKind",
    "DiscoveryProvider",
    "DiscoveryUnavailableError",
    "EtcdClient",
    "EtcdDiscovery",
    "EtcdError",
    "EtcdUrl",
    "InMemoryDiscovery",
    "InMemoryRegistry",
    "InvalidDiscoveryUrlError",
    "LoadSignals",
    "Registrar",
    "RegistrationListener",
    "ServiceInfo",
    "ServiceRegistration",
    "UnknownRegistrationError",
    "discovery_from_url",
    "parse_etcd_url",
]
