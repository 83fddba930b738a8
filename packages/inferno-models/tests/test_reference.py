"""inferno-models against transformers (the reference) on the same files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import pytest
import torch
from inferno_models import GGUFFile, LlamaLoader, LoadedModel, Tokenizer, default_model_path

CORPUS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces\n\n\ttabs and\r\nCRLF",
    "日本語のテキストと中文和한국어",
    "emoji 🎉🔥👍🏽 and ZWJ 👨‍👩‍👧",
    "def f(x):\n    return x ** 2  # comment\n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "café naïve Ωmega ß ﬁ",
    "a" * 64,
    "",
    " ",
    "\n\n\n",
    "numbers 3.14159 1,000,000 and 2024-11-23",
    "x  y   z    w",
    "<|endoftext|>text after special<|im_end|>",
    "mixed\u00a0nbsp and \u200b zero width",
]


@pytest.fixture(scope="module")
def default_model() -> LoadedModel:
    return LlamaLoader().load(default_model_path())


@pytest.fixture(scope="module")
def reference() -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tok


@pytest.mark.slow
def test_every_weight_equals_the_reference(
    default_model: LoadedModel, reference: tuple[Any, Any]
) -> None:
    state = reference[0].state_dict()
    assert default_model.config.tie_word_embeddings
    for name, tensor in default_model.weights.items():
        torch.testing.assert_close(tensor, state[name], rtol=0, atol=1e-6, msg=name)
    assert len(default_model.weights) == 272


@pytest.mark.slow
def test_tokenizer_ids_identical(default_model: LoadedModel, reference: tuple[Any, Any]) -> None:
    tok = reference[1]
    for text in CORPUS:
        ours = default_model.tokenizer.encode(text)
        assert ours == tok(text).input_ids, text
        assert default_model.tokenizer.decode(ours) == tok.decode(ours), text
        skip = default_model.tokenizer.decode(ours, skip_special_tokens=True)
        assert skip == tok.decode(ours, skip_special_tokens=True), text


@pytest.mark.slow
def test_chat_template_identical(default_model: LoadedModel, reference: tuple[Any, Any]) -> None:
    tok = reference[1]
    conversations = [
        [{"role": "user", "content": "What is 2+2?"}],
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another, in 日本語."},
        ],
    ]
    assert default_model.chat_template is not None
    for messages in conversations:
        for gen in (True, False):
            expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert (
                default_model.chat_template.render(messages, add_generation_prompt=gen) == expected
            )


def test_default_model_config() -> None:
    config = GGUFFile(default_model_path()).config()
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert config.eos_token_ids == (2,)


def test_sentencepiece_vocabulary_matches_reference(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    pieces = ["▁", "h", "i", "▁h", "▁hi", "e", "l", "o", "▁t", "he", "▁the", "ll", "llo", "▁he"]
    tokens = ["<unk>", "<s>", "</s>", *pieces, "▁hello", *[f"<0x{b:02X}>" for b in range(256)]]
    scores = [0.0, 0.0, 0.0] + [-float(len(p)) for p in pieces] + [-5.0] + [0.0] * 256
    path = tmp_path / "sp.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types([2, 3, 3] + [1] * (len(pieces) + 1) + [6] * 256)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ref = AutoTokenizer.from_pretrained(tmp_path, gguf_file="sp.gguf")
    ours = Tokenizer.from_gguf_metadata(GGUFFile(path).metadata, source=str(path))
    for text in ["hello the hi", "  hello", "héllo wörld 🎉", "the\nhe", "", "<s>hi", "ohhh"]:
        ids = ours.encode(text)
        assert ids == ref(text).input_ids, text
        assert ours.decode(ids) == ref.decode(ids), text


def test_header_reader_agrees_with_the_gguf_package() -> None:
    from inferno_models.gguf_summary import scan_gguf

    path = default_model_path()
    ours = scan_gguf(path, keep_arrays=True)
    reader = gguf.GGUFReader(path)
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        assert ours.metadata[key] == field.contents(), key
    assert len(ours.metadata) == len([k for k in reader.fields if not k.startswith("GGUF.")])
    by_name = {t.name: t for t in ours.tensors}
    for tensor in reader.tensors:
        extent = by_name[tensor.name]
        assert extent.kind == tensor.tensor_type.name
        assert extent.shape == tuple(int(d) for d in reversed(tensor.shape.tolist()))
        assert extent.start == tensor.data_offset
        assert extent.nbytes == tensor.n_bytes


@pytest.mark.slow
def test_converted_default_model_logits_match_the_gguf(
    tmp_path: Path, reference: tuple[Any, Any]
) -> None:
    from inferno_models import convert_gguf_to_hf
    from transformers import AutoModelForCausalLM

    out = convert_gguf_to_hf(default_model_path(), tmp_path / "smollm2")
    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([reference[1]("The capital of France is").input_ids])
    with torch.no_grad():
        expected = reference[0](ids).logits
        actual = converted(ids).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
