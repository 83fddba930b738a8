from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from inferno_models import ModelNotFoundError
from inferno_models.repository import DEFAULT_MODEL_NAME, ModelRepository, stable_name


@pytest.fixture
def repo(tmp_path: Path, gguf_path: Path, hf_dir: Path) -> ModelRepository:
    models = tmp_path / "models"
    models.mkdir()
    gguf_path.rename(models / "Tiny Model.gguf")
    hf_dir.rename(models / "tiny-hf")
    (models / "notes.txt").write_text("not a model")
    (models / "broken.gguf").write_bytes(b"GGUF\x03\x00")
    return ModelRepository(models)


def test_lists_default_and_directory_models(repo: ModelRepository) -> None:
    entries = repo.list()
    names = [e.name for e in entries]
    assert names == [DEFAULT_MODEL_NAME, "tiny-model", "tiny-hf"]
    default, gguf_entry, hf_entry = entries
    assert default.aliases == ("default",)
    assert default.quantization == "Q4_1"
    assert default.architecture == "llama"
    assert 130e6 < default.parameters < 140e6
    assert gguf_entry.format == "gguf"
    assert hf_entry.format == "safetensors"
    assert gguf_entry.parameters == hf_entry.parameters
    assert gguf_entry.to_dict()["path"].endswith("Tiny Model.gguf")


def test_resolution(repo: ModelRepository, tmp_path: Path) -> None:
    assert repo.get("default").name == DEFAULT_MODEL_NAME
    assert repo.get("SmolLM2-135M-Instruct").name == DEFAULT_MODEL_NAME
    assert repo.get("tiny-model").path.name == "Tiny Model.gguf"
    outside = tmp_path / "outside.gguf"
    (repo.models_dir / "tiny-hf").rename(tmp_path / "elsewhere")
    assert repo.resolve(str(tmp_path / "elsewhere")).format == "safetensors"
    with pytest.raises(ModelNotFoundError):
        repo.resolve(str(outside))


@pytest.mark.parametrize(
    "name", ["../outside", "../../etc/passwd", "/etc/passwd", "tiny-model/../../x", "..", ""]
)
def test_names_never_escape_the_directory(repo: ModelRepository, name: str) -> None:
    with pytest.raises(ModelNotFoundError):
        repo.get(name)


def test_symlink_out_of_the_directory_is_ignored(repo: ModelRepository, tmp_path: Path) -> None:
    target = tmp_path / "secret.gguf"
    (repo.models_dir / "Tiny Model.gguf").rename(target)
    os.symlink(target, repo.models_dir / "link.gguf")
    assert "link" not in [e.name for e in repo.list()]


def test_sha256_on_demand(repo: ModelRepository) -> None:
    entry = repo.get("tiny-model")
    assert entry.sha256() == hashlib.sha256(entry.path.read_bytes()).hexdigest()


def test_stable_name() -> None:
    assert stable_name(Path("Llama 3.2 1B Instruct Q4_K_M.gguf")) == "llama-3.2-1b-instruct-q4_k_m"
    assert stable_name(Path("dir/My_Model")) == "my_model"
