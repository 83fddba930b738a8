"""Service registration with leases and load signals: in-memory, and etcd over its HTTP gateway."""

__all__: list[str] = []
