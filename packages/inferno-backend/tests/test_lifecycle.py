"""Orchestrator lifecycle: probes, drain, disconnects, admin load/unload, memory check."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import ClientSession
from inferno_backend.config import ServeConfig
from inferno_backend.events import ModelLoaded, ModelUnloaded, ServiceDeregistered
from inferno_backend.orchestrator import DaemonState, RegistrationHandle
from inferno_backend.testing import FakeModelSource, fake_orchestrator

from .conftest import MakeClient


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


CHAT = {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}


async def test_probes_and_status(make_client: MakeClient) -> None:
    client, orch = await make_client()
    for probe in ("live", "ready", "startup"):
        resp = await client.get(f"/health/{probe}")
        assert resp.status == 200
        assert (await resp.json())["ok"] is True
    status = await (await client.get("/v1/status")).json()
    assert status["state"] == "ready"
    assert status["models"]["default"]["free_slots"] == 16
    assert status["models"]["default"]["admitted_requests"] == 0
    assert status["models"]["default"]["admitted_limit"] == 64 + 512
    assert "Hi" not in str(status)
    orch.health.set_ready(False, "maintenance")
    resp = await client.get("/health/ready")
    assert resp.status == 503
    body = await resp.json()
    assert body["failures"][0]["reason"] == "maintenance"


async def test_probes_before_start_fail() -> None:
    orch = fake_orchestrator()
    snap = await orch.health.check()
    assert not snap.started
    assert not snap.ready


async def test_stop_drains_inflight_and_refuses_new(make_client: MakeClient) -> None:
    client, orch = await make_client(engine_options={"token_delay": 0.02})
    stream = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
    await _until(lambda: orch.inflight > 0)
    stopping = asyncio.create_task(orch.stop())
    await asyncio.sleep(0.01)
    refused = await client.post("/v1/chat/completions", json=CHAT)
    assert refused.status == 503
    assert (await client.get("/health/ready")).status == 503
    resp = await stream
    body = await resp.json()
    assert body["choices"][0]["finish_reason"] == "stop"
    report = await stopping
    assert report.drained
    assert report.memory_returned
    assert orch.state is DaemonState.STOPPED


async def test_drain_timeout_aborts(make_client: MakeClient) -> None:
    config = ServeConfig(warmup=False, drain_timeout_s=0.05)
    client, orch = await make_client(config, engine_options={"token_delay": 0.05})
    task = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
    await _until(lambda: orch.inflight > 0)
    report = await orch.stop()
    assert not report.drained
    assert report.aborted_requests == 1
    resp = await task
    assert (await resp.json())["choices"][0]["finish_reason"] == "abort"


async def test_client_disconnect_aborts_and_frees_kv(make_client: MakeClient) -> None:
    client, orch = await make_client(engine_options={"token_delay": 0.02, "script": ["x"] * 200})
    engine = orch.engines[0]
    url = client.make_url("/v1/chat/completions")
    async with ClientSession() as session:
        resp = await session.post(url, json={**CHAT, "stream": True})
        await resp.content.readline()
        resp.close()
    for _ in range(200):
        if engine.aborted:
            break
        await asyncio.sleep(0.01)
    assert len(engine.aborted) == 1
    stats = engine.stats()
    assert stats.running == 0
    assert stats.kv_blocks_used == 0
    assert orch.inflight == 0


async def test_admin_load_and_unload(make_client: MakeClient) -> None:
    config = ServeConfig(warmup=False, admin_key="adm")
    client, orch = await make_client(config, source=FakeModelSource(["default", "other"]))
    events: list[Any] = []
    orch.bus.subscribe(ModelLoaded, events.append)
    orch.bus.subscribe(ModelUnloaded, events.append)
    admin = {"Authorization": "Bearer adm"}
    resp = await client.post("/v1/admin/models/load", json={"model": "other"}, headers=admin)
    assert resp.status == 200, await resp.text()
    ids = [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]]
    assert ids == ["default", "other"]
    again = await client.post("/v1/admin/models/load", json={"model": "other"}, headers=admin)
    assert again.status == 400
    missing = await client.post("/v1/admin/models/load", json={"model": "nope"}, headers=admin)
    assert missing.status == 404
    resp = await client.post("/v1/admin/models/unload", json={"model": "other"}, headers=admin)
    body = await resp.json()
    assert body["memory_returned"] is True
    assert [type(e).__name__ for e in events] == ["ModelLoaded", "ModelUnloaded"]
    gone = await client.post("/v1/chat/completions", json={**CHAT, "model": "other"})
    assert gone.status == 404


async def test_a_lora_adapter_is_served_beside_its_base(
    make_client: MakeClient, tmp_path: Path
) -> None:
    adapter = tmp_path / "sql-lora"
    adapter.mkdir()
    source = FakeModelSource(["default"])
    config = ServeConfig(warmup=False, admin_key="adm", lora=str(adapter), served_model_name="a")
    client, orch = await make_client(config, source=source)
    events: list[Any] = []
    orch.bus.subscribe(ModelLoaded, events.append)
    admin = {"Authorization": "Bearer adm"}
    base = await client.post(
        "/v1/admin/models/load", json={"model": "default", "served_model_name": "b"}, headers=admin
    )
    assert base.status == 200, await base.text()
    second = {"model": "default", "served_model_name": "c", "lora": str(adapter)}
    resp = await client.post("/v1/admin/models/load", json=second, headers=admin)
    assert resp.status == 200, await resp.text()
    assert source.adapters == [str(adapter), None, str(adapter)]
    cards = {m["id"]: m for m in (await (await client.get("/v1/models")).json())["data"]}
    assert (cards["a"]["parent"], cards["a"]["lora"]) == ("default", str(adapter))
    assert "parent" not in cards["b"]
    assert "lora" not in cards["b"]
    assert cards["c"]["lora"] == str(adapter)
    assert [e.lora for e in events] == [None, str(adapter)]  # b and c (a came before)
    missing = {"model": "default", "served_model_name": "d", "lora": str(tmp_path / "gone")}
    resp = await client.post("/v1/admin/models/load", json=missing, headers=admin)
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert (error["param"], error["code"]) == ("lora", "lora_not_found")
    assert "d" not in orch.served


async def test_a_gguf_lora_adapter_is_merged_by_the_repository_source(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """``inferno serve --lora adapter.gguf``: the real model source reads a llama.cpp GGUF
    adapter and merges it into the model it loads, at start-up and on admin load."""
    import torch
    from inferno_backend.composition import RepositoryModelSource
    from inferno_models import LlamaLoader, LoadedModel, apply_lora, load_lora
    from inferno_models.repository import ModelRepository
    from inferno_models.testing import random_weights, tiny_config, write_gguf_lora, write_tiny_gguf

    config = tiny_config()
    model = write_tiny_gguf(tmp_path / "tiny.gguf", config, random_weights(config, seed=2))
    gen = torch.Generator().manual_seed(1)
    q = "model.layers.0.self_attn.q_proj.weight"
    pairs = {q: (torch.randn(4, 64, generator=gen), torch.randn(64, 4, generator=gen))}
    adapter = write_gguf_lora(tmp_path / "tiny-lora.gguf", config, pairs, alpha=8.0)
    source = RepositoryModelSource(
        ModelRepository(tmp_path / "models", include_default=False),
        LlamaLoader(),
        dtype="float32",
        device="cpu",
    )
    serve = ServeConfig(
        warmup=False, admin_key="adm", model=str(model), lora=str(adapter), served_model_name="a"
    )
    client, orch = await make_client(serve, source=source)
    second = {"model": str(model), "served_model_name": "b", "lora": str(adapter)}
    resp = await client.post(
        "/v1/admin/models/load", json=second, headers={"Authorization": "Bearer adm"}
    )
    assert resp.status == 200, await resp.text()
    cards = {m["id"]: m for m in (await (await client.get("/v1/models")).json())["data"]}
    assert (cards["a"]["parent"], cards["a"]["lora"]) == ("tiny", str(adapter))
    expected = apply_lora(LlamaLoader().load(model), load_lora(adapter))
    for name in ("a", "b"):
        served = orch.served[name].model
        assert isinstance(served, LoadedModel)
        torch.testing.assert_close(served.weights[q], expected.weights[q], rtol=0, atol=0)


async def test_leaked_memory_is_reported() -> None:
    orch = fake_orchestrator(leak=True, kv_bytes=4096)
    await orch.start()
    report = await orch.stop()
    assert report.leaked_bytes == 4096
    assert not report.memory_returned


async def test_registration_starts_after_ready_and_stops_first() -> None:
    calls: list[str] = []
    orch_ref: list[Any] = []

    def start() -> None:
        calls.append(f"register:{orch_ref[0].state.value}")

    async def stop() -> None:
        calls.append(f"revoke:{orch_ref[0].state.value}:{orch_ref[0].health.snapshot.ready}")

    orch = fake_orchestrator(registration=RegistrationHandle(start, stop, "svc-1"))
    orch_ref.append(orch)
    seen: list[ServiceDeregistered] = []
    orch.bus.subscribe(ServiceDeregistered, seen.append)
    await orch.start()
    await orch.stop()
    assert calls == ["register:ready", "revoke:draining:False"]
    assert seen[0].service_id == "svc-1"


async def test_warmup_runs_a_generation() -> None:
    orch = fake_orchestrator(ServeConfig(warmup=True))
    await orch.start()
    engine = orch.engines[0]  # type: ignore[attr-defined]
    assert engine.requests[0].request_id.startswith("warmup-")
    await orch.stop()
