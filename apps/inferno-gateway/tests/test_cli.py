"""The command line: flags to config, and errors that name the flag."""

from __future__ import annotations

import pytest
from inferno_gateway import GatewayConfig
from inferno_gateway.cli import main, parse_args


def test_flags_fill_the_config() -> None:
    config = parse_args(
        [
            "--discovery",
            "etcd://10.0.0.1:2379",
            "--port",
            "9000",
            "--policy",
            "least-load",
            "--load-epsilon",
            "0.5",
            "--connect-timeout",
            "1.5",
        ]
    )
    assert config == GatewayConfig(
        discovery="etcd://10.0.0.1:2379",
        port=9000,
        policy="least-load",
        load_epsilon=0.5,
        connect_timeout_s=1.5,
    )
    assert config.service == "inferno"
    assert config.host == "127.0.0.1"


def test_discovery_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args([])
    assert info.value.code == 2
    assert "--discovery" in capsys.readouterr().err


def test_bad_values_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--discovery", "zk://x", "--port", "80"]) == 2
    assert "--discovery" in capsys.readouterr().err
    assert main(["--discovery", "etcd://x:1", "--connect-timeout", "0"]) == 2
    assert "--connect-timeout:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--discovery", "etcd://x:1", "--policy", "random"])
