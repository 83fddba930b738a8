"""Sampling settings a model recommends: generation_config.json, GGUF general.sampling.*, the
default model's card, and the GGUF -> Hugging Face conversion that carries them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from inferno_models import (
    DEFAULT_MODEL_GENERATION,
    GenerationDefaults,
    LlamaLoader,
    ModelConfig,
    ModelFormatError,
    ModelRepository,
)
from inferno_models.convert import convert_gguf_to_hf
from inferno_models.testing import write_tiny_gguf

SAMPLING_KEYS: dict[str, int | float | str] = {
    "general.sampling.temp": 0.6,
    "general.sampling.top_p": 0.9,
    "general.sampling.top_k": 40,
    "general.sampling.min_p": 0.05,
    "general.sampling.penalty_repeat": 1.1,
}


def test_from_mapping_accepts_known_settings() -> None:
    d = GenerationDefaults.from_mapping({"temperature": 0.7, "top_k": 40.0, "max_tokens": 256})
    assert d == GenerationDefaults(temperature=0.7, top_k=40, max_tokens=256)
    assert isinstance(d.top_k, int)
    assert d.to_dict() == {"temperature": 0.7, "top_k": 40, "max_tokens": 256}
    assert not GenerationDefaults()
    assert d


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"temprature": 0.5}, "unknown sampling default 'temprature'"),
        ({"temperature": True}, "finite number"),
        ({"temperature": "hot"}, "finite number"),
        ({"temperature": float("nan")}, "finite number"),
        ({"temperature": 2.5}, r"temperature must be in \[0, 2\]"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
        ({"top_k": 4.5}, "whole number"),
        ({"top_k": -1}, "at least 0"),
        ({"min_p": 1.5}, r"min_p must be in \[0, 1\]"),
        ({"repetition_penalty": 0}, r"repetition_penalty must be in \(0, 2\]"),
        ({"max_tokens": 0}, "at least 1"),
    ],
)
def test_from_mapping_rejects(values: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GenerationDefaults.from_mapping(values)


def test_merged_overrides_only_what_is_set() -> None:
    model = GenerationDefaults(temperature=0.2, top_p=0.9, top_k=50)
    daemon = GenerationDefaults(temperature=0.7, top_k=0)
    assert model.merged(daemon) == GenerationDefaults(temperature=0.7, top_p=0.9, top_k=0)
    assert model.merged(GenerationDefaults()) == model


def test_hf_generation_config(tmp_path: Path) -> None:
    path = tmp_path / "generation_config.json"
    assert GenerationDefaults.from_hf_generation_config(path) == GenerationDefaults()
    path.write_text(
        json.dumps(
            {
                "bos_token_id": 1,
                "do_sample": True,
                "temperature": 0.6,
                "top_p": 0.9,
                "top_k": -1,
                "repetition_penalty": 1.05,
                "max_new_tokens": 512,
                "max_length": 20,
            }
        )
    )
    assert GenerationDefaults.from_hf_generation_config(path) == GenerationDefaults(
        temperature=0.6, top_p=0.9, top_k=0, repetition_penalty=1.05, max_tokens=512
    )


def test_hf_do_sample_false_is_greedy(tmp_path: Path) -> None:
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({"do_sample": False, "temperature": 0.6, "top_p": 0.9}))
    assert GenerationDefaults.from_hf_generation_config(path) == GenerationDefaults(temperature=0.0)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "unreadable JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"temperature": -1}', r"invalid sampling setting: temperature must be in \[0, 2\]"),
        ('{"top_p": "high"}', "invalid sampling setting: top_p must be a finite number"),
    ],
)
def test_bad_hf_generation_config_names_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "generation_config.json"
    path.write_text(text)
    with pytest.raises(ModelFormatError, match=match) as info:
        GenerationDefaults.from_hf_generation_config(path)
    assert info.value.path == str(path)


def test_gguf_sampling_keys_reach_the_loaded_model_and_listing(
    tmp_path: Path, config: ModelConfig, weights: dict[str, torch.Tensor]
) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", config, weights, metadata=SAMPLING_KEYS)
    expected = {
        "temperature": 0.6,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
    }
    assert LlamaLoader().load(path).generation.to_dict() == pytest.approx(expected, rel=1e-6)
    entry = ModelRepository(tmp_path, include_default=False).get("m")
    assert entry.sampling_defaults == pytest.approx(expected, rel=1e-6)


def test_gguf_without_sampling_keys_recommends_nothing(gguf_path: Path) -> None:
    assert LlamaLoader().load(gguf_path).generation == GenerationDefaults()


def test_invalid_gguf_sampling_key_names_the_file(
    tmp_path: Path, config: ModelConfig, weights: dict[str, torch.Tensor]
) -> None:
    path = write_tiny_gguf(
        tmp_path / "m.gguf", config, weights, metadata={"general.sampling.top_p": 3.0}
    )
    with pytest.raises(ModelFormatError, match=r"m\.gguf: invalid sampling setting: top_p"):
        LlamaLoader().load(path)
    # The listing skips what it cannot read rather than failing.
    assert ModelRepository(tmp_path, include_default=False).list() == []


def test_hf_directory_generation_config_reaches_the_loaded_model(hf_dir: Path) -> None:
    (hf_dir / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 0.3, "top_k": 20})
    )
    loaded = LlamaLoader().load(hf_dir)
    assert loaded.generation == GenerationDefaults(temperature=0.3, top_k=20)


def test_default_model_recommends_its_card_settings() -> None:
    entry = ModelRepository(include_default=True).get("default")
    assert entry.sampling_defaults == DEFAULT_MODEL_GENERATION.to_dict()
    assert GenerationDefaults(temperature=0.2, top_p=0.9) == DEFAULT_MODEL_GENERATION


def test_conversion_carries_sampling_settings_to_transformers(
    tmp_path: Path, config: ModelConfig, weights: dict[str, torch.Tensor]
) -> None:
    from transformers import GenerationConfig

    src = write_tiny_gguf(tmp_path / "m.gguf", config, weights, metadata=SAMPLING_KEYS)
    out = convert_gguf_to_hf(src, tmp_path / "hf")
    ours = LlamaLoader().load(src).generation
    # Our loader reads the converted directory back to the same settings...
    assert LlamaLoader().load(out).generation == ours
    # ...and transformers samples with them.
    hf = GenerationConfig.from_pretrained(out)
    assert hf.do_sample is True
    assert (hf.temperature, hf.top_p, hf.top_k, hf.min_p, hf.repetition_penalty) == (
        ours.temperature,
        ours.top_p,
        ours.top_k,
        ours.min_p,
        ours.repetition_penalty,
    )


def test_conversion_of_a_greedy_gguf(
    tmp_path: Path, config: ModelConfig, weights: dict[str, torch.Tensor]
) -> None:
    from transformers import GenerationConfig

    src = write_tiny_gguf(
        tmp_path / "m.gguf",
        config,
        weights,
        metadata={"general.sampling.temp": 0.0, "general.sampling.top_k": 40},
    )
    out = convert_gguf_to_hf(src, tmp_path / "hf")
    assert LlamaLoader().load(out).generation == GenerationDefaults(temperature=0.0)
    assert GenerationConfig.from_pretrained(out).do_sample is False
