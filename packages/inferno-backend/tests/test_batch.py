"""Offline batches: OpenAI's batch lines through the daemon's app, over fakes."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from inferno_backend.api import build_app
from inferno_backend.batch import BatchSummary, completed_ids, run_batch
from inferno_backend.cli import main
from inferno_backend.config import ServeConfig
from inferno_backend.testing import fake_orchestrator

CHAT = {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}


def _line(custom_id: str, url: str = "/v1/chat/completions", **body: Any) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


async def _run(lines: list[str], **options: Any) -> tuple[list[dict[str, Any]], BatchSummary]:
    """The output lines of a batch over a fake daemon, in the order written."""
    app = build_app(fake_orchestrator(ServeConfig(warmup=False)))
    sink = io.StringIO()
    summary = await run_batch(app, lines, sink, **options)
    records = [json.loads(raw) for raw in sink.getvalue().splitlines()]
    assert len(records) == summary.total
    return records, summary


def _by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(r["custom_id"]): r for r in records}


async def test_each_route_answers_as_the_server_would() -> None:
    lines = [
        _line("chat", **CHAT),
        _line("text", "/v1/completions", model="default", prompt="Hi", max_tokens=3),
        _line("vec", "/v1/embeddings", model="default", input="Hi"),
        _line("resp", "/v1/responses", model="default", input="Hi"),
    ]
    written, summary = await _run(lines)
    records = _by_id(written)
    assert (summary.succeeded, summary.failed, summary.skipped) == (4, 0, 0)
    chat = records["chat"]
    assert chat["error"] is None
    assert chat["id"].startswith("batch_req_")
    assert chat["response"]["status_code"] == 200
    assert chat["response"]["request_id"] == chat["id"]  # what the daemon logged it under
    body = chat["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Hello, I am a fake engine."
    assert records["text"]["response"]["body"]["choices"][0]["finish_reason"] == "length"
    assert records["vec"]["response"]["body"]["data"][0]["object"] == "embedding"
    assert records["resp"]["response"]["body"]["object"] == "response"
    usage = [r["response"]["body"]["usage"] for r in records.values()]
    assert summary.prompt_tokens == sum(
        u.get("prompt_tokens", u.get("input_tokens")) for u in usage
    )
    assert summary.completion_tokens == 8 + 3 + 8  # chat, text, responses; none for embeddings


async def test_a_request_the_api_refuses_is_a_response_with_its_status() -> None:
    written, summary = await _run(
        [
            _line("bad", model="default", messages=[]),
            _line("lost", model="nope", messages=[{"role": "user", "content": "x"}]),
        ]
    )
    records = _by_id(written)
    assert (summary.succeeded, summary.failed) == (0, 2)
    bad = records["bad"]
    assert bad["error"] is None
    assert bad["response"]["status_code"] == 400
    assert bad["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert records["lost"]["response"]["status_code"] == 404


async def test_lines_that_never_reach_the_api_name_their_line() -> None:
    lines = [
        "not json",
        "[1, 2]",
        json.dumps({"url": "/v1/completions", "body": {}}),
        _line("ok", **CHAT),
        "",  # blank lines are not requests
        _line("ok", **CHAT),
        json.dumps({"custom_id": "get", "method": "GET", "url": "/v1/models", "body": {}}),
        _line("where", "/v1/models"),
        json.dumps({"custom_id": "nobody", "url": "/v1/completions", "body": "text"}),
        _line("streamed", **CHAT, stream=True),
    ]
    records, summary = await _run(lines)
    assert (summary.succeeded, summary.failed) == (1, 8)
    refused = {r["error"]["message"]: r for r in records if r["error"] is not None}
    for record in refused.values():
        assert record["response"] is None
        assert record["error"]["code"] == "invalid_request"
    messages = sorted(refused)
    assert any(m.startswith("line 1 is not JSON") for m in messages)
    assert "line 2 is not a JSON object" in messages
    assert "line 3 has no custom_id (a non-empty string)" in messages
    assert "line 6 repeats the custom_id 'ok'" in messages
    assert "line 7: method must be POST, not 'GET'" in messages
    assert any(m.startswith("line 8: url must be one of") for m in messages)
    assert "line 9: body must be a JSON object" in messages
    assert "line 10: a batch request cannot stream" in messages
    assert [r["custom_id"] for r in records if r["error"] is None] == ["ok"]


async def test_done_ids_are_skipped() -> None:
    records, summary = await _run([_line("a", **CHAT), _line("b", **CHAT)], done=frozenset({"a"}))
    assert [r["custom_id"] for r in records] == ["b"]
    assert summary.skipped == 1


async def test_requests_run_concurrently_up_to_the_limit() -> None:
    orchestrator = fake_orchestrator(
        ServeConfig(warmup=False), engine_options={"token_delay": 0.01}
    )
    app = build_app(orchestrator)
    lines = [_line(f"r{i}", **CHAT) for i in range(12)]
    sink = io.StringIO()
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            served = orchestrator.served.get("default")
            if served is not None:
                peak = max(peak, served.generating)
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    summary = await run_batch(app, lines, sink, concurrency=4)
    watcher.cancel()
    assert summary.succeeded == 12
    assert peak == 4


async def test_stop_lets_requests_in_flight_finish_and_starts_no_more() -> None:
    app = build_app(
        fake_orchestrator(ServeConfig(warmup=False), engine_options={"token_delay": 0.02})
    )
    stop = asyncio.Event()

    class StopAtFirstLine(io.StringIO):
        def write(self, text: str) -> int:
            stop.set()  # as a signal would, while the other request is still running
            return super().write(text)

    sink = StopAtFirstLine()
    lines = [_line(f"r{i}", **CHAT) for i in range(20)]
    summary = await run_batch(app, lines, sink, concurrency=2, stop=stop)
    assert summary.interrupted
    records = [json.loads(raw) for raw in sink.getvalue().splitlines()]
    assert [r["custom_id"] for r in records] in (["r0", "r1"], ["r1", "r0"])
    assert all(r["response"]["status_code"] == 200 for r in records)


async def test_concurrency_must_be_positive() -> None:
    app = build_app(fake_orchestrator(ServeConfig(warmup=False)))
    with pytest.raises(ValueError, match="concurrency"):
        await run_batch(app, [], io.StringIO(), concurrency=0)


def test_completed_ids_drop_a_line_cut_short(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    whole = json.dumps({"custom_id": "a", "response": None, "error": None})
    out.write_text(whole + "\nnot json\n" + '{"custom_id": "b", "resp')
    assert completed_ids(out) == {"a"}
    assert out.read_text() == whole + "\nnot json\n"  # appending now gives whole lines


def test_cli_refuses_to_overwrite_and_checks_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("{}\n")
    source = tmp_path / "in.jsonl"
    source.write_text(_line("a", **CHAT) + "\n")
    assert main(["batch", str(source), str(out)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "missing.jsonl"), str(tmp_path / "o.jsonl")]) == 2
    assert "no such input file" in capsys.readouterr().err
    assert main(["batch", str(source), "-", "--resume"]) == 2
    assert "--resume needs an OUTPUT file" in capsys.readouterr().err
    assert main(["batch", str(source), str(tmp_path / "o.jsonl"), "--concurrency", "0"]) == 2
    assert out.read_text() == "{}\n"
