"""Sampling defaults: what fills the fields a request leaves out (the model's recommendation,
then the daemon's settings, then OpenAI's defaults), and how the settings are configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from inferno_backend.cli import build_parser
from inferno_backend.commands.serve import _FLAG_FIELDS
from inferno_backend.config import ConfigError, ServeConfig, load_config
from inferno_backend.testing import FakeModelSource
from inferno_inference import SamplingParams
from inferno_models import GenerationDefaults

from .conftest import MakeClient

CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "default", "prompt": "hi"}
MODEL = GenerationDefaults(temperature=0.2, top_p=0.9, top_k=40, max_tokens=5)


def _flags(*argv: str) -> dict[str, Any]:
    args = build_parser().parse_args(["serve", *argv])
    return {name: getattr(args, name, None) for name in _FLAG_FIELDS}


async def _sampling(
    make_client: MakeClient,
    body: dict[str, Any],
    *,
    route: str = "/v1/chat/completions",
    config: ServeConfig | None = None,
    model: GenerationDefaults = MODEL,
) -> SamplingParams:
    client, orch = await make_client(
        config or ServeConfig(warmup=False), source=FakeModelSource(generation=model)
    )
    resp = await client.post(route, json=body)
    assert resp.status == 200, await resp.text()
    return orch.engines[0].requests[-1].sampling


async def test_the_models_settings_fill_what_a_request_leaves_out(
    make_client: MakeClient,
) -> None:
    sp = await _sampling(make_client, CHAT)
    assert (sp.temperature, sp.top_p, sp.top_k, sp.max_tokens) == (0.2, 0.9, 40, 5)
    assert (sp.min_p, sp.repetition_penalty) == (0.0, 1.0)  # the model sets neither


async def test_a_requests_own_settings_win(make_client: MakeClient) -> None:
    body = {**CHAT, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 9}
    sp = await _sampling(make_client, body)
    assert (sp.temperature, sp.top_p, sp.top_k, sp.max_tokens) == (1.0, 1.0, 0, 9)
    # top_p 0 still means greedy, whatever the model's temperature.
    sp = await _sampling(make_client, {**CHAT, "top_p": 0})
    assert (sp.temperature, sp.top_p) == (0.0, 1.0)


async def test_completions_take_the_models_max_tokens_instead_of_16(
    make_client: MakeClient,
) -> None:
    sp = await _sampling(make_client, COMPLETION, route="/v1/completions")
    assert (sp.temperature, sp.max_tokens) == (0.2, 5)
    sp = await _sampling(
        make_client, COMPLETION, route="/v1/completions", model=GenerationDefaults()
    )
    assert (sp.temperature, sp.top_p, sp.max_tokens) == (1.0, 1.0, 16)


async def test_the_models_max_tokens_never_overflows_the_context(
    make_client: MakeClient,
) -> None:
    # The fake source's context is 2048 tokens; a prompt of "hi" leaves far less than 10**6.
    model = GenerationDefaults(max_tokens=10**6)
    sp = await _sampling(make_client, CHAT, model=model)
    assert 0 < sp.max_tokens < 2048


async def test_the_daemons_settings_override_the_models(make_client: MakeClient) -> None:
    config = ServeConfig(warmup=False, sampling_defaults={"temperature": 0.7, "min_p": 0.1})
    sp = await _sampling(make_client, CHAT, config=config)
    assert (sp.temperature, sp.top_p, sp.min_p, sp.top_k) == (0.7, 0.9, 0.1, 40)


async def test_the_models_settings_can_be_ignored(make_client: MakeClient) -> None:
    config = ServeConfig(
        warmup=False, model_sampling_defaults=False, sampling_defaults={"top_k": 8}
    )
    sp = await _sampling(make_client, CHAT, config=config)
    assert (sp.temperature, sp.top_p, sp.top_k) == (1.0, 1.0, 8)
    assert sp.max_tokens > 5  # the rest of the context, not the model's 5


def test_settings_merge_across_file_environment_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "inferno.toml"
    path.write_text("[serve.sampling_defaults]\ntemperature = 0.5\ntop_k = 20\n")
    env = {"INFERNO_SAMPLING_DEFAULTS": "top_k=30, min_p=0.05"}
    flags = _flags("--sampling-default", "top_p=0.8", "--sampling-default", "min_p=0.1")
    config = load_config(path, env=env, overrides=flags)
    assert config.sampling_defaults == {
        "temperature": 0.5,
        "top_k": 30.0,
        "min_p": 0.1,
        "top_p": 0.8,
    }
    assert config.daemon_sampling_defaults == GenerationDefaults(
        temperature=0.5, top_k=30, min_p=0.1, top_p=0.8
    )
    assert config.model_sampling_defaults is True
    off = load_config(env={}, overrides=_flags("--no-model-sampling-defaults"))
    assert off.model_sampling_defaults is False
    assert off.sampling_defaults == {}


@pytest.mark.parametrize(
    ("env", "flags", "needle"),
    [
        ({"INFERNO_SAMPLING_DEFAULTS": "temprature=1"}, (), "INFERNO_SAMPLING_DEFAULTS"),
        ({"INFERNO_SAMPLING_DEFAULTS": "top_p"}, (), "expected key=value"),
        ({}, ("--sampling-default", "top_k=many"), "top_k: not a number"),
        ({}, ("--sampling-default", "temperature=3"), "temperature must be in"),
        ({}, ("--sampling-default", "top_k=2.5"), "whole number"),
    ],
)
def test_bad_settings_name_the_key_and_source(
    env: dict[str, str], flags: tuple[str, ...], needle: str
) -> None:
    with pytest.raises(ConfigError, match="sampling_defaults") as info:
        load_config(env=env, overrides=_flags(*flags))
    assert needle in str(info.value)
    if flags:
        assert "command line" in str(info.value)


def test_a_bad_table_in_the_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "inferno.toml"
    path.write_text('[sampling_defaults]\ntop_p = "most"\n')
    with pytest.raises(ConfigError, match=r"sampling_defaults \(from .*inferno\.toml\)"):
        load_config(path, env={})
    path.write_text("sampling_defaults = 3\n")
    with pytest.raises(ConfigError, match="sampling_defaults"):
        load_config(path, env={})
