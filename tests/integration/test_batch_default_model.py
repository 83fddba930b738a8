"""``inferno batch`` on the default model: answers, a signal that stops it, and a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _line(custom_id: str, content: str, max_tokens: int = 24) -> str:
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def _batch(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "inferno_backend.cli", "batch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_text().splitlines()]


def test_a_batch_answers_and_a_resume_finishes_what_a_signal_stopped(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    topics = ["France", "Italy", "Spain", "Japan", "Egypt", "Peru", "Kenya", "Chile"]
    lines = [_line(f"q{i}", f"What is the capital of {t}?", 32) for i, t in enumerate(topics)]
    lines += [_line("paris", "What is the capital of France?"), "{broken"]
    source.write_text("\n".join(lines) + "\n")

    first = _batch(str(source), str(out), "--concurrency", "2")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.exists() and out.read_text().count("\n")):
        assert first.poll() is None, first.communicate()[1]
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert "(interrupted)" in err
    stopped = _records(out)
    assert 1 <= len(stopped) < len(lines)  # those in flight finished; no more started
    assert all(r["response"]["status_code"] == 200 for r in stopped if r["error"] is None)

    second = _batch(str(source), str(out), "--resume")
    _, err = second.communicate(timeout=300)
    assert second.returncode == 1, err  # the broken line fails, every request succeeds
    records = _records(out)
    ids = [r["custom_id"] for r in records]
    assert sorted(i for i in ids if i) == sorted([*(f"q{i}" for i in range(8)), "paris"])
    assert ids.count(None) == 1
    by_id = {r["custom_id"]: r for r in records}
    answer = by_id["paris"]["response"]["body"]["choices"][0]["message"]["content"]
    assert "Paris" in answer
    # Greedy and batched or not, the same question gets the same answer.
    again = by_id["q0"]["response"]["body"]["choices"][0]["message"]["content"]
    assert again.startswith(answer) or answer.startswith(again)
    assert by_id[None]["error"]["message"].startswith("line 10 is not JSON")
