from __future__ import annotations

from pathlib import Path

import pytest
import torch
from inferno_models import ModelConfig
from inferno_models.testing import random_weights, tiny_config, write_tiny_gguf, write_tiny_hf_dir


@pytest.fixture
def config() -> ModelConfig:
    return tiny_config()


@pytest.fixture
def weights(config: ModelConfig) -> dict[str, torch.Tensor]:
    return random_weights(config, seed=1)


@pytest.fixture
def gguf_path(tmp_path: Path, config: ModelConfig, weights: dict[str, torch.Tensor]) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf", config, weights)


@pytest.fixture
def hf_dir(tmp_path: Path, config: ModelConfig, weights: dict[str, torch.Tensor]) -> Path:
    return write_tiny_hf_dir(tmp_path / "tiny-hf", config, weights)
