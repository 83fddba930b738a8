"""``inferno serve --lora`` on the default model: the adapted model and its base side by side,
through the real ``openai`` client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from inferno_models import GGUFFile, default_model_path
from inferno_models.testing import write_peft_adapter

from .serve_daemon import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _adapter(directory: Path) -> Path:
    """A PEFT adapter of the default model's shape (its base weights do not matter to the
    adapter: only their shapes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = GGUFFile(default_model_path()).config()
    torch.manual_seed(0)
    hf: Any = LlamaForCausalLM(LlamaConfig(**config.to_hf_dict()))
    write_peft_adapter(directory, hf, seed=1, r=8, lora_alpha=16)
    return directory


def test_an_adapter_and_its_base_are_served_side_by_side(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path / "smol-adapter")
    daemon = ServeProcess(
        "--lora", str(adapter), "--served-model-name", "smol-adapter", "--admin-key", "adm"
    ).start()
    try:
        with openai.OpenAI(base_url=daemon.url + "/v1", api_key="adm", max_retries=0) as client:
            loaded = client.post(
                "/admin/models/load",
                body={"model": "default", "served_model_name": "base"},
                cast_to=object,
            )
            assert loaded["loaded"] is True  # type: ignore[index]
            cards = {m.id: m for m in client.models.list().data}
            assert set(cards) == {"smol-adapter", "base"}
            adapted_card = cards["smol-adapter"].model_dump()
            assert adapted_card["lora"] == str(adapter)
            assert adapted_card["parent"] == "smollm2-135m-instruct"
            answers = {}
            for name in cards:
                resp = client.chat.completions.create(
                    model=name,
                    messages=QUESTION,
                    temperature=0,
                    max_tokens=16,  # type: ignore[arg-type]
                )
                answers[name] = resp.choices[0].message.content
            assert "Paris" in (answers["base"] or "")
            # A random adapter of this size moves the greedy answer: the merge took effect.
            assert answers["smol-adapter"] != answers["base"]
    finally:
        assert daemon.stop() == 0
