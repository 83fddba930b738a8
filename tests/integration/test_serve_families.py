"""A real ``inferno serve`` on a Qwen2, a Qwen3, a SmolLM3 and Phi-3 GGUFs (LongRoPE, a
sliding window, Phi-4-mini's partial rotary embedding; tiny random ones, with sampling keys):
the same tokens as the engine run in-process, which are those of transformers' own class for
the family, and the file's sampling settings as the defaults."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from inferno_inference.tiny import greedy_tokens, reference_greedy_tokens, tiny_llm_engine
from inferno_inference.types import SamplingParams
from inferno_models import LlamaLoader
from inferno_models.testing import (
    random_weights,
    tiny_config,
    transformers_model,
    write_tiny_gguf,
)

from .local_engine import local_text
from .serve_daemon import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLING = {"general.sampling.temp": 0.6, "general.sampling.top_k": 12}


# "phi3-longrope": Phi-3-*-128k's scaling in small (its factors as GGUF tensors); these tests'
# prompts and answers stay within its original 32 positions, where transformers' generate and
# the engine rotate alike (past them, see inferno-inference's test_longrope.py).
# "phi3-window": Phi-3-mini-4k's sliding window in small (8 positions, fewer than the prompt
# and its answer). "phi3-phi4": Phi-4-mini's file in small: three quarters of each head
# turned, and GPT-4o's pre-tokenizer.
FAMILIES = ["qwen2", "qwen3", "smollm3", "phi3", "phi3-longrope", "phi3-window", "phi3-phi4"]


@pytest.fixture(scope="module", params=FAMILIES)
def model_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    arch, _, variant = request.param.partition("-")
    config = tiny_config(
        architecture=arch,
        llama3_rope=False,
        longrope=variant == "longrope",
        tie_word_embeddings=True,
        head_dim=32 if arch == "qwen3" else None,
        num_hidden_layers=4 if arch == "smollm3" else 2,
        sliding_window=8 if variant == "window" else None,
        partial_rotary_factor=0.75 if variant == "phi4" else 1.0,
    )
    path = tmp_path_factory.mktemp(arch) / f"tiny-{request.param}.gguf"
    weights = random_weights(config, seed=9 if arch == "qwen2" else 3)
    metadata: dict[str, int | float | str] = dict(SAMPLING)
    if variant == "phi4":
        metadata["tokenizer.ggml.pre"] = "gpt-4o"
    return write_tiny_gguf(path, config, weights, metadata=metadata)


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[ServeProcess]:
    daemon = ServeProcess("--model", str(model_path), "--served-model-name", "qwen").start()
    yield daemon
    assert daemon.stop() == 0


def test_greedy_completion_equals_the_engine_in_process(
    server: ServeProcess, model_path: Path
) -> None:
    loaded = LlamaLoader().load(model_path)
    prompt = loaded.tokenizer.encode("the theater", add_special_tokens=True)
    text = local_text(loaded, prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as client:
        assert [m.id for m in client.models.list()] == ["qwen"]
        out = client.completions.create(
            model="qwen",
            prompt=prompt,
            max_tokens=12,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
    assert out.usage is not None
    assert out.usage.completion_tokens == 12
    assert text
    assert out.choices[0].text == text


def test_the_engine_makes_the_tokens_of_transformers_own_class(model_path: Path) -> None:
    loaded = LlamaLoader().load(model_path)
    prompts = [loaded.tokenizer.encode(t) for t in ("the theater", "an other one, then")]
    scaling = loaded.config.rope_scaling
    expected = "longrope" if "longrope" in model_path.name else None
    assert (scaling.type if scaling is not None else None) == expected
    variant = model_path.stem.partition("-")[2].partition("-")[2]
    assert (loaded.config.sliding_window is not None) == (variant == "window")
    assert (loaded.config.rotary_dim < loaded.config.head_dim) == (variant == "phi4")
    hf = transformers_model(loaded.config, loaded.weights)
    assert type(hf).__name__.lower().startswith(loaded.config.architecture)
    engine = tiny_llm_engine(config=loaded.config, weights=loaded.weights)
    assert greedy_tokens(engine, prompts, 12) == reference_greedy_tokens(hf, prompts, 12)


def test_the_files_sampling_keys_are_the_defaults(server: ServeProcess) -> None:
    loaded = next(
        json.loads(line)
        for line in server.log_tail(200_000).splitlines()
        if line.startswith("{") and '"model loaded"' in line and "sampling_defaults" in line
    )
    assert loaded["sampling_defaults"] == pytest.approx({"temperature": 0.6, "top_k": 12})
