"""Shared fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.etcd_server import EtcdServer, require_etcd


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One real etcd for the whole test run (free ports, temporary data dir).

    Tests share it, so each should use its own key prefix. A test that stops or restarts etcd
    should start its own `EtcdServer` instead. Skips without an etcd binary (fails if CI=true).
    """
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data", binary=require_etcd())
    server.start()
    try:
        yield server
    finally:
        server.stop()
