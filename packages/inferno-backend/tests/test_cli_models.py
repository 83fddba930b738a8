"""`inferno models ...` and `inferno generate` through the real console entry point."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import torch
from inferno_backend.cli import main
from inferno_models.testing import random_weights, tiny_config, write_tiny_gguf


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`main` configures logging for the process; undo it for the tests that follow."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    config = tiny_config()
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_gguf(models / "tiny.gguf", config, random_weights(config))
    return models


def test_models_list_json(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "--json", "--models-dir", str(models_dir)]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in entries] == ["smollm2-135m-instruct", "tiny"]
    assert entries[0]["aliases"] == ["default"]
    assert entries[1]["format"] == "gguf"


def test_models_list_table(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "--models-dir", str(models_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "FORMAT", "PARAMS"]
    assert lines[1].startswith("smollm2-135m-instruct (default)")
    assert "Q4_1" in lines[1]


def test_models_inspect(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["models", "inspect", "tiny", "--json", "--sha256", "--models-dir", str(models_dir)])
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["num_key_value_heads"] == 2
    assert info["config"]["rope_scaling"]["type"] == "llama3"
    assert len(info["sha256"]) == 64
    assert info["has_chat_template"] is True


def test_models_inspect_unknown_name(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "inspect", "../etc", "--models-dir", str(models_dir)]) == 1
    assert "no such model" in capsys.readouterr().err


def test_models_convert(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hf"
    assert main(["models", "convert", str(models_dir / "tiny.gguf"), str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert main(["models", "convert", str(models_dir / "tiny.gguf"), str(out)]) == 1
    assert "not an empty directory" in capsys.readouterr().err


def test_generate_prints_only_text(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(models_dir / "tiny.gguf")
    argv = ["generate", "--model", model, "--prompt", "the", "--max-tokens", "8", "--seed", "3"]
    assert main([*argv, "--temperature", "0.8"]) == 0
    first = capsys.readouterr().out
    assert main([*argv, "--temperature", "0.8"]) == 0
    assert capsys.readouterr().out == first  # seeded: reproducible
    assert main([*argv, "--chat"]) == 0
    assert capsys.readouterr().out.endswith("\n")
    # Speculation changes nothing in the text, sampled or greedy.
    assert main([*argv, "--temperature", "0.8", "--speculative-tokens", "4"]) == 0
    assert capsys.readouterr().out == first
    assert main([*argv, "--speculative-tokens", "99"]) == 1
    assert "speculative_tokens" in capsys.readouterr().err


def test_generate_rejects_bad_input(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(models_dir / "tiny.gguf")
    argv = ["generate", "--model", model, "--prompt", "x", "--temperature", "-1"]
    assert main(argv) == 1
    assert "temperature" in capsys.readouterr().err
    assert main(["generate", "--model", "nope", "--prompt", "x"]) == 1


@pytest.mark.slow
def test_default_model_answers_through_the_console_script() -> None:
    """The README's quick-start: greedy chat generation on the default model."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "inferno_backend.cli",
            "generate",
            "--model",
            "default",
            "--prompt",
            "What is the capital of France?",
            "--chat",
            "--max-tokens",
            "24",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert torch.get_num_threads() >= 1


def test_generate_in_json_mode(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(models_dir / "tiny.gguf")
    schema = {
        "type": "object",
        "properties": {"a": {"const": 1}, "b": {"enum": ["x", "y"]}},
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    argv = ["generate", "--model", model, "--prompt", "the", "--max-tokens", "40", "--seed", "3"]
    for source in (str(path), json.dumps(schema)):
        assert main([*argv, "--temperature", "0.8", "--json-schema", source]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["a"] == 1
        assert answer["b"] in ("x", "y")
    assert main([*argv, "--json", "--max-tokens", "3"]) == 0
    assert capsys.readouterr().out.lstrip().startswith("{")  # an object, cut at 3 tokens
    assert main([*argv, "--json-schema", str(tmp_path / "missing.json")]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert main([*argv, "--json-schema", '{"type": "string"}']) == 1
    assert "root must be an object" in capsys.readouterr().err


def test_generate_in_choice_mode(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(models_dir / "tiny.gguf")
    argv = ["generate", "--model", model, "--prompt", "the", "--temperature", "1", "--seed"]
    answers = set()
    for seed in range(6):
        assert main([*argv, str(seed), "--choice", "red", "--choice", "green"]) == 0
        answers.add(capsys.readouterr().out.strip())
    assert answers <= {"red", "green"}
    assert answers


def test_generate_in_regex_mode(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(models_dir / "tiny.gguf")
    argv = ["generate", "--model", model, "--prompt", "the", "--temperature", "1", "--seed"]
    for seed in range(3):
        assert main([*argv, str(seed), "--regex", "(red|green)-[0-9]{2}"]) == 0
        assert re.fullmatch("(red|green)-[0-9]{2}", capsys.readouterr().out.strip())
    assert main([*argv, "0", "--regex", "(?=x)"]) == 1
    assert "look-around" in capsys.readouterr().err


def test_generate_in_grammar_mode(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(models_dir / "tiny.gguf")
    grammar = 'root ::= colour "!"\ncolour ::= "red" | "green"'
    path = tmp_path / "colour.gbnf"
    path.write_text(grammar)
    argv = ["generate", "--model", model, "--prompt", "the", "--temperature", "1", "--seed"]
    for seed, source in enumerate((grammar, str(path))):
        assert main([*argv, str(seed), "--grammar", source]) == 0
        assert capsys.readouterr().out.strip() in ("red!", "green!")
    assert main([*argv, "0", "--grammar", str(tmp_path / "missing.gbnf")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_a_qwen2_gguf_is_listed_inspected_and_generates(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(architecture="qwen2", llama3_rope=False)
    sampling = {"general.sampling.temp": 0.5, "general.sampling.top_k": 20}
    write_tiny_gguf(models_dir / "qwen.gguf", config, random_weights(config), metadata=sampling)
    assert main(["models", "inspect", "qwen", "--json", "--models-dir", str(models_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "qwen2"
    assert info["config"]["qkv_bias"] is True
    assert info["sampling_defaults"] == {"temperature": 0.5, "top_k": 20}
    argv = ["generate", "--model", str(models_dir / "qwen.gguf"), "--prompt", "the"]
    assert main([*argv, "--max-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip()
